// Command demo runs climesh locally on its embedded defaults: three stand-in
// instances, the xds-server (static fleet, no Consul), and a real Envoy that takes
// all of its config from the xds-server. It checks that users stick to instances,
// prints how to reach everything, and runs until interrupted.
//
//	go run ./tools/demo [--self-check]
//
// --self-check exits after the check (the end-to-end tests run it that way).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/test/harness"
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

	// The instances the embedded config lists, on their fixed ports.
	pool, _ := cfg.Pool("demo")
	for _, s := range pool.Static {
		e, err := harness.StartEcho(s.ID, s.Port)
		if err != nil {
			return fmt.Errorf("instance %s on port %d: %w", s.ID, s.Port, err)
		}
		defer e.Close()
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
	url := fmt.Sprintf("ws://%s:%d%s", l.Address, l.Port, l.Path)
	fmt.Println("climesh demo: checking that each user sticks to one instance...")
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = harness.Poll(wctx, 50*time.Millisecond, func() error {
		_, err := harness.WhoServes(wctx, url, http.Header{"X-Climesh-User": {"probe"}})
		return err
	})
	if err != nil {
		return fmt.Errorf("envoy did not route: %w\nxds-server log:\n%s\nenvoy log:\n%s", err, xds.Tail(20), envoy.Proc.Tail(20))
	}
	seen := map[string]bool{}
	for _, user := range []string{"alice", "bob", "carol", "dave", "erin", "frank"} {
		var got []string
		for range 3 {
			id, err := harness.WhoServes(ctx, url, http.Header{"X-Climesh-User": {user}})
			if err != nil {
				return err
			}
			got = append(got, id)
		}
		if got[0] != got[1] || got[1] != got[2] {
			return fmt.Errorf("user %s reached %v: not sticky", user, got)
		}
		seen[got[0]] = true
		fmt.Printf("  %-6s -> %s (3 of 3 tunnels)\n", user, got[0])
	}
	if len(seen) < 2 {
		return errors.New("all users reached one instance: the hash is not spreading")
	}
	if selfCheck {
		fmt.Println("self-check ok")
		return nil
	}

	fmt.Printf(`
climesh is running (logs in %s):
  edge (Envoy)      %s          WebSocket tunnels; header x-climesh-user picks the instance
  xds-server        http://%s/debug/fleet   /debug/xds   /metrics   /readyz
  Envoy admin       http://%s/clusters

Try a tunnel by hand (the instance greets you with its id):
  curl -sN --http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
       -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H 'x-climesh-user: alice' \
       http://%s:%d%s --max-time 1 | strings

Ctrl-C stops everything.
`, dir, url, cfg.Server.HTTPAddress, envoy.AdminAddr, l.Address, l.Port, l.Path)
	<-ctx.Done()
	fmt.Println(strings.TrimSpace("\nstopping"))
	return nil
}
