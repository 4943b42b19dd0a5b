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

	"github.com/hashicorp/consul/api"

	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/test/harness"
)

// TestDataPathCLIDown runs last among the data-path tests: it stops cli-b.
func TestDataPathCLIDown(t *testing.T) {
	env := startMesh(t)
	env.CLIs["cli-b"].Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
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
}
