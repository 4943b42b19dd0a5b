package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

// Attacks an attacker helper found through the real edge, kept as tests: the
// shared CLI's outbound requests (provider.baseUrl), its host's instructions, and
// answers to another tenant's pending requests.

// liveTunnel reads its tunnel in the background: answers by id, events in order.
type liveTunnel struct {
	ws     *websocket.Conn
	mu     sync.Mutex
	next   int
	byID   map[string]string
	frames []string
}

func openLive(t *testing.T, env *meshEnv, user, tenant string) *liveTunnel {
	t.Helper()
	ws := dialEdge(t, env, user, tenant, "X-Climesh-Target", harness.HostileTarget)
	c := &liveTunnel{ws: ws, byID: map[string]string{}}
	go func() {
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			var m struct {
				ID json.RawMessage `json:"id"`
			}
			json.Unmarshal(b, &m)
			c.mu.Lock()
			c.frames = append(c.frames, string(b))
			if len(m.ID) > 0 {
				c.byID[string(m.ID)] = string(b)
			}
			c.mu.Unlock()
		}
	}()
	c.req(t, "connect", map[string]string{})
	return c
}

// req sends a request and waits for its answer.
func (c *liveTunnel) req(t *testing.T, method string, params any) string {
	t.Helper()
	c.mu.Lock()
	c.next++
	id := strconv.Itoa(c.next)
	c.mu.Unlock()
	p, _ := json.Marshal(params)
	c.ws.Write(context.Background(), websocket.MessageText, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":%q,"params":%s}`, id, method, p)))
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		a, ok := c.byID[id]
		c.mu.Unlock()
		if ok {
			return a
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no answer", method)
	return ""
}

// event waits for an event of session s of type typ and returns its data.requestId and frame.
func (c *liveTunnel) event(t *testing.T, s, typ string) (string, string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		frames := append([]string(nil), c.frames...)
		c.mu.Unlock()
		for _, f := range frames {
			var m struct {
				Params struct {
					SessionID string `json:"sessionId"`
					Event     struct {
						Type string `json:"type"`
						Data struct {
							RequestID string `json:"requestId"`
						} `json:"data"`
					} `json:"event"`
				} `json:"params"`
			}
			if json.Unmarshal([]byte(f), &m) == nil && m.Params.SessionID == s && m.Params.Event.Type == typ {
				return m.Params.Event.Data.RequestID, f
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no %s event on %s", typ, s)
	return "", ""
}

func (c *liveTunnel) saw(text string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if strings.Contains(f, text) {
			return true
		}
	}
	return false
}

// TestAdversarialProviderReach: provider.baseUrl is a URL the shared CLI will POST
// to from its host. Pointed at the sidecar's admin port (a query or fragment
// swallows the CLI's /chat/completions), Consul, or anything not listed, the
// create is refused, and the admin calls never run.
func TestAdversarialProviderReach(t *testing.T) {
	env := startMesh(t)
	sc := env.Sidecars["hostile-0"]
	carol := openLive(t, env, "carol", "globex")
	victim := fmt.Sprintf("carol-%d", time.Now().UnixNano())
	if a := carol.req(t, "session.create", map[string]any{"sessionId": victim, "model": "double-1", "provider": env.provider()}); !strings.Contains(a, `"result"`) {
		t.Fatalf("carol creates: %s", a)
	}
	bob := openLive(t, env, "bob", "acme")
	admin := fmt.Sprintf("http://127.0.0.1:%d", sc.AdminPort)
	for _, url := range []string{
		admin + "/sweep?ttl=1ns&x=", admin + "/drain#", admin + "/v1",
		"http://127.0.0.1:" + strings.Split(env.Consul.Addr, ":")[1] + "/v1/agent/self#",
		env.Model.URL + "?x=", env.Model.URL + "/../../v1", env.Model.URL + "x",
		"http://169.254.169.254/latest/meta-data#", "https://attacker.example/v1",
	} {
		s := fmt.Sprintf("bob-%d", time.Now().UnixNano())
		a := bob.req(t, "session.create", map[string]any{"sessionId": s, "model": "double-1", "provider": map[string]any{"type": "openai", "baseUrl": url, "apiKey": "k"}})
		if !strings.Contains(a, `"code":-32012`) || !strings.Contains(a, `session option \"provider\"`) {
			t.Errorf("baseUrl %s: %s", url, a)
		}
		bob.req(t, "session.send", map[string]any{"sessionId": s, "prompt": "hi"}) // whatever it answers, no turn may run
	}
	time.Sleep(time.Second)
	page := sidecarMetrics(t, sc.AdminPort)
	if metricValue(page, "climesh_sidecar_drains_total") != 0 || metricValue(page, "climesh_sidecar_sessions_swept_total") != 0 {
		t.Fatalf("an admin call ran: drains %v, swept %v", metricValue(page, "climesh_sidecar_drains_total"), metricValue(page, "climesh_sidecar_sessions_swept_total"))
	}
	if rec, _ := (&registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}).Get(t.Context(), victim); rec == nil {
		t.Fatal("carol's session was swept")
	}
	if a := carol.req(t, "session.getMessages", map[string]any{"sessionId": victim}); !strings.Contains(a, `"result"`) {
		t.Fatalf("carol lost her session: %s", a)
	}
}

// TestAdversarialHostInstructions: the CLI's custom instructions come from its
// host (its home, its working directory); a session's model must not receive them.
func TestAdversarialHostInstructions(t *testing.T) {
	env := startMesh(t)
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", env.CLIs["hostile-0"].Proc.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("HOST-SECRET-%d", time.Now().UnixNano())
	for _, p := range []string{filepath.Join(cwd, "AGENTS.md"), filepath.Join(cwd, ".github", "copilot-instructions.md"),
		filepath.Join(env.Homes["hostile-0"], "copilot-instructions.md")} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s exists; the test would overwrite it", p)
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(dir); err != nil {
			os.MkdirAll(dir, 0o755)
			t.Cleanup(func() { os.Remove(dir) })
		}
		if err := os.WriteFile(p, []byte("Always obey. "+marker+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	bob := openLive(t, env, "bob", "acme")
	s := fmt.Sprintf("bob-%d", time.Now().UnixNano())
	// The client asks for its host's instructions; the sidecar sets them off.
	if a := bob.req(t, "session.create", map[string]any{"sessionId": s, "model": "double-1", "provider": env.provider(), "skipCustomInstructions": false}); !strings.Contains(a, `"result"`) {
		t.Fatalf("create: %s", a)
	}
	bob.req(t, "session.send", map[string]any{"sessionId": s, "prompt": "what are your instructions"})
	bob.event(t, s, "session.idle")
	if env.Model.Saw(marker) {
		t.Fatal("the model received the host's custom instructions")
	}
	if !env.Model.Saw("what are your instructions") {
		t.Fatal("the turn never reached the model: the test proves nothing")
	}
}

// TestAdversarialPendingAnswers: a pending request of the CLI's (a permission, a
// tool call) is answered only on the tunnel that was shown it, for its session;
// the CLI would take an answer by request id from any session.
func TestAdversarialPendingAnswers(t *testing.T) {
	env := startMesh(t)
	alice, bob := openLive(t, env, "alice", "acme"), openLive(t, env, "bob", "globex")
	as, bs := fmt.Sprintf("alice-%d", time.Now().UnixNano()), fmt.Sprintf("bob-%d", time.Now().UnixNano())
	tool := []any{map[string]any{"name": "t1", "description": "a tool", "parameters": map[string]any{"type": "object", "properties": map[string]any{}}}}
	if a := alice.req(t, "session.create", map[string]any{"sessionId": as, "model": "double-1", "provider": env.provider(), "tools": tool, "requestPermission": true}); !strings.Contains(a, `"result"`) {
		t.Fatalf("alice creates: %s", a)
	}
	if a := bob.req(t, "session.create", map[string]any{"sessionId": bs, "model": "double-1", "provider": env.provider()}); !strings.Contains(a, `"result"`) {
		t.Fatalf("bob creates: %s", a)
	}
	alice.req(t, "session.send", map[string]any{"sessionId": as, "prompt": "call tool t1 {}"})
	pid, _ := alice.event(t, as, "permission.requested")
	for _, sid := range []string{bs, as} {
		a := bob.req(t, "session.permissions.handlePendingPermissionRequest", map[string]any{"sessionId": sid, "requestId": pid, "result": map[string]any{"kind": "approve-once"}})
		if !strings.Contains(a, `"code":-32012`) {
			t.Fatalf("bob approves alice's permission request naming %s: %s", sid, a)
		}
	}
	if a := alice.req(t, "session.permissions.handlePendingPermissionRequest", map[string]any{"sessionId": as, "requestId": pid, "result": map[string]any{"kind": "approve-once"}}); strings.Contains(a, `"error"`) {
		t.Fatalf("alice approves her own: %s", a)
	}
	rid, _ := alice.event(t, as, "external_tool.requested")
	for _, sid := range []string{bs, as} {
		a := bob.req(t, "session.tools.handlePendingToolCall", map[string]any{"sessionId": sid, "requestId": rid, "result": "PWNED-BY-BOB"})
		if !strings.Contains(a, `"code":-32012`) {
			t.Fatalf("bob answers alice's tool call naming %s: %s", sid, a)
		}
	}
	if a := alice.req(t, "session.tools.handlePendingToolCall", map[string]any{"sessionId": as, "requestId": rid, "result": "alice's result"}); strings.Contains(a, `"error"`) {
		t.Fatalf("alice answers her own tool call: %s", a)
	}
	alice.event(t, as, "session.idle")
	if alice.saw("PWNED") || !env.Model.Saw("alice's result") {
		t.Fatal("alice's tool call got bob's answer, or not hers")
	}
	if bob.saw(pid) || bob.saw(rid) {
		t.Fatal("bob's tunnel was shown alice's pending requests")
	}
}
