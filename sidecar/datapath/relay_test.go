package datapath

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/tunnel"
	"github.com/climesh/climesh/tunnel/tunneltest"
)

// fakeCLI speaks the CLI's wire format: it wants `connect {token}` first, answers
// ping, and on "ask" sends the client a request of its own and reports the answer.
type fakeCLI struct {
	addr, token string
	mu          sync.Mutex
	seen        []string // methods received
	resumes     []string // params of every session.resume
}

func startFakeCLI(t *testing.T, token string) *fakeCLI {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f := &fakeCLI{addr: l.Addr().String(), token: token}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fakeCLI) methods() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

func (f *fakeCLI) serve(c net.Conn) {
	defer c.Close()
	r := jsonrpc.NewReader(c, jsonrpc.DefaultLimits)
	authed := false
	loaded := map[string]bool{} // this connection's sessions, as the CLI holds them
	newID := 0
	for {
		body, err := r.Read()
		if err != nil {
			return
		}
		m, err := jsonrpc.ParseTrusted(body)
		if err != nil {
			return
		}
		if m.Kind == jsonrpc.Request {
			f.mu.Lock()
			f.seen = append(f.seen, m.Method)
			f.mu.Unlock()
		}
		var out []byte
		switch {
		case m.Kind == jsonrpc.Request && m.Method == "connect":
			var p struct {
				Params struct{ Token string } `json:"params"`
			}
			json.Unmarshal(body, &p)
			if p.Params.Token != f.token {
				out = jsonrpc.ErrorResponse(m.ID, -32002, "AUTHENTICATION_FAILED", nil)
			} else {
				authed = true
				out, _ = jsonrpc.ResultResponse(m.ID, map[string]any{"ok": true, "protocolVersion": 3})
			}
		case !authed:
			out = jsonrpc.ErrorResponse(m.ID, -32001, "AUTHENTICATION_REQUIRED", nil)
		case m.Method == "ping":
			out, _ = jsonrpc.ResultResponse(m.ID, map[string]string{"message": "pong"})
		case m.Method == "session.create" || m.Method == "session.resume":
			id := m.SessionID
			if id == "" {
				newID++
				id = "gen-" + string(rune('0'+newID))
			}
			if m.Method == "session.resume" {
				var p struct {
					Params json.RawMessage `json:"params"`
				}
				json.Unmarshal(body, &p)
				f.mu.Lock()
				f.resumes = append(f.resumes, string(p.Params))
				f.mu.Unlock()
			}
			loaded[id] = true
			out, _ = jsonrpc.ResultResponse(m.ID, map[string]string{"sessionId": id})
		case m.Method == "session.destroy":
			delete(loaded, m.SessionID)
			out, _ = jsonrpc.ResultResponse(m.ID, struct{}{})
		case m.Method == "session.send":
			if !loaded[m.SessionID] {
				out = jsonrpc.ErrorResponse(m.ID, -32603, "Session not found: "+m.SessionID, nil)
			} else {
				out, _ = jsonrpc.ResultResponse(m.ID, map[string]string{"messageId": "m-" + m.SessionID})
			}
		case m.Method == "ask":
			out, _ = jsonrpc.RequestBody("srv-1", "tool.call", map[string]string{"sessionId": "s1"})
		case m.Kind == jsonrpc.Response:
			out, _ = jsonrpc.RequestBody(nil, "session.event", json.RawMessage(`{"sessionId":"s1","answer":`+string(body)+`}`))
		default:
			out = jsonrpc.ErrorResponse(m.ID, -32601, "unknown method", nil)
		}
		if _, err := c.Write(jsonrpc.Frame(out)); err != nil {
			return
		}
	}
}

func startRelay(t *testing.T, cliAddr, token, credential string) (*Relay, string) {
	t.Helper()
	rl := NewRelay(zap.NewNop(), CLIDialer{Addr: cliAddr, Token: token, Limits: jsonrpc.DefaultLimits}, jsonrpc.DefaultLimits, prometheus.NewRegistry())
	if credential != "" {
		rl.EdgeCredential = NewCredentials(credential)
	}
	return rl, tunneltest.Serve(t, rl)
}

func dialRelay(t *testing.T, url string, h http.Header) *tunnel.Conn {
	t.Helper()
	c, err := tunnel.Dial(t.Context(), url, h, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close("") })
	return c
}

func exchange(t *testing.T, c *tunnel.Conn, send string) string {
	t.Helper()
	if send != "" {
		if err := c.Write(t.Context(), []byte(send)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	b, err := c.Read(ctx)
	if err != nil {
		return "error: " + err.Error()
	}
	return string(b)
}

const cred = "a-credential-of-enough-length"

func TestRelayBothWays(t *testing.T) {
	cli := startFakeCLI(t, "cli-secret")
	_, url := startRelay(t, cli.addr, "cli-secret", cred)
	c := dialRelay(t, url, http.Header{"X-Climesh-Edge-Credential": {cred}})

	got := exchange(t, c, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"user-token"}}`)
	if !strings.Contains(got, `"protocolVersion":3`) || strings.Contains(got, "cli-secret") {
		t.Fatalf("connect answered %s", got)
	}
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":2,"method":"ping","params":{}}`); !strings.Contains(got, "pong") {
		t.Fatalf("ping answered %s", got)
	}
	// The CLI's own request reaches the client; the client's answer reaches the CLI.
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":3,"method":"ask"}`); !strings.Contains(got, `"method":"tool.call"`) {
		t.Fatalf("server request not relayed: %s", got)
	}
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":"srv-1","result":{"text":"42"}}`); !strings.Contains(got, `"text":"42"`) {
		t.Fatalf("client answer not relayed back: %s", got)
	}
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":4,"method":"runtime.shutdown"}`); !strings.Contains(got, `"id":4,"result":{}`) {
		t.Fatalf("runtime.shutdown answered %s", got)
	}
	for _, m := range cli.methods() {
		if m == "runtime.shutdown" {
			t.Fatal("runtime.shutdown reached the shared CLI")
		}
	}
	if n := strings.Count(strings.Join(cli.methods(), ","), "connect"); n != 1 {
		t.Fatalf("the CLI saw %d connects (want only the sidecar's): %v", n, cli.methods())
	}
}

func TestRelayRefusals(t *testing.T) {
	cli := startFakeCLI(t, "cli-secret")
	_, url := startRelay(t, cli.addr, "cli-secret", cred)

	for name, h := range map[string]http.Header{"none": nil, "wrong": {"X-Climesh-Edge-Credential": {"nope"}}} {
		_, err := tunnel.Dial(t.Context(), url, h, 1<<20)
		var refused *tunnel.RefusedError
		if !errorsAs(err, &refused) || refused.Status != http.StatusUnauthorized {
			t.Fatalf("%s credential: %v, want 401", name, err)
		}
	}

	c := dialRelay(t, url, http.Header{"X-Climesh-Edge-Credential": {cred}})
	if got := exchange(t, c, `not json`); !strings.Contains(got, "-32700") {
		t.Fatalf("non-JSON answered %s", got)
	}
	if got := exchange(t, c, ""); !strings.HasPrefix(got, "error:") {
		t.Fatalf("tunnel still open after a non-JSON message: %s", got)
	}

	// A CLI that is down: the first request is answered with the cause.
	_, downURL := startRelay(t, "127.0.0.1:1", "x", "")
	d := dialRelay(t, downURL, nil)
	if got := exchange(t, d, `{"jsonrpc":"2.0","id":7,"method":"ping"}`); !strings.Contains(got, "-32010") || !strings.Contains(got, "copilot CLI unreachable at 127.0.0.1:1") {
		t.Fatalf("CLI down answered %s", got)
	}

	// A wrong CLI token is reported as such.
	_, badURL := startRelay(t, cli.addr, "not-the-token", "")
	b := dialRelay(t, badURL, nil)
	if got := exchange(t, b, `{"jsonrpc":"2.0","id":8,"method":"ping"}`); !strings.Contains(got, "refused the sidecar's token") {
		t.Fatalf("wrong token answered %s", got)
	}
}

func errorsAs(err error, target **tunnel.RefusedError) bool { return errors.As(err, target) }

func TestRelayTunnelsPerUser(t *testing.T) {
	cli := startFakeCLI(t, "cli-secret")
	rl, url := startRelay(t, cli.addr, "cli-secret", cred)
	rl.MaxTunnelsPerUser = 2
	h := http.Header{"X-Climesh-Edge-Credential": {cred}}
	for range 2 {
		dialRelay(t, url, h)
	}
	_, err := tunnel.Dial(t.Context(), url, h, 1<<20)
	var refused *tunnel.RefusedError
	if !errors.As(err, &refused) || refused.Status != http.StatusTooManyRequests {
		t.Fatalf("a third tunnel of one user: %v, want 429", err)
	}
}

// A turn that runs past TurnTimeout (the fake CLI never ends a turn, as with a
// model that hangs) is aborted at the CLI and ended for the client with a
// session.error that says why; the CLI's answer to the abort goes no further,
// and the turn no longer counts as running.
func TestRelayTurnTimeout(t *testing.T) {
	cli := startFakeCLI(t, "cli-secret")
	rl, url := startRelay(t, cli.addr, "cli-secret", cred)
	rl.TurnTimeout = 300 * time.Millisecond
	c := dialRelay(t, url, http.Header{"X-Climesh-Edge-Credential": {cred}})
	exchange(t, c, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"user-token"}}`)
	exchange(t, c, `{"jsonrpc":"2.0","id":2,"method":"session.create","params":{}}`)
	start := time.Now()
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":3,"method":"session.send","params":{"sessionId":"gen-1","prompt":"hang"}}`); !strings.Contains(got, `"messageId"`) {
		t.Fatalf("send answered %s", got)
	}
	got := exchange(t, c, "")
	took := time.Since(start)
	if !strings.Contains(got, `"type":"session.error"`) || !strings.Contains(got, `"errorType":"timeout"`) ||
		!strings.Contains(got, `"sessionId":"gen-1"`) || !strings.Contains(got, "--turn-timeout (300ms)") {
		t.Fatalf("after the timeout the client got %s", got)
	}
	if took < 300*time.Millisecond || took > 3*time.Second {
		t.Fatalf("the turn ended after %v, want about 300ms", took)
	}
	for deadline := time.Now().Add(2 * time.Second); !slices.Contains(cli.methods(), "session.abort"); {
		if time.Now().After(deadline) {
			t.Fatalf("the CLI was not asked to abort: %v", cli.methods())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":4,"method":"ping","params":{}}`); !strings.Contains(got, `"id":4`) || !strings.Contains(got, "pong") {
		t.Fatalf("the next frame after the timeout was %s (the abort's answer leaked, or the tunnel broke)", got)
	}
	if n := rl.turns.Running(); n != 0 {
		t.Fatalf("%d turns still counted as running", n)
	}
}
