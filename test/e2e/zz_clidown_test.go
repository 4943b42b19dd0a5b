package e2e

// This file sorts last: go test runs a package's tests in file order, and this
// test stops one of the shared mesh's CLIs for good.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"
	"github.com/hashicorp/consul/api"

	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

// TestDataPathCLIDown runs last among the data-path tests: it stops cli-b. The
// "copilot" pool has no shared session storage, so a session that lived on cli-b
// cannot be resumed on cli-a: its app gets a session.error event saying so, and
// its client still works (a new session, a turn).
func TestDataPathCLIDown(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	reg := &registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}
	var client *copilot.Client
	var orphan *copilot.Session
	for i := 0; orphan == nil && i < 40; i++ {
		c := env.tcpClient(t, fmt.Sprintf("nos-%02d", i))
		s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
		if err != nil {
			t.Fatal(err)
		}
		if rec, err := reg.Get(ctx, s.SessionID); err == nil && rec != nil && rec.Instance == "cli-b" {
			client, orphan = c, s
		} else {
			c.Stop()
		}
	}
	if orphan == nil {
		t.Fatal("no user of 40 hashed to cli-b")
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

	env.CLIs["cli-b"].Close()
	// The check turns critical, naming the cause, and Envoy stops routing there.
	err := harness.Poll(ctx, 100*time.Millisecond, func() error {
		checks, _, err := env.Consul.Client.Health().Checks("copilot", nil)
		if err != nil {
			return err
		}
		for _, c := range checks {
			if c.ServiceID == "cli-b" && c.Status == api.HealthCritical && strings.Contains(c.Output, "copilot CLI") {
				return nil
			}
		}
		var states []string
		for _, c := range checks {
			states = append(states, c.ServiceID+"/"+c.CheckID+"="+c.Status+": "+c.Output)
		}
		return fmt.Errorf("cli-b check not critical yet: %v", states)
	})
	if err != nil {
		t.Fatal(err)
	}
	// A tunnel straight to that sidecar gets a JSON-RPC error naming the cause.
	_, send, recv := rawTunnel(t, fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", env.Sidecars["cli-b"].Port),
		http.Header{"X-Climesh-Edge-Credential": {env.Credential}, "X-Climesh-Identity": {env.Assertion("probe", "acme", time.Minute)}})
	send(`{"jsonrpc":"2.0","id":9,"method":"ping","params":{}}`)
	got := recv()
	if !strings.Contains(got, fmt.Sprint(jsonrpc.CodeUnavailable)) || !strings.Contains(got, "copilot CLI") {
		t.Fatalf("answer %q, want an error naming the unreachable CLI", got)
	}
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		hosts, err := env.Envoy.Hosts("pool/copilot")
		if err != nil {
			return err
		}
		for _, h := range hosts {
			if h.Hostname == "cli-b" && h.Health == "HEALTHY" {
				return fmt.Errorf("envoy still routes to cli-b")
			}
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
		t.Logf("the app of a session on cli-b was told: %s", msg)
		if !strings.Contains(msg, "could not be resumed") {
			t.Fatalf("session.error %q does not say the session could not be resumed", msg)
		}
	case <-ctx.Done():
		t.Fatal("the app of a session on cli-b was never told it was lost")
	}
	s, err := client.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatalf("the client is dead after its session was lost: %v", err)
	}
	if _, err := ownTurn(ctx, s, "after the loss"); err != nil {
		t.Fatalf("a new session on the same client: %v", err)
	}
	if rec, err := reg.Get(ctx, s.SessionID); err != nil || rec == nil || rec.Instance != "cli-a" {
		t.Fatalf("the new session's record %+v (%v), want it on cli-a", rec, err)
	}
}
