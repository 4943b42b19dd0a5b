package jsonrpc

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
)

// reading is what Parse must make of an accepted frame.
type reading struct {
	kind    Kind
	id      string // canonical; "" for none (or null)
	method  string
	session string
	params  string // JSON, compared by meaning; "" for none
}

type attackCase struct {
	name string
	body string
	want *reading // nil: refused
}

func sendWith(params string) string {
	return `{"jsonrpc":"2.0","id":1,"method":"session.send","params":` + params + `}`
}

func sent(session, params string) *reading {
	return &reading{kind: Request, id: "1", method: "session.send", session: session, params: params}
}

var attackCases = []attackCase{
	// Accepted frames, read exactly.
	{"request", sendWith(`{"sessionId":"s1","prompt":"hi"}`), sent("s1", `{"sessionId":"s1","prompt":"hi"}`)},
	{"notification", `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s"}}`, &reading{kind: Notification, method: "session.event", session: "s", params: `{"sessionId":"s"}`}},
	{"no params", `{"jsonrpc":"2.0","id":"x","method":"ping"}`, &reading{kind: Request, id: `"x"`, method: "ping"}},
	{"empty params", sendWith(`{}`), sent("", `{}`)},
	{"result", `{"jsonrpc":"2.0","id":7,"result":{"ok":true}}`, &reading{kind: Response, id: "7"}},
	{"null result", `{"jsonrpc":"2.0","id":7,"result":null}`, &reading{kind: Response, id: "7"}},
	{"error", `{"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"no"}}`, &reading{kind: Response, id: "7"}},
	{"error to null id", `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}`, &reading{kind: Response}},
	{"members in any order", `{"params":{"sessionId":"s1"},"method":"session.send","id":1,"jsonrpc":"2.0"}`, sent("s1", `{"sessionId":"s1"}`)},
	{"whitespace", " \r\n\t{ \"jsonrpc\" : \"2.0\" , \"id\" : 1 , \"method\" : \"session.send\" , \"params\" : { \"sessionId\" : \"s1\" } } \n", sent("s1", `{"sessionId":"s1"}`)},
	{"escaped names alone", `{"jsonrpc":"2.0","id":1,"m\u0065thod":"session.send","p\u0061rams":{"sess\u0069onId":"s1"}}`, sent("s1", `{"sessionId":"s1"}`)},
	{"escaped values", `{"jsonrpc":"2\u002e0","id":1,"method":"session\u002esend","params":{"sessionId":"\u0073\u0031"}}`, sent("s1", `{"sessionId":"s1"}`)},
	{"escaped solidus", `{"jsonrpc":"2.0","id":"a\/b","method":"m\/n"}`, &reading{kind: Request, id: `"a/b"`, method: "m/n"}},
	{"surrogate pair", sendWith(`{"sessionId":"\ud83d\ude00"}`), sent("😀", `{"sessionId":"😀"}`)},
	{"NUL in method", `{"jsonrpc":"2.0","method":"m\u0000"}`, &reading{kind: Notification, method: "m\x00"}},
	{"nested case variants", sendWith(`{"sessionId":"s1","a":{"X":1,"x":2}}`), sent("s1", `{"sessionId":"s1","a":{"X":1,"x":2}}`)},
	{"nested sessionId", sendWith(`{"a":{"sessionId":1,"SessionId":"x"}}`), sent("", `{"a":{"sessionId":1,"SessionId":"x"}}`)},
	{"dotless i", sendWith(`{"sessıonId":"x"}`), sent("", `{"sessıonId":"x"}`)},

	// Duplicate names in the envelope, plainly or through escapes.
	{"dup method", `{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}`, nil},
	{"dup id", `{"jsonrpc":"2.0","id":1,"id":2,"method":"a"}`, nil},
	{"dup id types", `{"jsonrpc":"2.0","id":1,"id":"1","method":"a"}`, nil},
	{"dup jsonrpc", `{"jsonrpc":"1.0","jsonrpc":"2.0","id":1,"method":"a"}`, nil},
	{"dup params", `{"jsonrpc":"2.0","id":1,"method":"a","params":{},"params":{"sessionId":"x"}}`, nil},
	{"dup result", `{"jsonrpc":"2.0","id":1,"result":1,"result":2}`, nil},
	{"dup method escaped", `{"jsonrpc":"2.0","id":1,"method":"a","m\u0065thod":"b"}`, nil},
	{"dup params escaped", `{"jsonrpc":"2.0","id":1,"method":"a","params":{"sessionId":"a"},"\u0070arams":{"sessionId":"b"}}`, nil},

	// Duplicate names in params.
	{"dup sessionId", sendWith(`{"sessionId":"dup-a","sessionId":"dup-b"}`), nil},
	{"dup sessionId same", sendWith(`{"sessionId":"a","sessionId":"a"}`), nil},
	{"dup sessionId escaped", sendWith(`{"sessionId":"a","sess\u0069onId":"b"}`), nil},
	{"dup sessionId escaped first", sendWith(`{"\u0073essionId":"a","sessionId":"b"}`), nil},
	{"dup sessionId typed", sendWith(`{"sessionId":1,"sessionId":"b"}`), nil},
	{"dup other", sendWith(`{"sessionId":"s","prompt":"a","prompt":"b"}`), nil},
	{"dup deep", sendWith(`{"sessionId":"s","a":{"b":[{"c":{"d":{"e":1,"\u0065":2}}}]}}`), nil},
	{"dup in result", `{"jsonrpc":"2.0","id":1,"result":{"sessionId":"a","sessionId":"b"}}`, nil},
	{"dup in error", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"code":2}}`, nil},

	// Case variants.
	{"SessionId beside", sendWith(`{"SessionId":"x","sessionId":"y"}`), nil},
	{"SessionId after", sendWith(`{"sessionId":"y","SessionId":"x"}`), nil},
	{"SessionId alone", sendWith(`{"SessionId":"x"}`), nil},
	{"sessionID alone", sendWith(`{"sessionID":"x"}`), nil},
	{"SESSIONID alone", sendWith(`{"SESSIONID":"x"}`), nil},
	{"long s alone", sendWith(`{"ſessionId":"x"}`), nil},
	{"long s escaped", sendWith(`{"\u017fessionId":"x"}`), nil},
	{"long s beside", sendWith(`{"sessionId":"y","ſessionId":"x"}`), nil},
	{"Model beside model", sendWith(`{"model":"a","Model":"b"}`), nil},
	{"kelvin beside k", sendWith(`{"k":"a","\u212a":"b"}`), nil},
	{"Method", `{"jsonrpc":"2.0","id":1,"Method":"a"}`, nil},
	{"Method beside", `{"jsonrpc":"2.0","id":1,"method":"a","Method":"b"}`, nil},
	{"ID", `{"jsonrpc":"2.0","ID":1,"method":"a"}`, nil},
	{"ID beside", `{"jsonrpc":"2.0","id":1,"ID":2,"method":"a"}`, nil},
	{"Params", `{"jsonrpc":"2.0","id":1,"method":"a","Params":{"sessionId":"x"}}`, nil},
	{"JSONRPC", `{"JSONRPC":"2.0","id":1,"method":"a"}`, nil},
	{"Result", `{"jsonrpc":"2.0","id":1,"Result":1}`, nil},

	// sessionId of another type than string.
	{"sessionId number", sendWith(`{"sessionId":1}`), nil},
	{"sessionId null", sendWith(`{"sessionId":null}`), nil},
	{"sessionId object", sendWith(`{"sessionId":{"id":"x"}}`), nil},
	{"sessionId array", sendWith(`{"sessionId":["x"]}`), nil},
	{"sessionId bool", sendWith(`{"sessionId":true}`), nil},
	{"sessionId empty", sendWith(`{"sessionId":""}`), nil},

	// Requests dressed as responses, and responses that are not.
	{"method and result", `{"jsonrpc":"2.0","id":1,"method":"a","result":1}`, nil},
	{"method and error", `{"jsonrpc":"2.0","id":1,"method":"a","error":{"code":1}}`, nil},
	{"method and null result", `{"jsonrpc":"2.0","id":1,"method":"a","result":null}`, nil},
	{"result and error", `{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1}}`, nil},
	{"params without method", `{"jsonrpc":"2.0","id":1,"params":{"sessionId":"x"}}`, nil},
	{"params with result", `{"jsonrpc":"2.0","id":1,"result":1,"params":{"sessionId":"x"}}`, nil},
	{"result without id", `{"jsonrpc":"2.0","result":1}`, nil},
	{"result to null id", `{"jsonrpc":"2.0","id":null,"result":1}`, nil},
	{"error string", `{"jsonrpc":"2.0","id":1,"error":"no"}`, nil},
	{"error null", `{"jsonrpc":"2.0","id":1,"error":null}`, nil},
	{"error false", `{"jsonrpc":"2.0","id":1,"error":false}`, nil},
	{"id only", `{"jsonrpc":"2.0","id":1}`, nil},
	{"method not a string", `{"jsonrpc":"2.0","id":1,"method":1}`, nil},
	{"method null", `{"jsonrpc":"2.0","id":1,"method":null,"result":1}`, nil},
	{"method empty", `{"jsonrpc":"2.0","id":1,"method":""}`, nil},

	// id types.
	{"id string", `{"jsonrpc":"2.0","id":"\u0061","method":"m"}`, &reading{kind: Request, id: `"a"`, method: "m"}},
	{"id negative", `{"jsonrpc":"2.0","id":-5,"method":"m"}`, &reading{kind: Request, id: "-5", method: "m"}},
	{"id minus zero", `{"jsonrpc":"2.0","id":-0,"method":"m"}`, &reading{kind: Request, id: "0", method: "m"}},
	{"id max safe", `{"jsonrpc":"2.0","id":9007199254740991,"method":"m"}`, &reading{kind: Request, id: "9007199254740991", method: "m"}},
	{"id min safe", `{"jsonrpc":"2.0","id":-9007199254740991,"method":"m"}`, &reading{kind: Request, id: "-9007199254740991", method: "m"}},
	{"id float", `{"jsonrpc":"2.0","id":1.0,"method":"m"}`, nil},
	{"id fraction", `{"jsonrpc":"2.0","id":1.5,"method":"m"}`, nil},
	{"id exponent", `{"jsonrpc":"2.0","id":1e0,"method":"m"}`, nil},
	{"id Exponent", `{"jsonrpc":"2.0","id":10E-1,"method":"m"}`, nil},
	{"id 2^53", `{"jsonrpc":"2.0","id":9007199254740992,"method":"m"}`, nil},
	{"id 2^53+1", `{"jsonrpc":"2.0","id":9007199254740993,"method":"m"}`, nil},
	{"id -2^53-1", `{"jsonrpc":"2.0","id":-9007199254740993,"method":"m"}`, nil},
	{"id 2^64", `{"jsonrpc":"2.0","id":18446744073709551616,"method":"m"}`, nil},
	{"id huge", `{"jsonrpc":"2.0","id":1e400,"method":"m"}`, nil},
	{"id bool", `{"jsonrpc":"2.0","id":true,"method":"m"}`, nil},
	{"id object", `{"jsonrpc":"2.0","id":{"a":1},"method":"m"}`, nil},
	{"id array", `{"jsonrpc":"2.0","id":[1],"method":"m"}`, nil},
	{"id null request", `{"jsonrpc":"2.0","id":null,"method":"m"}`, nil},
	{"id leading zero", `{"jsonrpc":"2.0","id":01,"method":"m"}`, nil},
	{"response id float", `{"jsonrpc":"2.0","id":1.0,"result":1}`, nil},
	{"response id bool", `{"jsonrpc":"2.0","id":false,"error":{"code":1}}`, nil},

	// params of another type than object.
	{"params array", sendWith(`["s1"]`), nil},
	{"params string", sendWith(`"s1"`), nil},
	{"params null", sendWith(`null`), nil},
	{"params number", sendWith(`1`), nil},
	{"params bool", sendWith(`true`), nil},

	// Versions.
	{"no version", `{"id":1,"method":"m"}`, nil},
	{"version 1.0", `{"jsonrpc":"1.0","id":1,"method":"m"}`, nil},
	{"version number", `{"jsonrpc":2.0,"id":1,"method":"m"}`, nil},
	{"version space", `{"jsonrpc":"2.0 ","id":1,"method":"m"}`, nil},

	// Trailing and leading data.
	{"second object", sendWith(`{"sessionId":"s1"}`) + `{}`, nil},
	{"second frame", sendWith(`{"sessionId":"s1"}`) + sendWith(`{"sessionId":"s2"}`), nil},
	{"trailing garbage", sendWith(`{"sessionId":"s1"}`) + `x`, nil},
	{"trailing comma", sendWith(`{"sessionId":"s1"}`) + `,`, nil},
	{"trailing NUL", sendWith(`{"sessionId":"s1"}`) + "\x00", nil},
	{"trailing comment", sendWith(`{"sessionId":"s1"}`) + "//", nil},
	{"leading BOM", "\ufeff" + sendWith(`{"sessionId":"s1"}`), nil},
	{"truncated", `{"jsonrpc":"2.0","id":1,"method":"m"`, nil},
	{"trailing comma inside", `{"jsonrpc":"2.0","id":1,"method":"m",}`, nil},

	// Invalid UTF-8, lone surrogates.
	{"invalid byte in method", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\xff\"}", nil},
	{"invalid byte in sessionId", sendWith("{\"sessionId\":\"s\xc3\x28\"}"), nil},
	{"invalid byte in a name", sendWith("{\"sessionId\xff\":\"s\"}"), nil},
	{"invalid byte deep", sendWith("{\"a\":[{\"b\":\"\xe2\x82\"}]}"), nil},
	{"overlong", sendWith("{\"sessionId\":\"\xc0\xaf\"}"), nil},
	{"encoded surrogate", sendWith("{\"sessionId\":\"\xed\xa0\x80\"}"), nil},
	{"lone high surrogate", sendWith(`{"sessionId":"\ud800"}`), nil},
	{"lone low surrogate", sendWith(`{"sessionId":"\udc00"}`), nil},
	{"swapped surrogates", sendWith(`{"sessionId":"\ude00\ud83d"}`), nil},
	{"lone surrogate in method", `{"jsonrpc":"2.0","id":1,"method":"\ud83d"}`, nil},
	{"lone surrogate in id", `{"jsonrpc":"2.0","id":"\udfff","method":"m"}`, nil},
	{"lone surrogate in a name", sendWith(`{"\ud800":1,"\udbff":2}`), nil},
	{"lone surrogate deep", sendWith(`{"a":{"b":["\udfff"]}}`), nil},
	{"control character", sendWith("{\"sessionId\":\"a\tb\"}"), nil},

	// Unknown members.
	{"unknown member", `{"jsonrpc":"2.0","id":1,"method":"m","extra":1}`, nil},
	{"proto member", `{"jsonrpc":"2.0","id":1,"method":"m","__proto__":{"method":"x"}}`, nil},
	{"unknown escaped", `{"jsonrpc":"2.0","id":1,"method":"m","\u0000":1}`, nil},

	// Not one object.
	{"batch", `[` + sendWith(`{"sessionId":"s1"}`) + `]`, nil},
	{"empty batch", `[]`, nil},
	{"string", `"session.send"`, nil},
	{"number", `1`, nil},
	{"null", `null`, nil},
	{"true", `true`, nil},
	{"empty", ``, nil},
	{"blank", ` `, nil},
	{"empty object", `{}`, nil},
}

// TestParseAttacks: each attacker's frame is refused, or read exactly as the CLI
// reads it.
func TestParseAttacks(t *testing.T) {
	for _, tc := range attackCases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse([]byte(tc.body))
			if tc.want == nil {
				if err == nil || !errors.Is(err, ErrNotJSONRPC) {
					t.Fatalf("%s\naccepted as %+v (%v)", tc.body, m, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s\nrefused: %v", tc.body, err)
			}
			w := tc.want
			if m.Kind != w.kind || string(m.ID) != w.id || (m.ID == nil) != (w.id == "") || m.Method != w.method || m.SessionID != w.session {
				t.Fatalf("%s\nread as %+v\nwant %+v", tc.body, m, *w)
			}
			if (m.Params == nil) != (w.params == "") || w.params != "" && !reflect.DeepEqual(jsValueOf(m.Params), jsValueOf([]byte(w.params))) {
				t.Fatalf("params %s, want %s", m.Params, w.params)
			}
			if err := checkAgreement([]byte(tc.body)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRawIsCanonical: the body forwarded is the canonical encoding of what was
// read: one per message, whatever spelling it came in.
func TestRawIsCanonical(t *testing.T) {
	spellings := []string{
		`{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s1","n":[1, 2]}}`,
		` { "params" : { "sessionId" : "s1" , "n" : [ 1 , 2 ] } , "method" : "session.send" , "id" : 1 , "jsonrpc" : "2.0" } `,
		`{"id":1,"jsonrpc":"2\u002e0","m\u0065thod":"session\u002esend","params":{"sessionId":"s1","n":[1,2]}}`,
		`{"jsonrpc":"2.0","id":-0,"method":"session.send","params":{"sessionId":"s1","n":[1,2]}}`,
	}
	var first []byte
	for _, s := range spellings {
		m, err := Parse([]byte(s))
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if err := checkAgreement([]byte(s)); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		// Params are kept as written (strings not re-escaped), so only the
		// envelope, whitespace and the id are canonical across spellings.
		m.Raw = bytes.ReplaceAll(m.Raw, []byte(`"id":0`), []byte(`"id":1`))
		if first == nil {
			first = m.Raw
			continue
		}
		if !bytes.Equal(m.Raw, first) {
			t.Errorf("%s\nRaw %s\nwant %s", s, m.Raw, first)
		}
	}
	want := `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s1","n":[1,2]}}`
	if string(first) != want {
		t.Errorf("Raw %s, want %s", first, want)
	}
	for _, tc := range attackCases {
		if tc.want == nil {
			continue
		}
		m, _ := Parse([]byte(tc.body))
		m2, err := Parse(m.Raw)
		if err != nil || sameMessage(m, m2) != nil || !bytes.Equal(m2.Raw, m.Raw) {
			t.Errorf("%s: Raw %s parses to %+v, %v", tc.name, m.Raw, m2, err)
		}
	}
}

// TestIDKeyIsJSIdentity: two ids have one IDKey exactly when the CLI reads them
// as the same value.
func TestIDKeyIsJSIdentity(t *testing.T) {
	ids := []string{`1`, `-0`, `0`, `-1`, `"1"`, `"\u0031"`, `"a"`, `"\u0061"`, `"A"`, `"\/"`, `"/"`, `"😀"`, `"\ud83d\ude00"`,
		`"é"`, `"e\u0301"`, `9007199254740991`, `"9007199254740991"`, `""`, `" "`, `"\u0000"`,
		// Refused, but were they accepted they would need the key of another.
		`1.0`, `1e0`, `10E-1`, `9007199254740992`, `9007199254740993`, `-9007199254740993`}
	type read struct {
		key string
		js  any
	}
	var reads []read
	for _, id := range ids {
		for _, body := range []string{`{"jsonrpc":"2.0","id":` + id + `,"method":"m"}`, `{"jsonrpc":"2.0","id":` + id + `,"result":1}`} {
			m, err := Parse([]byte(body))
			if err != nil {
				continue
			}
			r, err := readAsCLI([]byte(body))
			if err != nil {
				t.Fatal(err)
			}
			reads = append(reads, read{m.IDKey(), r.id})
		}
	}
	for _, a := range reads {
		for _, b := range reads {
			if (a.key == b.key) != reflect.DeepEqual(a.js, b.js) {
				t.Errorf("ids %#v and %#v: keys %s and %s", a.js, b.js, a.key, b.key)
			}
		}
	}
}

// TestMessagesOwnTheirBytes: a Message stays what it was read as after later
// reads (the decoders are pooled and reuse their buffers).
func TestMessagesOwnTheirBytes(t *testing.T) {
	long := strings.Repeat("x", 5000)
	bodies := []string{
		`{"jsonrpc":"2.0","params":{"sessionId":"s1","a":"` + long + `"},"id":1,"method":"session.send"}`,
		`{"jsonrpc":"2.0","params":{"sessionId":"s1","a":[1,2,3]},"method":"session.` + long + `","id":1}`,
		`{"jsonrpc":"2.0","result":{"ok":"` + long + `"},"id":1}`,
		`{"jsonrpc":"2.0","error":{"code":1,"message":"` + long + `"},"id":"` + long + `"}`,
		`{"jsonrpc":"2.0","id":1,"method":"m","params":{"b":2}}`,
	}
	var msgs []Message
	for _, parse := range []func([]byte) (Message, error){Parse, ParseTrusted} {
		for _, b := range bodies {
			m, err := parse([]byte(b))
			if err != nil {
				t.Fatalf("%.80s: %v", b, err)
			}
			msgs = append(msgs, m)
		}
	}
	for range 3 {
		for _, b := range bodies {
			Parse([]byte(strings.ReplaceAll(b, "x", "y")))
		}
	}
	for i, m := range msgs {
		body := []byte(bodies[i%len(bodies)])
		r, err := readAsCLI(body)
		if err != nil {
			t.Fatal(err)
		}
		if err := agrees(m, r); err != nil {
			t.Errorf("%.80s: %v", body, err)
		}
	}
}

func TestMember(t *testing.T) {
	obj := []byte(`{"a":{"b":"x","b":"y","c":[1]},"n":1,"a2":"` + strings.Repeat("z", 5000) + `","last":{"k":"v"}}`)
	for _, tc := range []struct {
		path []string
		want string
	}{
		{[]string{"a", "b"}, `"y"`}, // the last, as JSON.parse
		{[]string{"a", "c"}, `[1]`},
		{[]string{"n"}, `1`},
		{[]string{"last"}, `{"k":"v"}`},
		{[]string{"last", "k"}, `"v"`},
		{[]string{"A"}, ""},
		{[]string{"n", "x"}, ""},
		{[]string{"a", "B"}, ""},
	} {
		v, ok := Member(obj, tc.path...)
		if ok != (tc.want != "") || string(v) != tc.want {
			t.Errorf("Member(%v) = %s, %v; want %s", tc.path, v, ok, tc.want)
		}
	}
	if s, ok := StringMember(obj, "last", "k"); !ok || s != "v" {
		t.Errorf("StringMember = %q, %v", s, ok)
	}
	if _, ok := StringMember(obj, "n"); ok {
		t.Error("StringMember of a number")
	}
}

func TestWithParams(t *testing.T) {
	m, err := Parse([]byte(sendWith(`{"sessionId":"s1"}`)))
	if err != nil {
		t.Fatal(err)
	}
	m2, err := m.WithParams(jsontext.Value(`{"sessionId":"s2","x":1}`))
	if err != nil || m2.SessionID != "s2" {
		t.Fatalf("%+v %v", m2, err)
	}
	if err := checkAgreement(m2.Raw); err != nil {
		t.Fatal(err)
	}
	if p, _ := Parse(m2.Raw); p.SessionID != "s2" || p.IDKey() != m.IDKey() {
		t.Fatalf("%+v", p)
	}
	for _, bad := range []string{`{"sessionId":1}`, `{"SessionId":"x"}`, `{"sessionId":"a","sessionId":"b"}`, `{"sessionId":""}`,
		`[1]`, `null`, `"x"`, `{"a":1}{"sessionId":"x"}`, `{"a":`, `{"sessionId":"\ud800"}`} {
		if m3, err := m.WithParams(jsontext.Value(bad)); !errors.Is(err, ErrNotJSONRPC) {
			t.Errorf("WithParams(%s) = %s, %v", bad, m3.Raw, err)
		}
	}
}
