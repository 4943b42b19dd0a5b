package jsonrpc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/climesh/climesh/protocol"
)

// The one reading of a frame.
//
// The sidecar decides on a message and the CLI executes it, so both must read it
// the same way. The CLI parses with JSON.parse: member names match exactly and the
// last of two equal names wins. Parse reads stricter than that, so that whatever
// it accepts has one meaning only:
//
//   - the body is one JSON object of valid UTF-8, nothing after it;
//   - no object anywhere holds two members of the same name (after unescaping);
//   - the envelope holds only jsonrpc, id, method, params, result and error, with
//     their types (jsonrpc "2.0", method a string, id a string or an integer,
//     params an object), in one of three shapes: request, notification, response;
//   - params.sessionId, when present, is a string, and no other top-level member
//     of params is a case variant of it (or of another member: "model" and "Model");
//   - the id is kept in one canonical encoding, used for matching answers.
//
// What is forwarded to the CLI is Message.Raw, built from the parsed fields (a
// canonical re-encoding of the envelope around the validated params), never the
// bytes as received.

// ErrNotJSONRPC is wrapped by Parse's errors.
var ErrNotJSONRPC = errors.New("jsonrpc: not a JSON-RPC 2.0 message")

// Message is one frame read strictly.
type Message struct {
	Kind Kind
	// ID is the id in its canonical encoding (a JSON string as jsontext quotes
	// it, or an integer's decimal digits); nil for notifications. Two ids are the
	// same id exactly when their encodings are equal: use IDKey for maps.
	ID        jsontext.Value
	Method    string         // requests and notifications
	SessionID string         // params.sessionId, when present
	Params    jsontext.Value // requests and notifications: the params object, compact; nil when absent
	Result    jsontext.Value // responses
	Error     jsontext.Value // responses
	// Raw is the body to forward. From a client (Parse), the canonical
	// re-encoding of the fields above; from a trusted peer (ParseTrusted), the bytes
	// as read, which were validated to mean the fields above.
	//
	// ID, Params, Result and Error share Raw's memory where they hold the same
	// bytes (from ParseTrusted, the body's: do not change a body once read).
	Raw []byte
}

// IDKey identifies the message's id for matching a response to its request.
func (m Message) IDKey() string { return string(m.ID) }

// Failed reports whether a response carries an error.
func (m Message) Failed() bool { return len(m.Error) > 0 }

// MaxSafeInteger is the largest integer id both sides read exactly (JavaScript
// numbers are doubles).
const MaxSafeInteger = 1<<53 - 1

// A reader holds what one reading needs, pooled since every frame is read: the
// frame's decoder, a second one for the top-level members of params, and their
// fold keys. It serves one goroutine at a time, from readers.Get to put.
type reader struct {
	frame, params jsontext.Decoder
	// What the decoders read. From a bytes.Buffer, jsontext reads the bytes in
	// place, without copying them into a buffer of its own: the values it returns
	// are slices of the body, valid for the whole reading.
	frameIn, paramsIn bytes.Buffer
	folds             folds
}

var readers = sync.Pool{New: func() any { return new(reader) }}

// put returns r to the pool, keeping no reference to the bytes it read.
func (r *reader) put() {
	r.frameIn, r.paramsIn = bytes.Buffer{}, bytes.Buffer{}
	r.frame.Reset(&r.frameIn)
	r.params.Reset(&r.paramsIn)
	r.folds.reset()
	readers.Put(r)
}

// The decoders' options, boxed once rather than on every reading.
var (
	clientOptions  = []jsontext.Options{jsontext.AllowDuplicateNames(false), jsontext.AllowInvalidUTF8(false)}
	trustedOptions = []jsontext.Options{jsontext.AllowDuplicateNames(false), jsontext.AllowInvalidUTF8(true)}
	// params were validated already, by the frame's decoder or IsValid.
	paramsOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}
)

// Parse reads a client's frame strictly (see the package comment on the one
// reading) and sets Raw to its canonical re-encoding.
func Parse(body []byte) (Message, error) {
	r := readers.Get().(*reader)
	defer r.put()
	m, err := r.parse(body, false)
	if err != nil {
		return Message{}, err
	}
	// m's values are slices of body, which the caller may reuse: move them into
	// Raw, so that what was checked is what is kept and forwarded.
	m.encode(true)
	return m, nil
}

// ParseTrusted reads a frame from a peer that is not the one being guarded (the
// CLI, or the application beside climesh-connect) with the same rules, but for
// string contents, which may hold invalid UTF-8 (JSON.stringify writes lone
// surrogates as escapes); Raw is the body as read.
func ParseTrusted(body []byte) (Message, error) {
	r := readers.Get().(*reader)
	defer r.put()
	m, err := r.parse(body, true)
	if err != nil {
		return Message{}, err
	}
	m.Raw = body
	return m, nil
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotJSONRPC, fmt.Sprintf(format, args...))
}

// parse reads body; the values of the Message it returns are slices of body.
func (r *reader) parse(body []byte, lenientUTF8 bool) (Message, error) {
	d, opts := &r.frame, clientOptions
	if lenientUTF8 {
		opts = trustedOptions
	}
	r.frameIn = *bytes.NewBuffer(body) // body itself, not a copy
	d.Reset(&r.frameIn, opts...)
	tok, err := d.ReadToken()
	if err != nil {
		return Message{}, bad("%v", err)
	}
	if tok.Kind() != '{' {
		return Message{}, bad("want a JSON object, got %s", tok.Kind())
	}
	var (
		m                              Message
		version                        string
		hasVersion, hasID, hasMethod   bool
		hasParams, hasResult, hasError bool
		idIsNull                       bool
	)
	for d.PeekKind() != '}' {
		nameTok, err := d.ReadToken()
		if err != nil {
			return Message{}, bad("%v", err)
		}
		// name stays on the stack, not copied to the heap for each member, as
		// long as it does not escape: the error below takes a copy.
		name := nameTok.String()
		switch name {
		case "jsonrpc":
			t, err := readString(d, "jsonrpc")
			if err != nil {
				return Message{}, err
			}
			version, hasVersion = intern(t.String()), true
		case "id":
			v, err := d.ReadValue()
			if err != nil {
				return Message{}, bad("%v", err)
			}
			hasID = true
			if v.Kind() == 'n' {
				idIsNull = true
				break
			}
			if m.ID, err = canonicalID(v); err != nil {
				return Message{}, err
			}
		case "method":
			t, err := readString(d, "method")
			if err != nil {
				return Message{}, err
			}
			m.Method, hasMethod = intern(t.String()), true
		case "params":
			v, err := d.ReadValue()
			if err != nil {
				return Message{}, bad("%v", err)
			}
			if v.Kind() != '{' {
				return Message{}, bad("params: want an object")
			}
			if m.SessionID, err = r.readParams(v, !lenientUTF8); err != nil {
				return Message{}, err
			}
			m.Params, hasParams = v, true
		case "result":
			v, err := d.ReadValue()
			if err != nil {
				return Message{}, bad("%v", err)
			}
			m.Result, hasResult = v, true
		case "error":
			v, err := d.ReadValue()
			if err != nil {
				return Message{}, bad("%v", err)
			}
			if v.Kind() != '{' {
				return Message{}, bad("error: want an object")
			}
			m.Error, hasError = v, true
		default:
			return Message{}, bad("unknown member %q", truncate(strings.Clone(name)))
		}
	}
	if _, err := d.ReadToken(); err != nil { // '}'
		return Message{}, bad("%v", err)
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return Message{}, bad("data after the message")
	}
	if !hasVersion || version != "2.0" {
		return Message{}, bad("jsonrpc %q, want \"2.0\"", truncate(version))
	}
	switch {
	case hasMethod && (hasResult || hasError):
		return Message{}, bad("a message with a method carries no result or error")
	case hasMethod && m.Method == "":
		return Message{}, bad("empty method")
	case hasMethod && hasID && idIsNull:
		return Message{}, bad("a request's id may not be null")
	case hasMethod && hasID:
		m.Kind = Request
	case hasMethod:
		m.Kind = Notification
	case hasParams:
		return Message{}, bad("params without a method")
	case hasResult == hasError:
		return Message{}, bad("a response carries exactly one of result and error")
	case !hasID:
		return Message{}, bad("a response needs an id")
	case idIsNull && hasResult:
		return Message{}, bad("a result needs a non-null id")
	default:
		m.Kind = Response
	}
	return m, nil
}

// readString reads the value of member field, which must be a string; the
// token is valid until the next read.
func readString(d *jsontext.Decoder, field string) (jsontext.Token, error) {
	t, err := d.ReadToken()
	if err != nil {
		return jsontext.Token{}, bad("%v", err)
	}
	if t.Kind() != '"' {
		return jsontext.Token{}, bad("%s: want a string", field)
	}
	return t, nil
}

// intern is a copy of s, or the constant equal to it for the strings most frames
// carry (the version, the frequent methods), which are then not copied each time.
func intern(s string) string {
	switch s {
	case "2.0":
		return "2.0"
	case protocol.MethodSessionEvent:
		return protocol.MethodSessionEvent
	case protocol.MethodSessionSend:
		return protocol.MethodSessionSend
	case protocol.MethodPing:
		return protocol.MethodPing
	}
	return strings.Clone(s)
}

// canonicalID checks an id's type and returns its canonical encoding: a string
// re-quoted, or an integer within ±2^53 written as plain digits. Fractions and
// exponents are refused: 1, 1.0 and 1e0 would be one id to JavaScript. An id
// already canonical (most are) is returned as it is, v itself.
func canonicalID(v jsontext.Value) (jsontext.Value, error) {
	switch v.Kind() {
	case '"':
		// Without escapes, and in valid UTF-8, the contents are the string, and
		// quoting them again changes nothing: no character in them needs escaping
		// (quotes and control characters are escaped in valid JSON).
		if bytes.IndexByte(v, '\\') < 0 && utf8.Valid(v) {
			return v, nil
		}
		s, err := jsontext.AppendUnquote(nil, v)
		if err != nil {
			return nil, bad("id: %v", err)
		}
		q, err := jsontext.AppendQuote(nil, s)
		if err != nil {
			return nil, bad("id: %v", err)
		}
		return q, nil
	case '0':
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || n > MaxSafeInteger || n < -MaxSafeInteger {
			return nil, bad("id: want a string or an integer within ±2^53, got %s", truncate(string(v)))
		}
		// JSON writes an integer as its plain digits already, but for -0.
		var digits [20]byte
		if c := strconv.AppendInt(digits[:0], n, 10); !bytes.Equal(c, v) {
			return bytes.Clone(c), nil
		}
		return v, nil
	}
	return nil, bad("id: want a string or an integer, got %s", v.Kind())
}

// readParams returns params.sessionId and refuses the member names that could be
// read two ways: a non-string sessionId, and two top-level names equal under
// Unicode case folding (sessionId beside SessionId, or "ſessionId" alone, which
// folds to sessionId). Reading a client's frame (strict), it also refuses an
// empty sessionId: the CLI reads "" as a sessionId given, the sidecar as none.
// v is a valid object.
func (r *reader) readParams(v jsontext.Value, strict bool) (string, error) {
	d := &r.params
	r.paramsIn = *bytes.NewBuffer(v)
	d.Reset(&r.paramsIn, paramsOptions...)
	r.folds.reset()
	d.ReadToken() // '{' (validated already)
	var sessionID string
	for d.PeekKind() != '}' {
		nameTok, err := d.ReadToken()
		if err != nil {
			return "", bad("params: %v", err)
		}
		name := nameTok.String() // on the stack, as in parse: errors take copies
		key, other, clash := r.folds.add(name)
		if clash {
			return "", bad("params: members %q and %q differ only in case", truncate(other), truncate(strings.Clone(name)))
		}
		if string(key) == sessionIDFold && name != "sessionId" {
			return "", bad("params: member %q is not sessionId", truncate(strings.Clone(name)))
		}
		if name != "sessionId" {
			// A value at once, not token by token as SkipValue would.
			if _, err := d.ReadValue(); err != nil {
				return "", bad("params: %v", err)
			}
			continue
		}
		t, err := d.ReadToken()
		if err != nil {
			return "", bad("params: %v", err)
		}
		if t.Kind() != '"' {
			return "", bad("params.sessionId: want a string, got %s", t.Kind())
		}
		sessionID = t.String()
		if strict && sessionID == "" {
			return "", bad("params.sessionId: empty")
		}
	}
	return sessionID, nil
}

var sessionIDFold = string(appendFoldKey(nil, "sessionId"))

// appendFoldKey appends s with every rune mapped to the smallest rune of its
// Unicode case-folding orbit, so that two names equal under strings.EqualFold
// have one key.
func appendFoldKey(dst []byte, s string) []byte {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii { // as strings.ToLower, without the string
		for i := 0; i < len(s); i++ {
			c := s[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			dst = append(dst, c)
		}
		return dst
	}
	for _, r := range s {
		low := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			low = min(low, f)
		}
		dst = utf8.AppendRune(dst, unicode.ToLower(low))
	}
	return dst
}

// folds finds two member names with one fold key. It keeps each name and its key
// back to back in one buffer, reused from reading to reading, and searches the
// keys in turn, as params hold a handful of members; past maxLinearFolds
// members it indexes them in a map, so that an object of very many members
// costs linear time, not quadratic.
type folds struct {
	buf   []byte
	spans []foldSpan     // per member: its name is buf[start:mid], its key buf[mid:end]
	index map[string]int // key → member, past maxLinearFolds members
}

type foldSpan struct{ start, mid, end int }

const maxLinearFolds = 32

func (f *folds) reset() {
	f.buf, f.spans, f.index = f.buf[:0], f.spans[:0], nil
	if cap(f.buf) > 16<<10 || cap(f.spans) > 1<<10 { // a pooled reader does not pin a large object's names
		f.buf, f.spans = nil, nil
	}
}

// add records a member's name. It returns the name's key (valid until the next
// add) and, if an earlier member has the same key, that member's name.
func (f *folds) add(name string) (key []byte, other string, clash bool) {
	s := foldSpan{start: len(f.buf)}
	f.buf = append(f.buf, name...)
	s.mid = len(f.buf)
	f.buf = appendFoldKey(f.buf, name)
	s.end = len(f.buf)
	key = f.buf[s.mid:s.end]
	if f.index == nil && len(f.spans) == maxLinearFolds {
		f.index = make(map[string]int, 2*maxLinearFolds)
		for i, e := range f.spans {
			f.index[string(f.buf[e.mid:e.end])] = i
		}
	}
	match := -1
	if f.index != nil {
		if i, ok := f.index[string(key)]; ok {
			match = i
		} else {
			f.index[string(key)] = len(f.spans)
		}
	} else {
		for i, e := range f.spans {
			if bytes.Equal(f.buf[e.mid:e.end], key) {
				match = i
				break
			}
		}
	}
	if match >= 0 {
		e := f.spans[match]
		return key, string(f.buf[e.start:e.mid]), true
	}
	f.spans = append(f.spans, s)
	return key, "", false
}

// A span is where a value is in an encoding.
type span struct{ start, end int }

// encode sets Raw to the canonical body of a parsed message. With own, the
// values are then Raw's own bytes, a slice of it where the bytes are the same
// (as they are unless the value held whitespace), a copy otherwise.
func (m *Message) encode(own bool) {
	out := make([]byte, 0, 64+len(m.ID)+len(m.Method)+len(m.Params)+len(m.Result)+len(m.Error))
	var id, params, result, errv span
	appendValue := func(v jsontext.Value, compact bool) span {
		s := span{start: len(out)}
		if compact {
			out = appendCompact(out, v)
		} else {
			out = append(out, v...)
		}
		s.end = len(out)
		return s
	}
	out = append(out, `{"jsonrpc":"2.0"`...)
	if m.Kind == Request || m.Kind == Response {
		out = append(out, `,"id":`...)
		if m.ID == nil {
			out = append(out, "null"...)
		} else {
			id = appendValue(m.ID, false)
		}
	}
	if m.Kind == Request || m.Kind == Notification {
		out = append(out, `,"method":`...)
		out, _ = jsontext.AppendQuote(out, m.Method)
		if m.Params != nil {
			out = append(out, `,"params":`...)
			params = appendValue(m.Params, true)
		}
	}
	if m.Kind == Response {
		if m.Error != nil {
			out = append(out, `,"error":`...)
			errv = appendValue(m.Error, true)
		} else {
			out = append(out, `,"result":`...)
			result = appendValue(m.Result, true)
		}
	}
	out = append(out, '}')
	m.Raw = out
	if own {
		m.ID, m.Params = owned(out, id, m.ID), owned(out, params, m.Params)
		m.Result, m.Error = owned(out, result, m.Result), owned(out, errv, m.Error)
	}
}

// owned is v as bytes of raw: raw at s if it holds v's bytes (capped, so that an
// append to the value cannot write over raw), else a copy.
func owned(raw []byte, s span, v jsontext.Value) jsontext.Value {
	if v == nil {
		return nil
	}
	if b := raw[s.start:s.end:s.end]; bytes.Equal(b, v) {
		return b
	}
	return v.Clone()
}

// appendCompact appends v without whitespace. Most values are sent compact
// already: those are copied as they are, without Compact's re-encoding.
func appendCompact(out []byte, v jsontext.Value) []byte {
	if isCompact(v) {
		return append(out, v...)
	}
	c := v.Clone()
	if err := c.Compact(); err != nil {
		return append(out, v...) // validated already; cannot happen
	}
	return append(out, c...)
}

// isCompact reports whether the valid JSON value v is as Compact would leave it:
// no whitespace outside its strings (Compact keeps strings and numbers as they
// are written).
func isCompact(v []byte) bool {
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case ' ', '\t', '\n', '\r':
			return false
		case '"':
			// Skip the string, prompts and tool outputs mostly, at the speed of
			// IndexByte: it ends at the first quote after an even number of
			// backslashes (an odd number escapes the quote).
			for {
				j := bytes.IndexByte(v[i+1:], '"')
				if j < 0 {
					return false // not valid JSON; cannot happen
				}
				i += 1 + j
				n := 0
				for v[i-1-n] == '\\' { // stops at the opening quote at the latest
					n++
				}
				if n%2 == 0 {
					break
				}
			}
		}
	}
	return true
}

// WithParams is m with new params (an object the caller built from m.Params),
// re-encoded.
func (m Message) WithParams(params jsontext.Value) (Message, error) {
	// The caller's params are held to a client's rules: one object, valid UTF-8
	// (no lone surrogate escapes), no duplicate names, nothing after it.
	if params.Kind() != '{' || !params.IsValid() {
		return Message{}, bad("params: want one valid JSON object")
	}
	r := readers.Get().(*reader)
	defer r.put()
	sid, err := r.readParams(params, true)
	if err != nil {
		return Message{}, err
	}
	m.Params, m.SessionID = params, sid
	m.encode(false)
	return m, nil
}

// WithID is a response m answering id instead (a client's id restored).
func (m Message) WithID(id jsontext.Value) Message {
	m.ID = id
	m.encode(false)
	return m
}

// Member returns the value at path (exact member names) inside obj.
func Member(obj []byte, path ...string) (jsontext.Value, bool) {
	v := jsontext.Value(obj)
	for _, name := range path {
		if v.Kind() != '{' {
			return nil, false
		}
		d := jsontext.NewDecoder(bytes.NewReader(v), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
		d.ReadToken()
		var found jsontext.Value
		for d.PeekKind() != '}' && d.PeekKind() != 0 {
			t, err := d.ReadToken()
			if err != nil {
				return nil, false
			}
			match := t.String() == name // before the next read voids t
			val, err := d.ReadValue()
			if err != nil {
				return nil, false
			}
			if match {
				// The last one, as JSON.parse would (strict readers refused two);
				// a copy, as later reads overwrite the decoder's buffer.
				found = val.Clone()
			}
		}
		if found == nil {
			return nil, false
		}
		v = found
	}
	return v, true
}

// StringMember is Member's value when it is a string.
func StringMember(obj []byte, path ...string) (string, bool) {
	v, ok := Member(obj, path...)
	if !ok || v.Kind() != '"' {
		return "", false
	}
	s, err := jsontext.AppendUnquote(nil, v)
	return string(s), err == nil
}
