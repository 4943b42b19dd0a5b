package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/test/harness"
)

// demoUsers are the users the self-check runs. Eight users on three instances make
// it unlikely that ring hashing puts them all on one, which would make "sticky"
// say nothing.
var demoUsers = []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"}

// check proves what the demo claims, sticky users: each user runs a session on a
// first client connection and, while that connection is still open, another on a
// new connection; Envoy picks an instance for each connection, so both sessions
// must have run on the same instance. The users together must land on at least two
// instances. It prints where each user's sessions ran.
func check(ctx context.Context, modelURL string, homes, tokens map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	placement := map[string]string{} // user -> instance
	var unsticky []error
	for _, user := range demoUsers {
		first, closeFirst, err := runSession(ctx, modelURL, homes, user, tokens[user], "first connection")
		if err != nil {
			return err
		}
		second, closeSecond, err := runSession(ctx, modelURL, homes, user, tokens[user], "second connection")
		closeFirst()
		if err != nil {
			return err
		}
		closeSecond()
		if first != second {
			fmt.Printf("  %-6s -> %s, then %s on a new connection: NOT STICKY\n", user, first, second)
			unsticky = append(unsticky, fmt.Errorf("user %s is not sticky: its first connection's session ran on %s, a new connection's session on %s", user, first, second))
			continue
		}
		fmt.Printf("  %-6s -> %s (both connections)\n", user, first)
		placement[user] = first
	}
	if err := errors.Join(unsticky...); err != nil {
		return err
	}
	used := map[string]bool{}
	for _, id := range placement {
		used[id] = true
	}
	if len(used) < 2 {
		return fmt.Errorf("all %d users ran on one instance (%s), so stickiness shows nothing; want at least 2 instances used", len(placement), formatPlacement(placement))
	}
	return nil
}

// runSession opens a new client connection with user's token, runs one turn in a
// new session and returns the instance whose CLI home holds the session's state.
// The returned func deletes the session and closes the connection.
func runSession(ctx context.Context, modelURL string, homes map[string]string, user, token, conn string) (string, func(), error) {
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: connectAddr, ConnectionToken: token}})
	// Envoy may still be taking its first config.
	startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := harness.Poll(startCtx, 200*time.Millisecond, func() error { return c.Start(ctx) })
	cancel()
	if err != nil {
		return "", nil, fmt.Errorf("%s, %s: %w", user, conn, err)
	}
	s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", OnPermissionRequest: copilot.PermissionHandler.ApproveAll,
		Provider: &copilot.ProviderConfig{Type: "openai", BaseURL: modelURL, APIKey: "demo"}})
	if err != nil {
		c.Stop()
		return "", nil, fmt.Errorf("%s, %s: create session: %w", user, conn, err)
	}
	closeFn := func() {
		c.DeleteSession(ctx, s.SessionID)
		c.Stop()
	}
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "hello from " + user})
	if err != nil {
		closeFn()
		return "", nil, fmt.Errorf("%s, %s: session %s: %w", user, conn, s.SessionID, err)
	}
	if d, ok := ev.Data.(*copilot.AssistantMessageData); !ok || d.Content == "" {
		closeFn()
		return "", nil, fmt.Errorf("%s, %s: session %s: no assistant answer (got %v)", user, conn, s.SessionID, ev.Data)
	}
	var where []string
	for id, home := range homes {
		if _, err := os.Stat(filepath.Join(home, "session-state", s.SessionID)); err == nil {
			where = append(where, id)
		}
	}
	if len(where) != 1 {
		closeFn()
		return "", nil, fmt.Errorf("%s, %s: session %s has state on %d instances %v, want exactly 1", user, conn, s.SessionID, len(where), where)
	}
	return where[0], closeFn, nil
}

// formatPlacement lists user -> instance in a stable order.
func formatPlacement(placement map[string]string) string {
	var parts []string
	for _, user := range slices.Sorted(maps.Keys(placement)) {
		parts = append(parts, user+" -> "+placement[user])
	}
	return strings.Join(parts, ", ")
}

// chatClient posts JSON to the chat-server as the holder of a token.
type chatClient struct{ ctx context.Context }

// post returns the status, the decoded answer and the raw body.
func (c chatClient) post(token, path string, body any) (int, map[string]any, string, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(c.ctx, http.MethodPost, "http://"+chatAddr+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, "", err
	}
	out := map[string]any{}
	if err := json.Unmarshal(raw, &out); err != nil {
		return 0, nil, "", fmt.Errorf("POST %s: %d, body not JSON: %q", path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out, strings.TrimSpace(string(raw)), nil
}

// ok is post that wants a 200.
func (c chatClient) ok(token, path string, body any) (map[string]any, error) {
	code, out, raw, err := c.post(token, path, body)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("POST %s: %d %s", path, code, raw)
	}
	return out, err
}

// refusedAnswer is what the shipped policy answers for a session that is not the
// caller's (the same words as for one that does not exist).
const refusedAnswer = "access denied: no such session for this caller"

// checkChat runs alice's chat on the chat-server: a start and two messages, the
// second answer showing the first (the session's history). Then bob, with his own
// token, names alice's session: the mesh must refuse him (403 from the app, the
// policy's refusal underneath), and alice's chat must go on with its history.
func checkChat(ctx context.Context, tokens map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c := chatClient{ctx}
	alice, bob := tokens["alice"], tokens["bob"]
	start, err := c.ok(alice, "/api/chat/start", struct{}{})
	if err != nil {
		return err
	}
	sid, _ := start["sessionId"].(string)
	say := func(msg string) (string, error) {
		out, err := c.ok(alice, "/api/chat/message", map[string]string{"sessionId": sid, "message": msg})
		content, _ := out["content"].(string)
		return content, err
	}
	var last string
	for _, msg := range []string{"hello", "and again"} {
		if last, err = say(msg); err != nil {
			return err
		}
	}
	if !strings.Contains(last, "first: hello") {
		return fmt.Errorf("the chat-server's second answer lost the history: %q", last)
	}
	fmt.Printf("  alice's chat %s answered %q\n", sid, last)

	code, out, raw, err := c.post(bob, "/api/chat/message", map[string]string{"sessionId": sid, "message": "let me in"})
	if err != nil {
		return err
	}
	if msg, _ := out["error"].(string); code != http.StatusForbidden || !strings.Contains(msg, refusedAnswer) {
		return fmt.Errorf("bob on alice's chat: %d %s, want 403 with the policy's %q", code, raw, refusedAnswer)
	}
	fmt.Printf("  bob on alice's chat: REFUSED %d %s\n", code, raw)

	if last, err = say("still mine?"); err != nil {
		return fmt.Errorf("alice's chat after bob's attempt: %w", err)
	}
	if !strings.Contains(last, "first: hello") || !strings.Contains(last, "user messages: 3") {
		return fmt.Errorf("alice's chat after bob's attempt lost its history or took bob's message: %q", last)
	}
	fmt.Printf("  alice's chat after that answered %q\n", last)
	_, err = c.ok(alice, "/api/chat/end", map[string]string{"sessionId": sid})
	return err
}
