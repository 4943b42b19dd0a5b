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
	Raw []byte
}

// IDKey identifies the message's id for matching a response to its request.
func (m Message) IDKey() string { return string(m.ID) }

// Failed reports whether a response carries an error.
func (m Message) Failed() bool { return len(m.Error) > 0 }

// MaxSafeInteger is the largest integer id both sides read exactly (JavaScript
// numbers are doubles).
const MaxSafeInteger = 1<<53 - 1

var decoders = sync.Pool{New: func() any { return new(jsontext.Decoder) }}

// Parse reads a client's frame strictly (see the package comment on the one
// reading) and sets Raw to its canonical re-encoding.
func Parse(body []byte) (Message, error) {
	m, err := parse(body, false)
	if err != nil {
		return Message{}, err
	}
	m.Raw = m.encode()
	return m, nil
}

// ParseTrusted reads a frame from a peer that is not the one being guarded (the
// CLI, or the application beside climesh-connect) with the same rules, but for
// string contents, which may hold invalid UTF-8 (JSON.stringify writes lone
// surrogates as escapes); Raw is the body as read.
func ParseTrusted(body []byte) (Message, error) {
	m, err := parse(body, true)
	if err != nil {
		return Message{}, err
	}
	m.Raw = body
	return m, nil
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotJSONRPC, fmt.Sprintf(format, args...))
}

func parse(body []byte, lenientUTF8 bool) (Message, error) {
	d := decoders.Get().(*jsontext.Decoder)
	defer func() { d.Reset(bytes.NewReader(nil)); decoders.Put(d) }()
	d.Reset(bytes.NewReader(body), jsontext.AllowDuplicateNames(false), jsontext.AllowInvalidUTF8(lenientUTF8))
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
		name := nameTok.String()
		switch name {
		case "jsonrpc":
			if version, err = readString(d, "jsonrpc"); err != nil {
				return Message{}, err
			}
			hasVersion = true
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
			if m.Method, err = readString(d, "method"); err != nil {
				return Message{}, err
			}
			hasMethod = true
		case "params":
			v, err := d.ReadValue()
			if err != nil {
				return Message{}, bad("%v", err)
			}
			if v.Kind() != '{' {
				return Message{}, bad("params: want an object")
			}
			if m.SessionID, err = readParams(v, !lenientUTF8); err != nil {
				return Message{}, err
			}
			// Values read alias the decoder's buffer, which later reads (and the
			// next Parse, the decoder being pooled) overwrite: keep copies.
			m.Params, hasParams = v.Clone(), true
		case "result":
			v, err := d.ReadValue()
			if err != nil {
				return Message{}, bad("%v", err)
			}
			m.Result, hasResult = v.Clone(), true
		case "error":
			v, err := d.ReadValue()
			if err != nil {
				return Message{}, bad("%v", err)
			}
			if v.Kind() != '{' {
				return Message{}, bad("error: want an object")
			}
			m.Error, hasError = v.Clone(), true
		default:
			return Message{}, bad("unknown member %q", truncate(name))
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

// readString reads the value of member field, which must be a string.
func readString(d *jsontext.Decoder, field string) (string, error) {
	t, err := d.ReadToken()
	if err != nil {
		return "", bad("%v", err)
	}
	if t.Kind() != '"' {
		return "", bad("%s: want a string", field)
	}
	return t.String(), nil
}

// canonicalID checks an id's type and returns its canonical encoding: a string
// re-quoted, or an integer within ±2^53 written as plain digits. Fractions and
// exponents are refused: 1, 1.0 and 1e0 would be one id to JavaScript.
func canonicalID(v jsontext.Value) (jsontext.Value, error) {
	switch v.Kind() {
	case '"':
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
		return strconv.AppendInt(nil, n, 10), nil
	}
	return nil, bad("id: want a string or an integer, got %s", v.Kind())
}

// readParams returns params.sessionId and refuses the member names that could be
// read two ways: a non-string sessionId, and two top-level names equal under
// Unicode case folding (sessionId beside SessionId, or "ſessionId" alone, which
// folds to sessionId). Reading a client's frame (strict), it also refuses an
// empty sessionId: the CLI reads "" as a sessionId given, the sidecar as none.
func readParams(v jsontext.Value, strict bool) (string, error) {
	d := jsontext.NewDecoder(bytes.NewReader(v), jsontext.AllowInvalidUTF8(true))
	d.ReadToken() // '{' (validated already)
	var sessionID string
	seen := map[string]string{}
	for d.PeekKind() != '}' {
		nameTok, err := d.ReadToken()
		if err != nil {
			return "", bad("params: %v", err)
		}
		name := nameTok.String()
		key := foldKey(name)
		if other, ok := seen[key]; ok {
			return "", bad("params: members %q and %q differ only in case", truncate(other), truncate(name))
		}
		seen[key] = name
		if key == sessionIDFold && name != "sessionId" {
			return "", bad("params: member %q is not sessionId", truncate(name))
		}
		if name != "sessionId" {
			if err := d.SkipValue(); err != nil {
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

var sessionIDFold = foldKey("sessionId")

// foldKey maps every rune to the smallest rune of its Unicode case-folding orbit,
// so that two names equal under strings.EqualFold have one key.
func foldKey(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToLower(s)
	}
	var b strings.Builder
	for _, r := range s {
		low := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			low = min(low, f)
		}
		b.WriteRune(unicode.ToLower(low))
	}
	return b.String()
}

// encode is the canonical body of a parsed message.
func (m Message) encode() []byte {
	out := make([]byte, 0, 64+len(m.Method)+len(m.Params)+len(m.Result)+len(m.Error))
	out = append(out, `{"jsonrpc":"2.0"`...)
	if m.Kind == Request || m.Kind == Response {
		out = append(out, `,"id":`...)
		if m.ID == nil {
			out = append(out, "null"...)
		} else {
			out = append(out, m.ID...)
		}
	}
	if m.Kind == Request || m.Kind == Notification {
		out = append(out, `,"method":`...)
		out, _ = jsontext.AppendQuote(out, m.Method)
		if m.Params != nil {
			out = append(out, `,"params":`...)
			out = appendCompact(out, m.Params)
		}
	}
	if m.Kind == Response {
		if m.Error != nil {
			out = append(out, `,"error":`...)
			out = appendCompact(out, m.Error)
		} else {
			out = append(out, `,"result":`...)
			out = appendCompact(out, m.Result)
		}
	}
	return append(out, '}')
}

func appendCompact(out []byte, v jsontext.Value) []byte {
	c := v.Clone()
	if err := c.Compact(); err != nil {
		return append(out, v...) // validated already; cannot happen
	}
	return append(out, c...)
}

// WithParams is m with new params (an object the caller built from m.Params),
// re-encoded.
func (m Message) WithParams(params jsontext.Value) (Message, error) {
	// The caller's params are held to a client's rules: one object, valid UTF-8
	// (no lone surrogate escapes), no duplicate names, nothing after it.
	if params.Kind() != '{' || !params.IsValid() {
		return Message{}, bad("params: want one valid JSON object")
	}
	sid, err := readParams(params, true)
	if err != nil {
		return Message{}, err
	}
	m.Params, m.SessionID = params, sid
	m.Raw = m.encode()
	return m, nil
}

// WithID is a response m answering id instead (a client's id restored).
func (m Message) WithID(id jsontext.Value) Message {
	m.ID = id
	m.Raw = m.encode()
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
