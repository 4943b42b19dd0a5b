package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// call sends one request on a raw tunnel and returns its answer (skipping events).
func call(t *testing.T, send func(string), recv func() string, id int, method string, params any) map[string]any {
	t.Helper()
	p, _ := json.Marshal(params)
	send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":%s}`, id, method, p))
	for range 50 {
		var m map[string]any
		raw := recv()
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			t.Fatalf("%s: %s", method, raw)
		}
		if v, ok := m["id"].(float64); ok && int(v) == id {
			return m
		}
	}
	t.Fatalf("%s: no answer", method)
	return nil
}

func errorOf(m map[string]any) (int, string) {
	e, ok := m["error"].(map[string]any)
	if !ok {
		return 0, ""
	}
	return int(e["code"].(float64)), e["message"].(string)
}

func TestOwnershipAcrossUsers(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	alice := env.tcpClient(t, "alice")
	s, err := alice.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "alice's secret plan"}); err != nil {
		t.Fatal(err)
	}
	id := s.SessionID
	rec, err := (&registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}).Get(ctx, id)
	if err != nil || rec == nil || rec.Owner != "alice" || rec.Tenant != "acme" {
		t.Fatalf("registry record for %s: %+v %v", id, rec, err)
	}

	// bob, same tenant, through the same edge: every call on alice's session is
	// refused with the documented error, and the CLI never sees it.
	_, send, recv := rawTunnel(t, env.EdgeURL, bearer(env.Token("bob", "acme")))
	call(t, send, recv, 1, "connect", map[string]string{})
	for i, method := range []string{"session.resume", "session.send", "session.getMessages", "session.getMetadata", "session.delete", "session.destroy", "session.abort"} {
		params := map[string]any{"sessionId": id, "prompt": "mine now", "provider": map[string]string{"type": "openai", "baseUrl": env.Model.URL, "apiKey": "x"}}
		code, msg := errorOf(call(t, send, recv, 10+i, method, params))
		if code != -32012 || msg != "access denied: no such session for this caller" {
			t.Errorf("bob %s: %d %q, want -32012 access denied", method, code, msg)
		}
	}
	list := call(t, send, recv, 30, "session.list", map[string]any{})
	if strings.Contains(fmt.Sprint(list), id) {
		t.Fatalf("bob's session.list shows alice's session: %v", list)
	}
	code, msg := errorOf(call(t, send, recv, 31, "account.logout", map[string]any{}))
	if code != -32012 || !strings.Contains(msg, `method "account.logout" is not allowed`) {
		t.Fatalf("server-wide method: %d %q (the CLI itself would answer -32601)", code, msg)
	}
	// Through the SDK too, bob's resume fails with that message.
	bob := env.tcpClient(t, "bob")
	if _, err := bob.ResumeSession(ctx, id, &copilot.ResumeSessionConfig{Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll}); err == nil ||
		!strings.Contains(err.Error(), "access denied: no such session for this caller") {
		t.Fatalf("SDK resume by bob: %v", err)
	}

	// alice still has it, with its history, and sees it listed.
	sessions, err := alice.ListSessions(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range sessions {
		found = found || m.SessionID == id
	}
	if !found {
		t.Fatalf("alice's list lacks her session %s: %v", id, sessions)
	}
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "still mine?"})
	if err != nil {
		t.Fatalf("alice after bob's attempts: %v", err)
	}
	// The session holds alice's two messages and nothing of bob's: his send never
	// reached the CLI (the double counts the user messages it was sent).
	if got := answer(t, ev); !strings.Contains(got, "(user messages: 2, first: alice's secret plan)") {
		t.Fatalf("alice's session after bob's attempts: %q, want exactly her two messages", got)
	}
	if err := alice.DeleteSession(ctx, id); err != nil {
		t.Fatal(err)
	}
	if rec, _ := (&registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}).Get(ctx, id); rec != nil {
		t.Fatalf("registry keeps a deleted session: %+v", rec)
	}

	// Creating a session under alice's chosen id: bob is refused.
	_, asend, arecv := rawTunnel(t, env.EdgeURL, bearer(env.Token("alice", "acme")))
	call(t, asend, arecv, 1, "connect", map[string]string{})
	if got := call(t, asend, arecv, 2, "session.create", map[string]any{"sessionId": "alice-chosen-id", "model": "double-1"}); got["error"] != nil {
		t.Fatalf("alice create with id: %v", got)
	}
	if code, msg := errorOf(call(t, send, recv, 40, "session.create", map[string]any{"sessionId": "alice-chosen-id", "model": "double-1"})); code != -32012 ||
		msg != "access denied: no such session for this caller" {
		t.Fatalf("bob re-creating alice's id: %d %q", code, msg)
	}
}

func upgradeStatus(t *testing.T, url string, h http.Header) (int, string) {
	t.Helper()
	// Not t.Context(): cleanups call this after the test's context has ended.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		c.CloseNow()
		return 101, ""
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestIdentityCannotBeForged(t *testing.T) {
	env := startMesh(t)
	i := env.Issuer
	now := time.Now()
	unsigned := func() string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		p, _ := json.Marshal(map[string]any{"iss": i.Issuer, "aud": i.Audience, "sub": "mallory", "tenant": "acme", "exp": now.Add(time.Hour).Unix()})
		return h + "." + base64.RawURLEncoding.EncodeToString(p) + "."
	}()
	cases := map[string]http.Header{
		"no token, own x-climesh-user": {"X-Climesh-User": {"alice"}, "X-Climesh-Tenant": {"acme"}},
		"expired":                      bearer(i.Sign(map[string]any{"iss": i.Issuer, "aud": i.Audience, "sub": "alice", "tenant": "acme", "exp": now.Add(-10 * time.Minute).Unix()})), // past Envoy's 60 s clock skew
		"unsigned":                     bearer(unsigned),
		"wrong issuer":                 bearer(i.Sign(map[string]any{"iss": "https://evil.example", "aud": i.Audience, "sub": "alice", "tenant": "acme", "exp": now.Add(time.Hour).Unix()})),
		"wrong audience":               bearer(i.Sign(map[string]any{"iss": i.Issuer, "aud": "other", "sub": "alice", "tenant": "acme", "exp": now.Add(time.Hour).Unix()})),
		"own identity assertion":       {"X-Climesh-Identity": {env.Assertion("alice", "acme", time.Minute)}},
	}
	for name, h := range cases {
		// jwt_authn answers 401 for a missing or bad token, 403 for a wrong audience.
		if code, body := upgradeStatus(t, env.EdgeURL, h); code != http.StatusUnauthorized && code != http.StatusForbidden {
			t.Errorf("%s: %d %q, want 401 or 403", name, code, body)
		}
	}

	// A valid token for mallory with x-climesh-user: alice set by the client: the
	// session belongs to mallory, and mallory is routed as mallory.
	h := bearer(env.Token("mallory", "acme"))
	h.Set("X-Climesh-User", "alice")
	_, send, recv := rawTunnel(t, env.EdgeURL, h)
	call(t, send, recv, 1, "connect", map[string]string{})
	created := call(t, send, recv, 2, "session.create", map[string]any{"model": "double-1"})
	sid, _ := created["result"].(map[string]any)["sessionId"].(string)
	rec, err := (&registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}).Get(t.Context(), sid)
	if err != nil || rec == nil || rec.Owner != "mallory" {
		t.Fatalf("session created with a forged x-climesh-user belongs to %+v (%v), want mallory", rec, err)
	}
	plain := env.tcpClient(t, "mallory")
	ps, err := plain.CreateSession(t.Context(), &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatal(err)
	}
	if env.instanceOf(t, ps.SessionID) != env.instanceOf(t, sid) {
		t.Fatal("the forged x-climesh-user header changed where mallory was routed")
	}

	// Straight to a sidecar (with the edge credential): a forged or expired
	// assertion is refused.
	sc := env.Sidecars["cli-a"]
	url := fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", sc.Port)
	forged := strings.Split(env.Assertion("alice", "acme", time.Minute), ".")
	forged[2] = base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"root","roles":["admin"],"exp":9999999999}`))
	for name, a := range map[string]string{
		"forged":  strings.Join(forged, "."),
		"expired": env.Assertion("alice", "acme", -time.Second),
		"missing": "",
	} {
		h := http.Header{"X-Climesh-Edge-Credential": {env.Credential}}
		if a != "" {
			h.Set("X-Climesh-Identity", a)
		}
		if code, body := upgradeStatus(t, url, h); code != http.StatusUnauthorized || !strings.Contains(body, "identity assertion") {
			t.Errorf("sidecar with %s assertion: %d %q, want 401 naming the assertion", name, code, body)
		}
	}
}

// TestPolicyChangesLive edits the mesh's policy data and files: decisions change
// without restart, a broken file leaves them as they were and is reported.
func TestPolicyChangesLive(t *testing.T) {
	env := startMesh(t)
	dataPath := filepath.Join(env.PolicyDir, "data.json")
	original, err := os.ReadFile(dataPath)
	if err != nil {
		t.Fatal(err)
	}
	brokenPath := filepath.Join(env.PolicyDir, "broken.rego")
	globex := bearer(env.Token("gina", "globex"))
	acme := bearer(env.Token("arno", "acme"))
	t.Cleanup(func() {
		reloaded := env.policyReloads(t, "")
		os.Remove(brokenPath)
		os.WriteFile(dataPath, original, 0o644)
		waitStatus(t, env.EdgeURL, globex, 101)
		reloaded() // every sidecar decides on the mesh's data again before the next test
	})
	if code, body := upgradeStatus(t, env.EdgeURL, globex); code != 101 {
		t.Fatalf("globex before the change: %d %s", code, body)
	}

	// The pool becomes acme's alone.
	os.WriteFile(dataPath, []byte(`{"climesh": {"pools": {"copilot": {"tenants": ["acme"]}}}}`), 0o644)
	body := waitStatus(t, env.EdgeURL, globex, 403)
	if body != `climesh: tenant "globex" may not use pool "copilot"` {
		t.Fatalf("403 body %q does not give the reason", body)
	}
	if code, _ := upgradeStatus(t, env.EdgeURL, acme); code != 101 {
		t.Fatalf("acme refused after the change: %d", code)
	}

	// A broken file: reported, and the decisions stay.
	before, _ := env.XDS.Metric("climesh_policy_reloads_total", `result="error"`)
	os.WriteFile(brokenPath, []byte("package climesh.edge\n\nallow := {\n"), 0o644)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		if n, _ := env.XDS.Metric("climesh_policy_reloads_total", `result="error"`); n <= before {
			return fmt.Errorf("broken policy not reported yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := upgradeStatus(t, env.EdgeURL, globex); code != 403 {
		t.Fatalf("a broken policy changed globex's decision to %d", code)
	}
	if code, _ := upgradeStatus(t, env.EdgeURL, acme); code != 101 {
		t.Fatalf("a broken policy changed acme's decision to %d", code)
	}
	if !strings.Contains(env.XDS.Proc.Tail(200), "broken.rego:4") {
		t.Fatal("the xds-server log does not name broken.rego:4")
	}
}

func waitStatus(t *testing.T, url string, h http.Header, want int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var body string
	err := harness.Poll(ctx, 50*time.Millisecond, func() error {
		var code int
		code, body = upgradeStatus(t, url, h)
		if code != want {
			return fmt.Errorf("status %d (%s), want %d", code, body, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}
