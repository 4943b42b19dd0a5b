package e2e

// This file sorts late: it adds a fourth "durable" instance to the shared mesh.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

// TestScaleOutUnderLoad: users keep taking turns while a fourth instance joins a
// pool with shared session storage. No turn fails; new connections of about a
// quarter of the users move to the new instance.
func TestScaleOutUnderLoad(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	reg := &registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}
	const n = 16
	type user struct {
		name    string
		session *copilot.Session
	}
	users := make([]*user, n)
	for i := range users {
		u := &user{name: fmt.Sprintf("so-%02d", i)}
		u.session = env.durableSession(ctx, t, u.name)
		users[i] = u
	}
	// where opens a new connection for user and reports the instance it reaches.
	where := func(name string) string {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token(name, "durable")}})
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer c.Stop()
		s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
		if err != nil {
			t.Fatal(err)
		}
		defer c.DeleteSession(ctx, s.SessionID)
		rec, _ := reg.Get(ctx, s.SessionID)
		return rec.Instance
	}
	before := map[string]string{}
	for _, u := range users {
		before[u.name] = where(u.name)
	}

	// Load: every user takes turns until the scale-out is done.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var turns, failures atomic.Int64
	for _, u := range users {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := ownTurn(ctx, u.session, fmt.Sprintf("load %d of %s", i, u.name)); err != nil {
					failures.Add(1)
					t.Errorf("%s turn %d during the scale-out: %v", u.name, i, err)
					return
				}
				turns.Add(1)
			}
		})
	}
	copilotBin, err := harness.Tool("copilot")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := harness.StartSidecar(ctx, t.TempDir(), harness.SidecarOptions{ID: "durable-3", Pool: "durable", ConsulAddr: env.Consul.Addr,
		CLICommand: copilotBin, CLIHome: env.DurableHome, Extra: env.SidecarArgs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Close)
	env.Sidecars["durable-3"] = sc
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		hosts, err := env.Envoy.Hosts("pool/durable")
		if err != nil {
			return err
		}
		for _, h := range hosts {
			if h.Hostname == "durable-3" && h.Health == "HEALTHY" {
				return nil
			}
		}
		return fmt.Errorf("durable-3 not routed yet")
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // a second of load with the new instance in the ring
	close(stop)
	wg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d turns failed during the scale-out", failures.Load())
	}

	moved, toNew := 0, 0
	for _, u := range users {
		now := where(u.name)
		if now != before[u.name] {
			moved++
			if now == "durable-3" {
				toNew++
			}
		}
	}
	t.Logf("scale-out 3 -> 4 under load: %d turns, none failed; %d of %d users' new connections moved (%d to the new instance)", turns.Load(), moved, n, toNew)
	if moved != toNew {
		t.Fatalf("%d users moved between old instances", moved-toNew)
	}
}
