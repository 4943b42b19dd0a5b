package jsonrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

func TestReadFrames(t *testing.T) {
	a, b := `{"jsonrpc":"2.0","id":1,"method":"ping"}`, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s1"}}`
	in := string(Frame([]byte(a))) + "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\ncontent-length: " + itoa(len(b)) + "\r\n\r\n" + b
	r := NewReader(strings.NewReader(in), DefaultLimits)
	for _, want := range []string{a, b} {
		got, err := r.Read()
		if err != nil || string(got) != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestReadErrors(t *testing.T) {
	small := Limits{MaxHeaderBytes: 64, MaxFrameBytes: 16}
	cases := map[string]struct {
		in   string
		want error
	}{
		"garbage":           {"hello world\r\n\r\n", ErrBadHeader},
		"no content-length": {"Content-Type: x\r\n\r\n{}", ErrBadHeader},
		"negative length":   {"Content-Length: -1\r\n\r\n", ErrBadHeader},
		"letters length":    {"Content-Length: ten\r\n\r\n", ErrBadHeader},
		"frame over limit":  {"Content-Length: 17\r\n\r\n" + strings.Repeat("x", 17), ErrFrameTooLarge},
		"header over limit": {"X: " + strings.Repeat("y", 80) + "\r\n\r\n", ErrHeaderTooLarge},
		"cut in body":       {"Content-Length: 10\r\n\r\n{}", io.ErrUnexpectedEOF},
		"cut in header":     {"Content-Len", io.ErrUnexpectedEOF},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := NewReader(strings.NewReader(tc.in), small).Read()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestParseKinds is what TestClassify checked, read by Parse: the kind, method and
// sessionId of each shape, and the refusals. Two of Classify's acceptances are
// refusals now: params must be an object, and a request's id may not be null
// (JSON.parse readers would not agree on what either means).
func TestParseKinds(t *testing.T) {
	cases := map[string]struct {
		body    string
		kind    Kind
		method  string
		session string
		err     bool
	}{
		"request":       {body: `{"jsonrpc":"2.0","id":7,"method":"session.send","params":{"sessionId":"abc","prompt":"hi"}}`, kind: Request, method: "session.send", session: "abc"},
		"string id":     {body: `{"jsonrpc":"2.0","id":"x","method":"ping"}`, kind: Request, method: "ping"},
		"notification":  {body: `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s"}}`, kind: Notification, method: "session.event", session: "s"},
		"result":        {body: `{"jsonrpc":"2.0","id":7,"result":{"ok":true}}`, kind: Response},
		"error":         {body: `{"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"no"}}`, kind: Response},
		"array params":  {body: `{"jsonrpc":"2.0","id":1,"method":"m","params":[1]}`, err: true},
		"not json":      {body: `hello`, err: true},
		"batch":         {body: `[{"jsonrpc":"2.0","id":1,"method":"m"}]`, err: true},
		"wrong version": {body: `{"jsonrpc":"1.0","id":1,"method":"m"}`, err: true},
		"nothing":       {body: `{"jsonrpc":"2.0","id":1}`, err: true},
		"truncated":     {body: `{"jsonrpc":"2.0","id":1,"method":"m"`, err: true},
		"empty method":  {body: `{"jsonrpc":"2.0","id":1,"method":""}`, err: true},
		"null id":       {body: `{"jsonrpc":"2.0","id":null,"method":"m"}`, err: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			m, err := Parse([]byte(tc.body))
			if tc.err {
				if err == nil || !errors.Is(err, ErrNotJSONRPC) {
					t.Fatalf("accepted %s: %+v", tc.body, m)
				}
				return
			}
			// These bodies are already canonical, so Raw is the bytes as read.
			if err != nil || m.Kind != tc.kind || m.Method != tc.method || m.SessionID != tc.session || !bytes.Equal(m.Raw, []byte(tc.body)) {
				t.Fatalf("got %+v, %v", m, err)
			}
			// A trusted peer's frame reads the same, and keeps its bytes.
			tm, err := ParseTrusted([]byte(tc.body))
			if err != nil || tm.Kind != m.Kind || tm.Method != m.Method || tm.SessionID != m.SessionID || tm.IDKey() != m.IDKey() || !bytes.Equal(tm.Raw, []byte(tc.body)) {
				t.Fatalf("trusted: got %+v, %v", tm, err)
			}
		})
	}
}

func TestErrorResponseParses(t *testing.T) {
	m, err := Parse(ErrorResponse([]byte(`3`), -32011, "refused", map[string]int{"status": 403}))
	if err != nil || m.Kind != Response || string(m.ID) != "3" || !m.Failed() {
		t.Fatalf("%+v %v", m, err)
	}
	m, err = Parse(ErrorResponse(nil, CodeParseError, "parse error", nil))
	if err != nil || m.Kind != Response || m.ID != nil || !m.Failed() {
		t.Fatalf("null id: %+v %v", m, err)
	}
}

// FuzzRead: any input either yields frames that re-frame to a prefix of the input,
// or a clean error; never a panic or a frame over the limit.
func FuzzRead(f *testing.F) {
	f.Add([]byte("Content-Length: 2\r\n\r\n{}"))
	f.Add([]byte("Content-Length: 5\r\nContent-Type: x\r\n\r\nhello"))
	f.Add([]byte("garbage"))
	f.Add([]byte("Content-Length: 99999999999999999999\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		lim := Limits{MaxHeaderBytes: 256, MaxFrameBytes: 1024}
		r := NewReader(bytes.NewReader(in), lim)
		for range 100 {
			body, err := r.Read()
			if err != nil {
				return
			}
			if len(body) > lim.MaxFrameBytes {
				t.Fatalf("frame of %d bytes over the limit", len(body))
			}
			_, _ = Parse(body)
			_, _ = ParseTrusted(body)
		}
	})
}

// FuzzParseTrusted: never panics; a trusted peer's message keeps its exact bytes,
// and whatever Parse accepts ParseTrusted reads the same way.
func FuzzParseTrusted(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"a"}}`))
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"result":null}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		tm, terr := ParseTrusted(in)
		if terr == nil && !bytes.Equal(tm.Raw, in) {
			t.Fatal("ParseTrusted changed the bytes")
		}
		m, err := Parse(in)
		if err != nil {
			return
		}
		if terr != nil || tm.Kind != m.Kind || tm.Method != m.Method || tm.SessionID != m.SessionID || tm.IDKey() != m.IDKey() {
			t.Fatalf("Parse: %+v; ParseTrusted: %+v, %v", m, tm, terr)
		}
	})
}

func TestEndsTurn(t *testing.T) {
	for body, want := range map[string]bool{
		`{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s","event":{"type":"session.idle"}}}`:      true,
		`{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s","event":{"type":"session.error"}}}`:     true,
		`{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s","event":{"type":"assistant.message"}}}`: false,
		`{"jsonrpc":"2.0","method":"session.lifecycle","params":{"type":"session.idle"}}`:                            false,
		`{"jsonrpc":"2.0","id":1,"result":{"type":"session.idle"}}`:                                                  false,
	} {
		m, err := Parse([]byte(body))
		if err != nil || EndsTurn(m) != want {
			t.Errorf("%s: %v %v", body, EndsTurn(m), err)
		}
	}
}

func TestAttachedSession(t *testing.T) {
	for result, want := range map[string]string{`{"sessionId":"s2"}`: "s2", `{}`: "s1", `{"sessionId":""}`: "s1", `null`: "s1"} {
		if got := AttachedSession(json.RawMessage(result), "s1"); got != want {
			t.Errorf("%s: %q, want %q", result, got, want)
		}
	}
}
