package jsonrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// The CLI's reading of a frame, implemented independently of Parse (no jsontext):
// the body decoded as UTF-8 with replacement, then JSON.parse — strings are
// sequences of UTF-16 code units (lone surrogates included), numbers are doubles,
// member names match exactly and the last of two equal names wins — then the
// message read as vscode-jsonrpc reads it, with typeof checks.

// jsStr is a JavaScript string: its UTF-16 code units, two bytes each.
type jsStr string

func jsString(units []uint16) jsStr {
	b := make([]byte, 0, 2*len(units))
	for _, u := range units {
		b = append(b, byte(u>>8), byte(u))
	}
	return jsStr(b)
}

// toJS is the JavaScript string a Go (UTF-8) string stands for.
func toJS(s string) jsStr { return jsString(utf16.Encode([]rune(s))) }

func (s jsStr) String() string {
	units := make([]uint16, len(s)/2)
	for i := range units {
		units[i] = uint16(s[2*i])<<8 | uint16(s[2*i+1])
	}
	return strconv.Quote(string(utf16.Decode(units)))
}

// A JS value: nil (null), bool, float64, jsStr, []any, map[jsStr]any.
type jsParser struct {
	u []uint16
	i int
}

var errJSONParse = errors.New("JSON.parse: SyntaxError")

// jsParse is JSON.parse of the body as a JavaScript runtime decodes it.
func jsParse(body []byte) (any, error) {
	var units []uint16
	for len(body) > 0 {
		r, n := utf8.DecodeRune(body) // invalid bytes: U+FFFD
		body = body[n:]
		units = utf16.AppendRune(units, r)
	}
	p := &jsParser{u: units}
	p.ws()
	v, err := p.value()
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(p.u) {
		return nil, fmt.Errorf("%w: data after the value at %d", errJSONParse, p.i)
	}
	return v, nil
}

func (p *jsParser) ws() {
	for p.i < len(p.u) {
		switch p.u[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsParser) fail(what string) error {
	return fmt.Errorf("%w: %s at %d", errJSONParse, what, p.i)
}

func (p *jsParser) peek() int {
	if p.i < len(p.u) {
		return int(p.u[p.i])
	}
	return -1
}

func (p *jsParser) value() (any, error) {
	switch c := p.peek(); {
	case c == '{':
		p.i++
		obj := map[jsStr]any{}
		p.ws()
		if p.peek() == '}' {
			p.i++
			return obj, nil
		}
		for {
			p.ws()
			if p.peek() != '"' {
				return nil, p.fail("want a member name")
			}
			name, err := p.str()
			if err != nil {
				return nil, err
			}
			p.ws()
			if p.peek() != ':' {
				return nil, p.fail("want ':'")
			}
			p.i++
			p.ws()
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			obj[name] = v // the last of equal names wins
			p.ws()
			switch p.peek() {
			case ',':
				p.i++
			case '}':
				p.i++
				return obj, nil
			default:
				return nil, p.fail("want ',' or '}'")
			}
		}
	case c == '[':
		p.i++
		arr := []any{}
		p.ws()
		if p.peek() == ']' {
			p.i++
			return arr, nil
		}
		for {
			p.ws()
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
			p.ws()
			switch p.peek() {
			case ',':
				p.i++
			case ']':
				p.i++
				return arr, nil
			default:
				return nil, p.fail("want ',' or ']'")
			}
		}
	case c == '"':
		return p.str()
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case c == 't':
		return true, p.literal("true")
	case c == 'f':
		return false, p.literal("false")
	case c == 'n':
		return nil, p.literal("null")
	}
	return nil, p.fail("unexpected token")
}

func (p *jsParser) literal(word string) error {
	for i := 0; i < len(word); i++ {
		if p.peek() != int(word[i]) {
			return p.fail("bad literal")
		}
		p.i++
	}
	return nil
}

func (p *jsParser) digits() int {
	n := 0
	for c := p.peek(); c >= '0' && c <= '9'; c = p.peek() {
		p.i++
		n++
	}
	return n
}

func (p *jsParser) number() (any, error) {
	start := p.i
	if p.peek() == '-' {
		p.i++
	}
	switch c := p.peek(); {
	case c == '0':
		p.i++
	case c >= '1' && c <= '9':
		p.digits()
	default:
		return nil, p.fail("bad number")
	}
	if p.peek() == '.' {
		p.i++
		if p.digits() == 0 {
			return nil, p.fail("bad fraction")
		}
	}
	if c := p.peek(); c == 'e' || c == 'E' {
		p.i++
		if c := p.peek(); c == '+' || c == '-' {
			p.i++
		}
		if p.digits() == 0 {
			return nil, p.fail("bad exponent")
		}
	}
	text := make([]byte, 0, p.i-start)
	for _, u := range p.u[start:p.i] {
		text = append(text, byte(u))
	}
	// Round to nearest, as JavaScript does; out of range is ±Infinity (or ±0).
	f, err := strconv.ParseFloat(string(text), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return nil, p.fail("bad number")
	}
	return f, nil
}

func (p *jsParser) str() (jsStr, error) {
	p.i++ // '"'
	var out []uint16
	for {
		c := p.peek()
		switch {
		case c < 0:
			return "", p.fail("unterminated string")
		case c < 0x20:
			return "", p.fail("control character in string")
		case c == '"':
			p.i++
			return jsString(out), nil
		case c != '\\':
			out = append(out, uint16(c))
			p.i++
			continue
		}
		p.i++
		e := p.peek()
		p.i++
		switch e {
		case '"', '\\', '/':
			out = append(out, uint16(e))
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			var v uint16
			for range 4 {
				h := p.peek()
				p.i++
				switch {
				case h >= '0' && h <= '9':
					v = v<<4 | uint16(h-'0')
				case h >= 'a' && h <= 'f':
					v = v<<4 | uint16(h-'a'+10)
				case h >= 'A' && h <= 'F':
					v = v<<4 | uint16(h-'A'+10)
				default:
					return "", p.fail("bad \\u escape")
				}
			}
			out = append(out, v) // a lone surrogate stays one
		default:
			return "", p.fail("bad escape")
		}
	}
}

// cliReading is what the CLI makes of a frame.
type cliReading struct {
	kind                Kind // vscode-jsonrpc's: 0 when it is none of the three
	method              jsStr
	id                  any // jsStr, float64 or nil (null), when idPresent
	idPresent           bool
	params              any
	hasParams           bool
	sessionID           jsStr // params.sessionId, when a string
	hasSessionID        bool
	result, errorValue  any
	hasResult, hasError bool // result !== undefined; !!error
}

func truthy(v any) bool {
	switch v := v.(type) {
	case nil:
		return false
	case bool:
		return v
	case float64:
		return v != 0 // NaN cannot come from JSON
	case jsStr:
		return v != ""
	}
	return true
}

var (
	jsMethod    = toJS("method")
	jsId        = toJS("id")
	jsParams    = toJS("params")
	jsSessionId = toJS("sessionId")
	jsResult    = toJS("result")
	jsError     = toJS("error")
)

// readAsCLI reads body as the CLI does; an error is a body JSON.parse throws on,
// or one that is not an object (a batch, a bare value).
func readAsCLI(body []byte) (cliReading, error) {
	v, err := jsParse(body)
	if err != nil {
		return cliReading{}, err
	}
	obj, ok := v.(map[jsStr]any)
	if !ok {
		return cliReading{}, fmt.Errorf("not an object: %T", v)
	}
	var r cliReading
	mv, hasMethod := obj[jsMethod]
	method, methodIsString := mv.(jsStr)
	r.id, r.idPresent = obj[jsId]
	var idIsStringOrNumber bool
	switch r.id.(type) {
	case jsStr, float64:
		idIsStringOrNumber = true
	}
	r.params, r.hasParams = obj[jsParams]
	if p, ok := r.params.(map[jsStr]any); ok {
		r.sessionID, r.hasSessionID = p[jsSessionId].(jsStr)
	}
	r.result, r.hasResult = obj[jsResult]
	r.errorValue = obj[jsError]
	r.hasError = truthy(r.errorValue)
	switch {
	case methodIsString && idIsStringOrNumber: // Message.isRequest
		r.kind, r.method = Request, method
	case methodIsString && !r.idPresent: // Message.isNotification
		r.kind, r.method = Notification, method
	case !hasMethod && (r.hasResult || r.hasError) && (idIsStringOrNumber || r.idPresent && r.id == nil): // Message.isResponse
		r.kind = Response
	}
	return r, nil
}

// jsValueOf reads a value Parse kept (an id, params, a result) as the CLI would.
func jsValueOf(v []byte) any {
	x, err := jsParse(v)
	if err != nil {
		return fmt.Sprintf("<JSON.parse refuses %q: %v>", v, err)
	}
	return x
}

// agrees reports how Parse's Message and the CLI's reading differ, if they do.
func agrees(m Message, r cliReading) error {
	if r.kind != m.Kind {
		return fmt.Errorf("kind: Parse %v, CLI %v", m.Kind, r.kind)
	}
	if m.Kind != Response && r.method != toJS(m.Method) {
		return fmt.Errorf("method: Parse %q, CLI %v", m.Method, r.method)
	}
	switch {
	case m.ID == nil && m.Kind == Request:
		return errors.New("a request without an id")
	case m.ID == nil && m.Kind == Notification && r.idPresent:
		return fmt.Errorf("id: Parse none, CLI %#v", r.id)
	case m.ID == nil && m.Kind == Response && !(r.idPresent && r.id == nil):
		return fmt.Errorf("id: Parse null, CLI %#v", r.id)
	case m.ID != nil && !reflect.DeepEqual(jsValueOf(m.ID), r.id): // numbers by value, strings by code units
		return fmt.Errorf("id: Parse %s, CLI %#v", m.ID, r.id)
	}
	// A number id is keyed by the number the CLI holds, written exactly: not
	// 9007199254740993 for the 9007199254740992 JavaScript reads there.
	if f, ok := r.id.(float64); ok && m.ID != nil && string(m.ID) != strconv.FormatFloat(f+0, 'f', -1, 64) {
		return fmt.Errorf("id: Parse keys %s, the CLI holds %v", m.ID, strconv.FormatFloat(f, 'f', -1, 64))
	}
	if (m.Params != nil) != r.hasParams {
		return fmt.Errorf("params: Parse %s, CLI present %v", m.Params, r.hasParams)
	}
	if m.Params != nil && !reflect.DeepEqual(jsValueOf(m.Params), r.params) {
		return fmt.Errorf("params: Parse %s, CLI %#v", m.Params, r.params)
	}
	// SessionID "" is what the sidecar takes for no sessionId.
	if (m.SessionID != "") != r.hasSessionID || r.hasSessionID && toJS(m.SessionID) != r.sessionID {
		return fmt.Errorf("sessionId: Parse %q, CLI %v (a string: %v)", m.SessionID, r.sessionID, r.hasSessionID)
	}
	if m.Kind == Response {
		if m.Failed() != r.hasError {
			return fmt.Errorf("failed: Parse %v, CLI %v", m.Failed(), r.hasError)
		}
		if m.Failed() && !reflect.DeepEqual(jsValueOf(m.Error), r.errorValue) {
			return fmt.Errorf("error: Parse %s, CLI %#v", m.Error, r.errorValue)
		}
		if !m.Failed() && (!r.hasResult || !reflect.DeepEqual(jsValueOf(m.Result), r.result)) {
			return fmt.Errorf("result: Parse %s, CLI %#v", m.Result, r.result)
		}
	}
	return nil
}

func compact(v []byte) string {
	if v == nil {
		return "<nil>"
	}
	c := jsontext.Value(bytes.Clone(v))
	if err := c.Compact(); err != nil {
		return "<invalid " + err.Error() + ">"
	}
	return string(c)
}

// sameMessage reports how two parsed messages differ, if they do.
func sameMessage(a, b Message) error {
	switch {
	case a.Kind != b.Kind, a.IDKey() != b.IDKey(), (a.ID == nil) != (b.ID == nil), a.Method != b.Method, a.SessionID != b.SessionID,
		compact(a.Params) != compact(b.Params), compact(a.Result) != compact(b.Result), compact(a.Error) != compact(b.Error):
		return fmt.Errorf("%+v\n   vs %+v", a, b)
	}
	return nil
}

// checkAgreement is the promise, for one body: Parse refuses it, or the CLI reads
// the body as received and the Raw that is forwarded the way Parse read it; Raw is
// canonical (it parses to the same message, and is its own re-encoding).
func checkAgreement(body []byte) error {
	m, err := Parse(body)
	if err != nil {
		if !errors.Is(err, ErrNotJSONRPC) {
			return fmt.Errorf("refused without ErrNotJSONRPC: %v", err)
		}
		return nil
	}
	r, err := readAsCLI(body)
	if err != nil {
		return fmt.Errorf("Parse accepted %+v, the CLI cannot read it: %v", m, err)
	}
	if err := agrees(m, r); err != nil {
		return fmt.Errorf("the body as received: %v", err)
	}
	rr, err := readAsCLI(m.Raw)
	if err != nil {
		return fmt.Errorf("the CLI cannot read Raw %q: %v", m.Raw, err)
	}
	if err := agrees(m, rr); err != nil {
		return fmt.Errorf("Raw %q: %v", m.Raw, err)
	}
	m2, err := Parse(m.Raw)
	if err != nil {
		return fmt.Errorf("Parse refuses its own Raw %q: %v", m.Raw, err)
	}
	if err := sameMessage(m, m2); err != nil {
		return fmt.Errorf("Parse(Raw) differs: %v", err)
	}
	if !bytes.Equal(m2.Raw, m.Raw) {
		return fmt.Errorf("Raw is not stable: %q, then %q", m.Raw, m2.Raw)
	}
	if err := sameMessage(m, m2.WithID(m2.ID)); err != nil && m.Kind == Response {
		return fmt.Errorf("WithID(ID) differs: %v", err)
	}
	if got, ok := StringMember(m.Params, "sessionId"); ok != (m.SessionID != "") || got != m.SessionID {
		return fmt.Errorf("StringMember(params, sessionId) = %q, %v; SessionID %q", got, ok, m.SessionID)
	}
	tm, err := ParseTrusted(body)
	if err != nil {
		return fmt.Errorf("ParseTrusted refuses what Parse accepted: %v", err)
	}
	if err := sameMessage(m, tm); err != nil {
		return fmt.Errorf("ParseTrusted differs: %v", err)
	}
	return nil
}

// FuzzParseAgreesWithCLIReading: whatever Parse accepts, the CLI reads — as
// received and as forwarded — as the same kind, method, id, sessionId and params.
func FuzzParseAgreesWithCLIReading(f *testing.F) {
	for _, body := range seedBodies() {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if err := checkAgreement(in); err != nil {
			t.Fatalf("%q:\n%v", in, err)
		}
	})
}

// seedBodies are the base frames, the attack table and every mutation of the
// base frames.
func seedBodies() []string {
	var out []string
	for _, tc := range attackCases {
		out = append(out, tc.body)
	}
	for _, b := range baseFrames {
		out = append(out, mutations(b)...)
	}
	return out
}

// TestParseMutationsAgreeWithCLIReading applies each attacker mutation (renamed,
// duplicated, escaped, retyped, moved members, at every depth; trailing data;
// batches) to valid frames and checks the promise on every result.
func TestParseMutationsAgreeWithCLIReading(t *testing.T) {
	accepted, refused := 0, 0
	for _, base := range baseFrames {
		if _, err := Parse([]byte(base)); err != nil {
			t.Fatalf("base frame refused: %s: %v", base, err)
		}
		for _, body := range mutations(base) {
			if err := checkAgreement([]byte(body)); err != nil {
				t.Errorf("%q:\n%v", body, err)
			}
			if _, err := Parse([]byte(body)); err == nil {
				accepted++
			} else {
				refused++
			}
		}
	}
	t.Logf("%d mutations accepted, %d refused", accepted, refused)
	if accepted < 100 || refused < 1000 {
		t.Fatalf("the mutations exercise too little: %d accepted, %d refused", accepted, refused)
	}
}

// TestReferenceReader checks the reference against encoding/json where the two
// must agree (valid UTF-8, no lone surrogate, finite numbers), so that it is not
// wrong the same way Parse is.
func TestReferenceReader(t *testing.T) {
	for _, body := range seedBodies() {
		checkReferenceAgainstEncodingJSON(t, []byte(body))
	}
	// And the JavaScript points where encoding/json would differ.
	for body, want := range map[string]any{
		`"\ud800"`:         jsString([]uint16{0xd800}),
		`"\ud83d\ude00"`:   toJS("😀"),
		`1e400`:            posInf,
		`-0`:               0.0,
		`9007199254740993`: 9007199254740992.0,
		`{"a":1,"a":2}`:    map[jsStr]any{toJS("a"): 2.0},
		`{"__proto__":1}`:  map[jsStr]any{toJS("__proto__"): 1.0},
		" [ 1 , \"x\" ] ":  []any{1.0, toJS("x")},
	} {
		if got, err := jsParse([]byte(body)); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("jsParse(%s) = %#v, %v; want %#v", body, got, err, want)
		}
	}
	for _, body := range []string{"", " ", "01", "1.", ".1", "+1", "1e", "[1,]", `{"a":1,}`, `{'a':1}`, "\"a\tb\"", `"\x"`, `"\u12"`, "\ufeff{}", "{} {}", "NaN", "tru"} {
		if v, err := jsParse([]byte(body)); err == nil {
			t.Errorf("jsParse(%q) = %#v; JSON.parse throws", body, v)
		}
	}
}

var posInf = func() float64 { f, _ := strconv.ParseFloat("1e400", 64); return f }()

func checkReferenceAgainstEncodingJSON(t *testing.T, body []byte) {
	t.Helper()
	if !utf8.Valid(body) || bytes.Contains(body, []byte(`\u`)) || bytes.Contains(body, []byte("e400")) {
		return
	}
	ours, oerr := jsParse(body)
	var theirs any
	terr := json.Unmarshal(body, &theirs)
	if (oerr == nil) != (terr == nil) {
		t.Errorf("%q: jsParse %v, encoding/json %v", body, oerr, terr)
		return
	}
	if oerr == nil && !reflect.DeepEqual(toGo(ours), theirs) {
		t.Errorf("%q: jsParse %#v, encoding/json %#v", body, toGo(ours), theirs)
	}
}

// toGo is a JS value as encoding/json decodes into any.
func toGo(v any) any {
	switch v := v.(type) {
	case jsStr:
		s, _ := strconv.Unquote(v.String())
		return s
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = toGo(x)
		}
		return out
	case map[jsStr]any:
		out := map[string]any{}
		for k, x := range v {
			out[toGo(k).(string)] = toGo(x)
		}
		return out
	}
	return v
}

// The base frames mutated: one of each shape, with nesting to reach into.
var baseFrames = []string{
	`{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s1","prompt":"hi"}}`,
	`{"jsonrpc":"2.0","id":"req-2","method":"session.create","params":{"model":"gpt-5","tools":["a","b"],"provider":{"type":"openai","apiKey":"k"}}}`,
	`{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s1","event":{"type":"session.idle","data":{"n":1.5,"deep":{"deeper":[{"x":true}]}}}}}`,
	`{"jsonrpc":"2.0","method":"ping"}`,
	`{"jsonrpc":"2.0","id":3,"result":{"sessionId":"s2","ok":true}}`,
	`{"jsonrpc":"2.0","id":4,"error":{"code":-32601,"message":"no","data":{"k":[1,2]}}}`,
	`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}`,
}

// A JSON text kept as written, names and all, so that it can be mutated.
type node struct {
	literal string // scalars: the value as written
	obj     bool
	arr     bool
	members []member
	elems   []*node
}

type member struct {
	name string // as written, quotes included
	val  *node
}

func lit(s string) *node { return &node{literal: s} }

func mustTree(text string) *node {
	d := jsontext.NewDecoder(strings.NewReader(text), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	n, err := readNode(d)
	if err != nil {
		panic(err)
	}
	return n
}

func readNode(d *jsontext.Decoder) (*node, error) {
	switch d.PeekKind() {
	case '{':
		d.ReadToken()
		n := &node{obj: true}
		for d.PeekKind() != '}' {
			name, err := d.ReadValue() // as written
			if err != nil {
				return nil, err
			}
			mname := string(name)
			v, err := readNode(d)
			if err != nil {
				return nil, err
			}
			n.members = append(n.members, member{mname, v})
		}
		_, err := d.ReadToken()
		return n, err
	case '[':
		d.ReadToken()
		n := &node{arr: true}
		for d.PeekKind() != ']' {
			v, err := readNode(d)
			if err != nil {
				return nil, err
			}
			n.elems = append(n.elems, v)
		}
		_, err := d.ReadToken()
		return n, err
	}
	v, err := d.ReadValue()
	return lit(string(v)), err
}

func (n *node) String() string {
	var b strings.Builder
	n.write(&b)
	return b.String()
}

func (n *node) write(b *strings.Builder) {
	switch {
	case n.obj:
		b.WriteByte('{')
		for i, m := range n.members {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(m.name)
			b.WriteByte(':')
			m.val.write(b)
		}
		b.WriteByte('}')
	case n.arr:
		b.WriteByte('[')
		for i, e := range n.elems {
			if i > 0 {
				b.WriteByte(',')
			}
			e.write(b)
		}
		b.WriteByte(']')
	default:
		b.WriteString(n.literal)
	}
}

func (n *node) clone() *node {
	c := &node{literal: n.literal, obj: n.obj, arr: n.arr}
	for _, m := range n.members {
		c.members = append(c.members, member{m.name, m.val.clone()})
	}
	for _, e := range n.elems {
		c.elems = append(c.elems, e.clone())
	}
	return c
}

// objects lists n's objects, depth first (the same order in a clone).
func (n *node) objects() []*node {
	var out []*node
	if n.obj {
		out = append(out, n)
	}
	for _, m := range n.members {
		out = append(out, m.val.objects()...)
	}
	for _, e := range n.elems {
		out = append(out, e.objects()...)
	}
	return out
}

// altValues are the values members are retyped to, or given as a duplicate.
var altValues = []string{
	`1`, `1.0`, `1e0`, `-0`, `0.5`, `9007199254740991`, `9007199254740992`, `9007199254740993`, `-9007199254740993`, `1e400`,
	`null`, `true`, `false`, `{}`, `[]`, `[1]`, `""`, `"s"`, `"2.0"`, `"session.send"`, `"dup-b"`,
	`"\ud800"`, `"\udc00\ud800"`, `"\ud83d\ude00"`, `"a\u0000b"`, "\"\xff\"", "\"\xed\xa0\x80\"",
	`{"sessionId":"nested"}`, `{"a":1,"a":2}`, `{"a":{"b":[{"c":1,"c":2}]}}`, `{"code":1,"message":"m"}`,
}

// nameVariants are the spellings of name an attacker tries: JSON escapes of the
// same name, and case variants (Unicode folding included) of it.
func nameVariants(name string) []string {
	q := func(s string) string { b, _ := jsontext.AppendQuote(nil, s); return string(b) }
	esc := func(i int, format string) string {
		return `"` + name[:i] + fmt.Sprintf(format, name[i]) + name[i+1:] + `"`
	}
	out := []string{
		esc(0, `\u%04x`), esc(len(name)-1, `\u%04X`), esc(len(name)/2, `\u%04x`),
		q(strings.ToUpper(name[:1]) + name[1:]),
		q(strings.ToUpper(name)),
		q(name[:len(name)-1] + strings.ToUpper(name[len(name)-1:])),
		q(name + " "),
		`"` + name + `\u0000"`,
	}
	if strings.Contains(name, "s") {
		out = append(out, q(strings.Replace(name, "s", "ſ", 1)), `"`+strings.Replace(name, "s", `\u017f`, 1)+`"`)
	}
	if strings.Contains(name, "k") {
		out = append(out, q(strings.Replace(name, "k", "\u212a", 1))) // KELVIN SIGN
	}
	if strings.Contains(name, "Id") {
		out = append(out, q(strings.Replace(name, "Id", "ID", 1)))
	}
	return out
}

func insert(ms []member, i int, m member) []member {
	return append(ms[:i:i], append([]member{m}, ms[i:]...)...)
}

// mutations returns the base frame mutated one way at a time.
func mutations(base string) []string {
	root := mustTree(base)
	out := []string{base}
	// mutate applies f to the k-th object of a copy of the frame.
	mutate := func(k int, f func(o *node)) {
		c := root.clone()
		f(c.objects()[k])
		out = append(out, c.String())
	}
	for k, o := range root.objects() {
		for i, m := range o.members {
			name, err := strconv.Unquote(m.name)
			if err != nil || name == "" {
				continue
			}
			mutate(k, func(o *node) { o.members = insert(o.members, i+1, member{m.name, m.val.clone()}) })
			mutate(k, func(o *node) { o.members = append(o.members[:i:i], o.members[i+1:]...) })
			mutate(k, func(o *node) { o.members = append(o.members, o.members[i]) }) // moved to the end (and kept)
			for _, alt := range altValues {
				mutate(k, func(o *node) { o.members[i].val = lit(alt) })
				mutate(k, func(o *node) { o.members = insert(o.members, i, member{m.name, lit(alt)}) })
				mutate(k, func(o *node) { o.members = insert(o.members, i+1, member{m.name, lit(alt)}) })
			}
			for _, v := range nameVariants(name) {
				mutate(k, func(o *node) { o.members[i].name = v })
				mutate(k, func(o *node) { o.members = insert(o.members, i, member{v, lit(`"variant"`)}) })
				mutate(k, func(o *node) { o.members = insert(o.members, i+1, member{v, m.val.clone()}) })
				mutate(k, func(o *node) { o.members = insert(o.members, i+1, member{v, lit(`"variant"`)}) })
			}
		}
		for _, extra := range []string{`"extra":1`, `"__proto__":{"sessionId":"proto"}`, `"sessionId":"injected"`, `"sessionId":7`, `"params":{"sessionId":"p"}`, `"method":"m2"`, `"id":9`, `"result":1`, `"error":{"code":1}`} {
			name, val, _ := strings.Cut(extra, ":")
			mutate(k, func(o *node) { o.members = append(o.members, member{name, mustTree(val)}) })
			mutate(k, func(o *node) { o.members = insert(o.members, 0, member{name, mustTree(val)}) })
		}
	}
	for _, wrap := range []string{"%s ", "\n%s\r\n", "%s{}", "%sx", "%s,", "%s\x00", "[%s]", "[%s,%s]", "\ufeff%s", "%s/**/", " \t%s"} {
		out = append(out, strings.ReplaceAll(wrap, "%s", base))
	}
	out = append(out, base[:len(base)-1], base+"}", strings.Replace(base, `"2.0"`, "\"2.0\xff\"", 1))
	return out
}
