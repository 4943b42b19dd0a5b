// Command demo runs climesh locally on its embedded defaults, in the production
// shape, with every real part but the language model: three climesh-sidecars each
// running a real Copilot CLI and checking every message against the shipped policy,
// the xds-server (static fleet, no Consul) with the same policy at the edge, a real
// Envoy that takes all of its config from the xds-server and verifies a JWT on every
// tunnel, climesh-connect for SDKs, a loopback model double, and the example
// chat-server (examples/chat-server) on climesh-connect.
//
// The demo is its own JWT issuer: it makes a signing key, writes the JWKS the
// embedded config reads, and mints a token per demo user into <dir>/tokens/<user>.jwt.
// It also makes the edge credential and the identity keys the config names, and
// runs the xds-server in that directory.
//
// It checks that users are sticky (each demo user runs a real session on two client
// connections through the whole path, and both must run on the same instance, with
// the users spread over at least two instances), runs alice's chat through the
// chat-server, sees bob refused on it, prints how to reach everything, and runs
// until interrupted.
//
//	go run ./tools/demo [--self-check]
//
// --self-check exits after the checks (the end-to-end tests run it that way).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *selfCheck)
	interrupted := ctx.Err() != nil // before stop(), which ends ctx too
	stop()
	switch {
	case err != nil && interrupted:
		// Ctrl-C while starting or checking: what failed failed because of it.
		fmt.Println("interrupted")
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// run starts everything, checks it and, unless selfCheck, serves until ctx ends
// (Ctrl-C); everything it started is stopped before it returns.
func run(ctx context.Context, selfCheck bool) error {
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
	creds, err := writeCredentials(dir, cfg, demoUsers, model.URL)
	if err != nil {
		return err
	}

	// One sidecar (and its own CLI) per instance the embedded config lists, each
	// on the config's policy, plus the data naming the model double.
	fmt.Println("climesh demo: starting three Copilot CLIs behind their sidecars...")
	pool, _ := cfg.Pool("demo")
	sidecarArgs := []string{"--edge-credential-file", creds.EdgeCredentialFile, "--identity-keys", creds.IdentityKeysFile,
		"--policy", cfg.Policy.Source, "--policy-data", creds.DataFile}
	homes := map[string]string{}
	sidecars := make([]*harness.Sidecar, len(pool.Static))
	errs := make([]error, len(pool.Static))
	var wg sync.WaitGroup
	for i, s := range pool.Static {
		homes[s.ID] = filepath.Join(dir, s.ID+"-home")
		wg.Go(func() {
			sidecars[i], errs[i] = harness.StartSidecar(ctx, dir, harness.SidecarOptions{ID: s.ID, Pool: "demo", Port: s.Port,
				CLICommand: copilotBin, CLIHome: homes[s.ID], Extra: sidecarArgs})
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
	// No --config: the embedded default, whose files are in dir.
	xds, err := harness.StartIn(dir, dir, "xds-server", xdsBin, nil)
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
	connect, err := harness.Start(dir, "climesh-connect", connectBin, []string{"--listen", connectAddr, "--edge", edge})
	if err != nil {
		return err
	}
	defer connect.Stop(time.Second)
	if err := harness.WaitTCP(ctx, connectAddr, connect, 10*time.Second); err != nil {
		return err
	}

	fmt.Println("climesh demo: each user runs a session on two connections through connect → Envoy (JWT, policy) → sidecar (policy) → CLI:")
	if err := check(ctx, model.URL, homes, creds.Tokens); err != nil {
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
	fmt.Println("climesh demo: the chat-server, each caller with their own token:")
	if err := checkChat(ctx, creds.Tokens); err != nil {
		return fmt.Errorf("%w\nchat-server log:\n%s", err, chat.Tail(10))
	}
	if selfCheck {
		fmt.Println("self-check ok")
		return nil
	}
	fmt.Printf(`
climesh is running (logs, keys and tokens in %[1]s):
  SDK endpoint      %[2]s   climesh-connect (TCP): URIConnection{URL: %[2]q, ConnectionToken: <a JWT>}
  edge (Envoy)      %[3]s   WebSocket tunnels: JWT verified, then the policy (ext_authz)
  xds-server        http://%[4]s/debug/fleet   /debug/xds   /metrics   /readyz
  Envoy admin       http://%[5]s/clusters
  model double      %[6]s   sessions may name it: Provider{Type: "openai", BaseURL: this, APIKey: "any"}
  chat-server       http://%[7]s   the seed's chat app on the Go SDK (examples/chat-server)

Tokens: the demo is the JWT issuer; one token per user (tenant %[8]q, valid %.0[9]fh):
  %[1]s/tokens/{%[10]s}.jwt

Chat as alice through the whole mesh:
  TOKEN=$(cat %[1]s/tokens/alice.jwt)
  curl -s -X POST -H "Authorization: Bearer $TOKEN" http://%[7]s/api/chat/start -d '{}'
  curl -s -X POST -H "Authorization: Bearer $TOKEN" http://%[7]s/api/chat/message \
       -d '{"sessionId": "<the id>", "message": "hello"}'

bob naming alice's session is refused by the policy (403):
  curl -s -X POST -H "Authorization: Bearer $(cat %[1]s/tokens/bob.jwt)" http://%[7]s/api/chat/message \
       -d '{"sessionId": "<the id alice got>", "message": "let me in"}'

From an SDK that spawns its CLI, use climesh-connect as the CLI:
  CLIMESH_EDGE=%[3]s CLIMESH_TOKEN=$TOKEN bin/climesh-connect   (make build; StdioConnection{Path: ...})

Ctrl-C stops everything.
`, dir, connectAddr, edge, cfg.Server.HTTPAddress, envoy.AdminAddr, model.URL, chatAddr, demoTenant, tokenTTL.Hours(), strings.Join(demoUsers, ","))
	<-ctx.Done()
	fmt.Println("stopping")
	return nil
}
