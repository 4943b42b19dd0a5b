package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/test/harness"
)

// chatServer runs examples/chat-server against the shared mesh and returns a
// function that posts a JSON body as the holder of token.
func (env *meshEnv) chatServer(t *testing.T) func(path, token string, body any) (int, map[string]any) {
	t.Helper()
	bin, err := harness.Binary("chat-server")
	if err != nil {
		t.Fatal(err)
	}
	connectBin, err := harness.Binary("climesh-connect")
	if err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := harness.Start(t.TempDir(), "chat-server", bin, []string{"--listen", addr, "--connect", env.ConnectAddr,
		"--edge", env.EdgeURL, "--climesh-connect", connectBin, "--model", "double-1", "--provider-url", env.Model.URL,
		"--provider-key", "double-key", "--turn-timeout", "30s"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chat-server:\n%s", p.Tail(40))
		}
		p.Stop(5 * time.Second)
	})
	if err := harness.WaitTCP(t.Context(), addr, p, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: time.Minute}
	return func(path, token string, body any) (int, map[string]any) {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+addr+path, bytes.NewReader(b))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		out := map[string]any{}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("POST %s: %d, body not JSON: %v", path, resp.StatusCode, err)
		}
		return resp.StatusCode, out
	}
}

// TestChatServerExample drives the seed's application, rebuilt in
// examples/chat-server on the Go SDK, through the whole mesh: persistent chats
// with history, ownership enforced by the mesh (not the app), an ephemeral
// analysis, and a team chat shared by the room's members.
func TestChatServerExample(t *testing.T) {
	env := startMesh(t)
	post := env.chatServer(t)
	alice, bob, carol := env.Token("chat-alice", "acme"), env.Token("chat-bob", "acme"), env.Token("chat-carol", "acme")

	if code, out := post("/api/chat/start", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("start without a token: %d %v", code, out)
	}
	code, out := post("/api/chat/start", alice, map[string]any{})
	sid, _ := out["sessionId"].(string)
	if code != http.StatusOK || sid == "" {
		t.Fatalf("start: %d %v", code, out)
	}
	if code, out := post("/api/chat/message", alice, map[string]string{"sessionId": sid}); code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["error"]), "message") {
		t.Fatalf("message without a message: %d %v", code, out)
	}
	for i, msg := range []string{"hello there", "and again"} {
		code, out := post("/api/chat/message", alice, map[string]string{"sessionId": sid, "message": msg})
		content, _ := out["content"].(string)
		if code != http.StatusOK || !strings.Contains(content, "echo: "+msg) || !strings.Contains(content, "first: hello there") {
			t.Fatalf("message %d: %d %v", i, code, out)
		}
	}
	// Bob names Alice's session: the mesh refuses it, the app only relays that.
	if code, out := post("/api/chat/message", bob, map[string]string{"sessionId": sid, "message": "let me in"}); code != http.StatusForbidden {
		t.Fatalf("bob on alice's session: %d %v, want 403", code, out)
	} else {
		t.Logf("bob on alice's session: %d %v", code, out["error"])
	}
	if code, out := post("/api/chat/end", bob, map[string]string{"sessionId": sid}); code != http.StatusForbidden {
		t.Fatalf("bob ends alice's session: %d %v, want 403", code, out)
	}
	code, out = post("/api/analyze", bob, map[string]string{"prompt": "analyze this"})
	if result, _ := out["result"].(string); code != http.StatusOK || !strings.Contains(result, "echo: analyze this") {
		t.Fatalf("analyze: %d %v", code, out)
	}
	if code, out := post("/api/chat/end", alice, map[string]string{"sessionId": sid}); code != http.StatusOK || out["success"] != true {
		t.Fatalf("end: %d %v", code, out)
	}
	for id, home := range env.Homes {
		if _, err := os.Stat(filepath.Join(home, "session-state", sid)); !os.IsNotExist(err) {
			t.Fatalf("the ended session is still on %s's disk (%v)", id, err)
		}
	}

	// Team chat: the room's members are policy data; the mesh hot-reloads it.
	room := fmt.Sprintf("team-%d", time.Now().UnixNano())
	members := filepath.Join(env.PolicyDir, "members-"+room+".json")
	data := fmt.Sprintf(`{"climesh": {"shared_sessions": {%q: {"tenant": "acme", "members": ["chat-alice", "chat-bob"]}}}}`, room)
	if err := os.WriteFile(members, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(members) })
	code, out = post("/team-chat", alice, map[string]string{"room": room, "message": "room opened"})
	if content, _ := out["content"].(string); code != http.StatusOK || !strings.Contains(content, "echo: room opened") {
		t.Fatalf("alice opens the room: %d %v", code, out)
	}
	// Bob's policy data may take a reload interval to arrive.
	var content string
	err := harness.Poll(t.Context(), 200*time.Millisecond, func() error {
		code, out := post("/team-chat", bob, map[string]string{"room": room, "message": "bob here"})
		if code != http.StatusOK {
			return fmt.Errorf("bob in the room: %d %v", code, out)
		}
		content, _ = out["content"].(string)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(content, "echo: bob here") || !strings.Contains(content, "first: room opened") {
		t.Fatalf("bob does not share the room's history: %q", content)
	}
	if code, out := post("/team-chat", carol, map[string]string{"room": room, "message": "me too"}); code != http.StatusForbidden {
		t.Fatalf("carol, not a member: %d %v, want 403", code, out)
	}
}

// TestNodeExample runs examples/node/chat.mjs (the Copilot Node SDK, pinned, with
// climesh-connect spawned over stdio) with Node against the shared mesh.
func TestNodeExample(t *testing.T) {
	env := startMesh(t)
	root, err := harness.Root()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "examples", "node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@github", "copilot-sdk")); err != nil {
		t.Fatalf("the Node example's SDK is not installed (tools/install.sh installs it): %v", err)
	}
	connectBin, err := harness.Binary("climesh-connect")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "chat.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CLIMESH_CONNECT="+connectBin, "CLIMESH_EDGE="+env.EdgeURL, "CLIMESH_TOKEN="+env.Token("node-user", "acme"),
		"MODEL=double-1", "PROVIDER_URL="+env.Model.URL, "PROVIDER_KEY=double-key")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Logf("node chat.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("node chat.mjs: %v\n%s", err, stderr.String())
	}
	var steps []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var s map[string]string
		if json.Unmarshal([]byte(line), &s) == nil && s["step"] != "" {
			steps = append(steps, s)
		}
	}
	want := []struct{ step, field, contains string }{
		{"start", "sessionId", ""},
		{"message", "content", "echo: hello from node"},
		{"message", "content", "first: hello from node"},
		{"resume", "content", "first: hello from node"},
		{"end", "sessionId", ""},
		{"analyze", "result", "echo: analyze this"},
	}
	if len(steps) != len(want) {
		t.Fatalf("%d steps, want %d", len(steps), len(want))
	}
	for i, w := range want {
		if steps[i]["step"] != w.step || steps[i][w.field] == "" || !strings.Contains(steps[i][w.field], w.contains) {
			t.Fatalf("step %d: %v, want %s with %s containing %q", i, steps[i], w.step, w.field, w.contains)
		}
	}
}
