package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"
	"github.com/hashicorp/consul/api"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/test/harness"
)

// TestDataPathCLIDown stops the CLI behind one instance of a pool without
// shared session storage (each sidecar attached to a CLI of its own). A session
// that lived there cannot be resumed on the other instance: its app gets a
// session.error event saying so, and its client still works (a new session, a
// turn, on the other instance).
func TestDataPathCLIDown(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pool := env.startPool(ctx, t, "nostore", harness.PoolOptions{Instances: 2, Attach: true})
	const down, other = "nostore-1", "nostore-0"
	reg := env.registry()
	var client *copilot.Client
	var orphan *copilot.Session
	for i := 0; orphan == nil && i < 40; i++ {
		c := env.clientOf(ctx, t, pool.Name, fmt.Sprintf("nos-%02d", i))
		s := env.newSession(ctx, t, c)
		if rec, err := reg.Get(ctx, s.SessionID); err == nil && rec != nil && rec.Instance == down {
			client, orphan = c, s
		} else {
			c.Stop()
		}
	}
	if orphan == nil {
		t.Fatalf("no user of 40 hashed to %s", down)
	}
	// SendAndWait returns at session.idle: no turn is in flight at the stop.
	if _, err := orphan.SendAndWait(ctx, copilot.MessageOptions{Prompt: "first of the orphan"}); err != nil {
		t.Fatal(err)
	}
	lost := make(chan string, 4)
	orphan.On(func(ev copilot.SessionEvent) {
		if d, ok := ev.Data.(*copilot.SessionErrorData); ok {
			lost <- d.Message
		}
	})

	pool.CLIs[down].Close()
	// The check turns critical, naming the cause, and Envoy stops routing there.
	err := harness.Poll(ctx, 100*time.Millisecond, func() error {
		checks, _, err := env.Consul.Client.Health().Checks(pool.Name, nil)
		if err != nil {
			return err
		}
		for _, c := range checks {
			if c.ServiceID == down && c.Status == api.HealthCritical && strings.Contains(c.Output, "copilot CLI") {
				return nil
			}
		}
		var states []string
		for _, c := range checks {
			states = append(states, c.ServiceID+"/"+c.CheckID+"="+c.Status+": "+c.Output)
		}
		return fmt.Errorf("%s check not critical yet: %v", down, states)
	})
	if err != nil {
		t.Fatal(err)
	}
	// A tunnel straight to that sidecar gets a JSON-RPC error naming the cause.
	_, send, recv := rawTunnel(t, fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", pool.Sidecars[down].Port),
		http.Header{"X-Climesh-Edge-Credential": {env.Credential}, "X-Climesh-Identity": {env.Assertion("probe", "acme", time.Minute)}})
	send(`{"jsonrpc":"2.0","id":9,"method":"ping","params":{}}`)
	got := recv()
	if !strings.Contains(got, fmt.Sprint(protocol.CodeUnavailable)) || !strings.Contains(got, "copilot CLI") {
		t.Fatalf("answer %q, want an error naming the unreachable CLI", got)
	}
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		if ok, err := env.routed(pool.Name, down); err != nil || ok {
			return fmt.Errorf("envoy still routes to %s (%v)", down, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Without shared storage the session is gone with its instance: reported, and
	// the client lives on.
	select {
	case msg := <-lost:
		t.Logf("the app of a session on %s was told: %s", down, msg)
		if !strings.Contains(msg, "could not be resumed") {
			t.Fatalf("session.error %q does not say the session could not be resumed", msg)
		}
	case <-ctx.Done():
		t.Fatalf("the app of a session on %s was never told it was lost", down)
	}
	s, err := client.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatalf("the client is dead after its session was lost: %v", err)
	}
	if _, err := ownTurn(ctx, s, "after the loss"); err != nil {
		t.Fatalf("a new session on the same client: %v", err)
	}
	if rec, err := reg.Get(ctx, s.SessionID); err != nil || rec == nil || rec.Instance != other {
		t.Fatalf("the new session's record %+v (%v), want it on %s", rec, err, other)
	}
}
