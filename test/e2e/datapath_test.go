package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/test/harness"
)

// meshEnv is harness.Mesh with the helpers these tests share.
type meshEnv struct {
	*harness.Mesh
}

var (
	meshOnce sync.Once
	mesh     *meshEnv
	meshErr  error
)

// startMesh builds the environment once for every data-path test in this run:
// two instances ("cli-a" runs its CLI as a child, "cli-b" attaches to one), a
// 3-second listener idle timeout and a 1-second sidecar keepalive.
func startMesh(t *testing.T) *meshEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: needs Consul, Envoy, the CLI and the binaries (run without -short)")
	}
	meshOnce.Do(func() {
		var m *harness.Mesh
		m, meshErr = harness.StartMesh(context.Background(), harness.MeshOptions{IdleTimeout: 3 * time.Second, Keepalive: time.Second, Collab: 2, Isolated: true, Bounded: 2, Hostile: true,
			Scratch: scratchPools})
		mesh = &meshEnv{m}
	})
	if meshErr != nil {
		t.Fatal(meshErr)
	}
	return mesh
}

func TestMain(m *testing.M) {
	code := m.Run()
	if mesh != nil && mesh.Mesh != nil {
		mesh.Close()
	}
	os.Exit(code)
}

func (env *meshEnv) provider() *copilot.ProviderConfig {
	return &copilot.ProviderConfig{Type: "openai", BaseURL: env.Model.URL, APIKey: "double-key"}
}

// tcpClient is an SDK client that dials climesh-connect; its connect token is the user.
func (env *meshEnv) tcpClient(t *testing.T, user string) *copilot.Client {
	t.Helper()
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token(user, "acme")}})
	if err := c.Start(t.Context()); err != nil {
		t.Fatalf("start TCP client for %s: %v", user, err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// stdioClient is an SDK client that spawns climesh-connect as its CLI.
func (env *meshEnv) stdioClient(t *testing.T, user string) *copilot.Client {
	t.Helper()
	bin, err := harness.Binary("climesh-connect")
	if err != nil {
		t.Fatal(err)
	}
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.StdioConnection{Path: bin,
		Env: append(os.Environ(), "CLIMESH_EDGE="+env.EdgeURL, "CLIMESH_TOKEN="+env.Token(user, "acme"))}})
	if err := c.Start(t.Context()); err != nil {
		t.Fatalf("start stdio client for %s: %v", user, err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// instanceOf says which CLI holds a session, from the session state on disk.
func (env *meshEnv) instanceOf(t *testing.T, sessionID string) string {
	t.Helper()
	var found []string
	for id, home := range env.Homes {
		if _, err := os.Stat(filepath.Join(home, "session-state", sessionID)); err == nil {
			found = append(found, id)
		}
	}
	if len(found) != 1 {
		t.Fatalf("session %s is on %v, want exactly one CLI", sessionID, found)
	}
	return found[0]
}

func answer(t *testing.T, ev *copilot.SessionEvent) string {
	t.Helper()
	text, err := harness.AssistantText(ev)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

func TestDataPathSessionLifecycle(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	client := env.tcpClient(t, "lifecycle-user")
	stream := true
	s, err := client.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), Streaming: &stream,
		OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var deltas []string
	s.On(func(ev copilot.SessionEvent) {
		if d, ok := ev.Data.(*copilot.AssistantMessageDeltaData); ok {
			mu.Lock()
			deltas = append(deltas, d.DeltaContent)
			mu.Unlock()
		}
	})
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "first words"})
	if err != nil {
		t.Fatal(err)
	}
	if got := answer(t, ev); !strings.Contains(got, "echo: first words (user messages: 1") {
		t.Fatalf("first answer %q", got)
	}
	mu.Lock()
	streamed := strings.Join(deltas, "")
	mu.Unlock()
	if len(deltas) < 2 || !strings.Contains(streamed, "echo: first words") {
		t.Fatalf("answer not streamed as deltas: %q", deltas)
	}
	id := s.SessionID
	where := env.instanceOf(t, id)

	// Disconnect, stop the client, come back on a new connection and resume.
	if err := s.Disconnect(); err != nil {
		t.Fatal(err)
	}
	client.Stop()
	again := env.tcpClient(t, "lifecycle-user")
	r, err := again.ResumeSession(ctx, id, &copilot.ResumeSessionConfig{Model: "double-1", Provider: env.provider(),
		OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatalf("resume %s: %v", id, err)
	}
	ev, err = r.SendAndWait(ctx, copilot.MessageOptions{Prompt: "second words"})
	if err != nil {
		t.Fatal(err)
	}
	if got := answer(t, ev); !strings.Contains(got, "echo: second words (user messages: 2, first: first words)") {
		t.Fatalf("resumed answer %q does not carry the history", got)
	}
	if now := env.instanceOf(t, id); now != where {
		t.Fatalf("resumed on %s, created on %s", now, where)
	}
	if err := again.DeleteSession(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(env.Homes[where], "session-state", id)); !os.IsNotExist(err) {
		t.Fatalf("session %s still on disk after delete: %v", id, err)
	}
}

// TestDataPathLongSilentTurn: a turn whose model answers after 5 s, through a
// listener whose idle timeout is 3 s; the sidecar's keepalive keeps it alive.
func TestDataPathLongSilentTurn(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	client := env.tcpClient(t, "patient-user")
	s, err := client.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "slow 5000"})
	if err != nil {
		t.Fatalf("a silent 5 s turn through a 3 s idle timeout: %v", err)
	}
	if got := answer(t, ev); !strings.Contains(got, "echo: slow 5000") || time.Since(start) < 5*time.Second {
		t.Fatalf("answer %q after %v", got, time.Since(start))
	}
}

type colorArgs struct {
	Thing string `json:"thing"`
}

func TestDataPathToolCallStdio(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	client := env.stdioClient(t, "tool-user")
	var called sync.WaitGroup
	called.Add(1)
	var once sync.Once
	tool := copilot.DefineTool("lookup_color", "Tells the colour of a thing",
		func(a colorArgs, inv copilot.ToolInvocation) (string, error) {
			once.Do(called.Done)
			return "the " + a.Thing + " is ultramarine", nil
		})
	s, err := client.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(),
		Tools: []copilot.Tool{tool}, OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: `call tool lookup_color {"thing":"sky"}`})
	if err != nil {
		t.Fatal(err)
	}
	called.Wait()
	if got := answer(t, ev); !strings.Contains(got, "tool lookup_color said:") || !strings.Contains(got, "the sky is ultramarine") {
		t.Fatalf("answer %q does not carry the app's tool result", got)
	}
}

func TestDataPathStickyUsersBothModes(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	placed := map[string]string{}
	for i := range 8 {
		user := fmt.Sprintf("sticky-%d", i)
		for round, mode := range []string{"tcp", "stdio", "tcp"} {
			var c *copilot.Client
			if mode == "tcp" {
				c = env.tcpClient(t, user)
			} else {
				c = env.stdioClient(t, user)
			}
			s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			if err != nil {
				t.Fatalf("%s round %d (%s): %v", user, round, mode, err)
			}
			where := env.instanceOf(t, s.SessionID)
			if placed[user] != "" && placed[user] != where {
				t.Fatalf("%s reached %s then %s (%s mode)", user, placed[user], where, mode)
			}
			placed[user] = where
			c.DeleteSession(ctx, s.SessionID)
			c.Stop()
		}
	}
	t.Logf("users per instance: %v", spread(placed))
	if len(spread(placed)) != 2 {
		t.Fatalf("8 users all reached one instance: %v", placed)
	}
}

// rawTunnel opens a tunnel through the edge without the SDK and returns a send
// and a receive function over raw JSON-RPC bodies.
func rawTunnel(t *testing.T, url string, header http.Header) (*websocket.Conn, func(string), func() string) {
	t.Helper()
	ws, _, err := websocket.Dial(t.Context(), url, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	send := func(body string) {
		if err := ws.Write(t.Context(), websocket.MessageText, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() string {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, b, err := ws.Read(ctx)
		if err != nil {
			return "read error: " + err.Error()
		}
		return string(b)
	}
	return ws, send, recv
}

// childToken finds the token the sidecar gave its child CLI, from /proc.
func childToken(t *testing.T, home string) string {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "COPILOT_HOME="+home+"\x00") {
			continue
		}
		for _, kv := range strings.Split(string(b), "\x00") {
			if tok, ok := strings.CutPrefix(kv, "COPILOT_CONNECTION_TOKEN="); ok {
				return tok
			}
		}
	}
	t.Fatalf("no process with COPILOT_HOME=%s", home)
	return ""
}

func TestDataPathCLITokenNeverReachesClients(t *testing.T) {
	env := startMesh(t)
	tokens := []string{env.CLIs["cli-b"].Token, childToken(t, env.Homes["cli-a"])}
	reached := map[string]bool{}
	for i := range 6 {
		user := fmt.Sprintf("token-probe-%d", i)
		_, send, recv := rawTunnel(t, env.EdgeURL, http.Header{"Authorization": {"Bearer " + env.Token(user, "acme")}})
		var seen []string
		send(`{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"` + user + `"}}`)
		seen = append(seen, recv())
		send(`{"jsonrpc":"2.0","id":2,"method":"ping","params":{"message":"hi"}}`)
		seen = append(seen, recv())
		send(`{"jsonrpc":"2.0","id":3,"method":"status.get","params":{}}`)
		seen = append(seen, recv())
		if !strings.Contains(seen[0], `"protocolVersion"`) || !strings.Contains(seen[1], "pong: hi") {
			t.Fatalf("tunnel answers %q", seen)
		}
		for _, m := range seen {
			for _, tok := range tokens {
				if strings.Contains(m, tok) {
					t.Fatalf("a CLI connection token reached the client: %s", m)
				}
			}
		}
		// Which CLI? A session created here lands in one home.
		send(`{"jsonrpc":"2.0","id":4,"method":"session.create","params":{"model":"double-1"}}`)
		var created struct {
			Result struct {
				SessionID string `json:"sessionId"`
			} `json:"result"`
		}
		for created.Result.SessionID == "" {
			if err := json.Unmarshal([]byte(recv()), &created); err != nil {
				t.Fatal(err)
			}
		}
		reached[env.instanceOf(t, created.Result.SessionID)] = true
	}
	if len(reached) != 2 {
		t.Fatalf("probes reached only %v; both tokens must be checked", reached)
	}

	// The CLI itself, dialled without its token, answers nothing but an auth error.
	c, err := net.DialTimeout("tcp", env.CLIs["cli-b"].Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := jsonrpc.NewReader(c, jsonrpc.DefaultLimits)
	for i, method := range []string{"ping", "session.list", "session.create"} {
		c.Write(jsonrpc.Frame([]byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":{}}`, i, method))))
		body, err := r.Read()
		if err != nil || !strings.Contains(string(body), "-32001") {
			t.Fatalf("CLI without token answered %s with %s (%v), want -32001", method, body, err)
		}
	}

	// A sidecar dialled directly, without the edge's credential, refuses the tunnel.
	for id, sc := range env.Sidecars {
		_, resp, err := websocket.Dial(t.Context(), fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", sc.Port), nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("sidecar %s without the edge credential: %v (status %v), want 401", id, err, resp)
		}
	}
}

func TestDataPathBadInput(t *testing.T) {
	env := startMesh(t)

	t.Run("websocket message that is not JSON", func(t *testing.T) {
		ws, send, recv := rawTunnel(t, env.EdgeURL, http.Header{"Authorization": {"Bearer " + env.Token("bad-json", "acme")}})
		send("this is not json")
		got := recv()
		if !strings.Contains(got, fmt.Sprint(jsonrpc.CodeParseError)) || !strings.Contains(got, "not a JSON-RPC") {
			t.Fatalf("answer %q, want a parse error naming the problem", got)
		}
		if _, _, err := ws.Read(t.Context()); err == nil {
			t.Fatal("tunnel still open after a non-JSON message")
		}
	})

	t.Run("garbage instead of a frame", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", env.ConnectAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		body, err := jsonrpc.NewReader(c, jsonrpc.DefaultLimits).Read()
		if err != nil || !strings.Contains(string(body), "malformed frame header") {
			t.Fatalf("got %q (%v), want a JSON-RPC error naming the bad header", body, err)
		}
		// Other connections are unaffected.
		client := env.tcpClient(t, "after-garbage")
		if _, err := client.Ping(t.Context(), "still here"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("frame over the limit", func(t *testing.T) {
		p, addr, err := harness.StartConnect(t.Context(), t.TempDir(), "connect-small", env.EdgeURL, "--max-frame-bytes", "1024")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop(time.Second)
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		big := `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"message":"` + strings.Repeat("x", 2048) + `"}}`
		c.Write(jsonrpc.Frame([]byte(big)))
		body, err := jsonrpc.NewReader(c, jsonrpc.DefaultLimits).Read()
		if err != nil || !strings.Contains(string(body), "frame too large") {
			t.Fatalf("got %q (%v), want an error naming the limit", body, err)
		}
	})

	t.Run("edge unreachable from connect", func(t *testing.T) {
		port, _ := harness.FreePort() // nothing listens there
		p, addr, err := harness.StartConnect(t.Context(), t.TempDir(), "connect-nowhere", fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", port))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop(time.Second)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: addr, ConnectionToken: env.Token("someone", "acme")}})
		err = c.Start(ctx)
		if err == nil || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("SDK start through an unreachable edge: %v, want an error naming it", err)
		}
		if ctx.Err() != nil {
			t.Fatal("the SDK hung until the deadline")
		}
	})
}
