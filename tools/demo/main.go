// Command demo runs climesh locally on its embedded defaults, with every real part
// but the language model: three climesh-sidecars each running a real Copilot CLI,
// the xds-server (static fleet, no Consul), a real Envoy that takes all of its config
// from the xds-server, climesh-connect for SDKs, a loopback model double, and the
// example chat-server (examples/chat-server) on climesh-connect. It checks that users
// are sticky (each demo user runs a real session on two client connections through
// the whole path, and both must run on the same instance, with the users spread over
// at least two instances), runs one chat through the chat-server, prints how to
// reach everything, and runs until interrupted.
//
//	go run ./tools/demo [--self-check]
//
// --self-check exits after the check (the end-to-end tests run it that way).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/test/modeldouble"
)

const (
	connectAddr = "127.0.0.1:4321"
	chatAddr    = "127.0.0.1:8080"
)

func main() {
	selfCheck := flag.Bool("self-check", false, "exit after checking the demo works")
	flag.Parse()
	if err := run(*selfCheck); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(selfCheck bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := config.Load(config.DefaultYAML())
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "climesh-demo-")
	if err != nil {
		return err
	}
	copilotBin, err := harness.Tool("copilot")
	if err != nil {
		return err
	}
	model, err := modeldouble.Start()
	if err != nil {
		return err
	}
	defer model.Close()

	// One sidecar (and its own CLI) per instance the embedded config lists.
	fmt.Println("climesh demo: starting three Copilot CLIs behind their sidecars...")
	pool, _ := cfg.Pool("demo")
	homes := map[string]string{}
	sidecars := make([]*harness.Sidecar, len(pool.Static))
	errs := make([]error, len(pool.Static))
	var wg sync.WaitGroup
	for i, s := range pool.Static {
		homes[s.ID] = filepath.Join(dir, s.ID+"-home")
		wg.Go(func() {
			sidecars[i], errs[i] = harness.StartSidecar(ctx, dir, harness.SidecarOptions{ID: s.ID, Pool: "demo", Port: s.Port,
				CLICommand: copilotBin, CLIHome: homes[s.ID]})
		})
	}
	wg.Wait()
	for _, sc := range sidecars {
		if sc != nil {
			defer sc.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	xdsBin, err := harness.Binary("xds-server")
	if err != nil {
		return err
	}
	xds, err := harness.Start(dir, "xds-server", xdsBin, nil)
	if err != nil {
		return err
	}
	defer xds.Stop(5 * time.Second)
	envoy, err := harness.StartEnvoy(ctx, dir, cfg.Server.XDSAddress, harness.EnvoyOptions{NodeID: "demo-envoy", NodeGroup: cfg.Server.DefaultNodeGroup})
	if err != nil {
		return fmt.Errorf("%w\nxds-server log:\n%s", err, xds.Tail(20))
	}
	defer envoy.Close()
	l := cfg.Listeners[0]
	edge := fmt.Sprintf("ws://%s:%d%s", l.Address, l.Port, l.Path)
	connectBin, err := harness.Binary("climesh-connect")
	if err != nil {
		return err
	}
	connect, err := harness.Start(dir, "climesh-connect", connectBin, []string{"--listen", connectAddr, "--edge", edge, "--token-as-user"})
	if err != nil {
		return err
	}
	defer connect.Stop(time.Second)
	if err := harness.WaitTCP(ctx, connectAddr, connect, 10*time.Second); err != nil {
		return err
	}

	fmt.Println("climesh demo: each user runs a session on two connections through connect → Envoy → sidecar → CLI:")
	if err := check(ctx, model.URL, homes); err != nil {
		return fmt.Errorf("%w\nenvoy log:\n%s\nxds-server log:\n%s", err, envoy.Proc.Tail(10), xds.Tail(10))
	}
	chatBin, err := harness.Binary("chat-server")
	if err != nil {
		return err
	}
	chat, err := harness.Start(dir, "chat-server", chatBin, []string{"--listen", chatAddr, "--connect", connectAddr,
		"--model", "double-1", "--provider-url", model.URL, "--provider-key", "demo"})
	if err != nil {
		return err
	}
	defer chat.Stop(5 * time.Second)
	if err := harness.WaitTCP(ctx, chatAddr, chat, 10*time.Second); err != nil {
		return err
	}
	if err := checkChat(ctx); err != nil {
		return fmt.Errorf("%w\nchat-server log:\n%s", err, chat.Tail(10))
	}
	if selfCheck {
		fmt.Println("self-check ok")
		return nil
	}
	fmt.Printf(`
climesh is running (logs in %s):
  SDK endpoint      %s   climesh-connect (TCP): URIConnection{URL: %q, ConnectionToken: "<your user>"}
  edge (Envoy)      %s   WebSocket tunnels; the user picks the instance
  xds-server        http://%s/debug/fleet   /debug/xds   /metrics   /readyz
  Envoy admin       http://%s/clusters
  model double      %s   give sessions Provider{Type: "openai", BaseURL: this, APIKey: "any"}
  chat-server       http://%s   the seed's chat app on the Go SDK (examples/chat-server)

Chat through the whole mesh (the demo trusts the bearer as the user name; no JWT issuer):
  curl -s -X POST -H 'Authorization: Bearer alice' http://%s/api/chat/start -d '{}'
  curl -s -X POST -H 'Authorization: Bearer alice' http://%s/api/chat/message \
       -d '{"sessionId": "<the id>", "message": "hello"}'

From an SDK that spawns its CLI, use climesh-connect as the CLI:
  CLIMESH_EDGE=%s CLIMESH_TOKEN=alice CLIMESH_TOKEN_AS_USER=1 bin/climesh-connect   (StdioConnection{Path: ...})

Ctrl-C stops everything.
`, dir, connectAddr, connectAddr, edge, cfg.Server.HTTPAddress, envoy.AdminAddr, model.URL, chatAddr, chatAddr, chatAddr, edge)
	<-ctx.Done()
	fmt.Println("stopping")
	return nil
}

// demoUsers are the users the self-check runs. Eight users on three instances make
// it unlikely that ring hashing puts them all on one, which would make "sticky"
// say nothing.
var demoUsers = []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"}

// check proves what the demo claims, sticky users: each user runs a session on a
// first client connection and, while that connection is still open, another on a
// new connection; Envoy picks an instance for each connection, so both sessions
// must have run on the same instance. The users together must land on at least two
// instances. It prints where each user's sessions ran.
func check(ctx context.Context, modelURL string, homes map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	placement := map[string]string{} // user -> instance
	var unsticky []error
	for _, user := range demoUsers {
		first, closeFirst, err := runSession(ctx, modelURL, homes, user, "first connection")
		if err != nil {
			return err
		}
		second, closeSecond, err := runSession(ctx, modelURL, homes, user, "second connection")
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

// runSession opens a new client connection as user, runs one turn in a new session
// and returns the instance whose CLI home holds the session's state. The returned
// func deletes the session and closes the connection.
func runSession(ctx context.Context, modelURL string, homes map[string]string, user, conn string) (string, func(), error) {
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: connectAddr, ConnectionToken: user}})
	var err error
	for range 50 { // Envoy may still be taking its first config
		if err = c.Start(ctx); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
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

// checkChat starts a chat on the chat-server as alice and sends two messages; the
// second answer must show the first (the session's history).
func checkChat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	post := func(path string, body any) (map[string]any, error) {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+chatAddr+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		out := map[string]any{}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("POST %s: %d %v %v", path, resp.StatusCode, out, err)
		}
		return out, nil
	}
	start, err := post("/api/chat/start", struct{}{})
	if err != nil {
		return err
	}
	sid, _ := start["sessionId"].(string)
	var last string
	for _, msg := range []string{"hello", "and again"} {
		out, err := post("/api/chat/message", map[string]string{"sessionId": sid, "message": msg})
		if err != nil {
			return err
		}
		last, _ = out["content"].(string)
	}
	if !strings.Contains(last, "first: hello") {
		return fmt.Errorf("the chat-server's second answer lost the history: %q", last)
	}
	fmt.Printf("  chat-server: alice's chat %s answered %q\n", sid, last)
	_, err = post("/api/chat/end", map[string]string{"sessionId": sid})
	return err
}
