package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"
	"github.com/hashicorp/consul/api"

	"github.com/climesh/climesh/test/harness"
)

// TestAgentlessRegistration runs a mesh of its own the way consul-k8s runs
// Consul by default: servers only, no client agent, ACLs on and deny by
// default. The sidecars register through the catalog (--consul-registration
// catalog) and the xds-server reads it, each with a token of the shipped
// least-privilege policy (deploy/consul/acl). A turn runs through the whole
// path; routing follows the CLI's health and the drain; a drained instance
// leaves nothing in Consul; a SIGKILLed sidecar leaves routing within
// 2 × --liveness-ttl (the README's bound; asserted with a 2 s margin) and the
// pool's reaper removes its registration.
func TestAgentlessRegistration(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	m, err := harness.StartMesh(ctx, harness.MeshOptions{Instances: 3, Agentless: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	env := &meshEnv{m}
	t.Cleanup(func() {
		if t.Failed() {
			for id, sc := range m.Sidecars {
				t.Logf("--- %s ---\n%s", id, sc.Proc.Tail(40))
			}
			t.Logf("--- xds-server ---\n%s", m.XDS.Proc.Tail(40))
		}
	})
	root := m.Consul.Client
	const pool = "copilot"
	// Every instance is its own catalog node, on no agent.
	for _, id := range []string{"cli-a", "cli-b", "cli-c"} {
		node, _, err := root.Catalog().Node("climesh-"+id, nil)
		if err != nil || node == nil || node.Node.Meta["external-node"] != "true" {
			t.Fatalf("node climesh-%s: %+v %v", id, node, err)
		}
	}
	if members, err := root.Agent().Members(false); err != nil || len(members) != 1 {
		t.Fatalf("serf members %v %v: want the one server, no client agent", members, err)
	}

	// A turn through Envoy: the tokens suffice for routing, the ownership
	// registry and the policy.
	c := env.clientOf(ctx, t, "acme", "alice")
	s := env.newSession(ctx, t, c)
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "hello agentless"})
	if err != nil || !strings.Contains(answer(t, ev), "echo: hello agentless") {
		t.Fatalf("turn: %v", err)
	}

	// Least privilege: the sidecars' token cannot write outside climesh/ nor
	// register a node that is not a climesh instance.
	sidecarToken := strings.TrimPrefix(m.SidecarEnv[0], "CONSUL_HTTP_TOKEN=")
	limited, err := api.NewClient(&api.Config{Address: m.Consul.Addr, Token: sidecarToken})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := limited.KV().Put(&api.KVPair{Key: "other/x", Value: []byte("x")}, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("the sidecar token wrote outside climesh/: %v", err)
	}
	if _, err := limited.Catalog().Register(&api.CatalogRegistration{Node: "db-1", Address: "127.0.0.1"}, nil); err == nil {
		t.Error("the sidecar token registered a node that is not a climesh instance")
	}

	checkOf := func(id string) string {
		checks, _, err := root.Health().Checks(pool, nil)
		if err != nil {
			return err.Error()
		}
		for _, c := range checks {
			if c.ServiceID == id {
				return c.Status
			}
		}
		return "absent"
	}
	waitRouted := func(id string, want bool) time.Duration {
		t.Helper()
		start := time.Now()
		if err := harness.Poll(ctx, 20*time.Millisecond, func() error {
			if ok, err := env.routed(pool, id); err != nil || ok != want {
				return fmt.Errorf("%s routed %v, want %v (%v); consul check %s", id, ok, want, err, checkOf(id))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}

	// Health: a hung CLI turns the check critical and leaves routing; it comes back.
	cli := m.CLIs["cli-b"].Proc.Pid()
	if err := syscall.Kill(-cli, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	out := waitRouted("cli-b", false)
	// The readiness probe says what Consul says (a platform that routes by
	// readiness agrees with climesh's routing).
	for id, want := range map[string]int{"cli-a": http.StatusOK, "cli-b": http.StatusServiceUnavailable} {
		if got, body := adminGet(t, m.Sidecars[id].AdminPort, "/readyz"); got != want {
			t.Errorf("%s /readyz: %d %q, want %d", id, got, body, want)
		}
	}
	syscall.Kill(-cli, syscall.SIGCONT)
	back := waitRouted("cli-b", true)
	t.Logf("a hung CLI: out of routing after %s, back %s after it answered", out.Round(time.Millisecond), back.Round(time.Millisecond))

	// Drain: out of routing, then nothing left — no node, no liveness key.
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/drain", m.Sidecars["cli-c"].AdminPort), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitRouted("cli-c", false)
	if err := harness.Poll(ctx, 50*time.Millisecond, func() error { return gone(root, "cli-c") }); err != nil {
		t.Fatalf("after the drain: %v", err)
	}

	// A SIGKILLed sidecar: its session stops being renewed, Consul deletes its
	// liveness key within 2 × --liveness-ttl, and discovery stops routing it;
	// the reaper (on cli-a, the one left) then removes its node.
	sc := m.Sidecars["cli-b"]
	killed := time.Now()
	if err := syscall.Kill(sc.Proc.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitRouted("cli-b", false)
	left := time.Since(killed)
	if err := harness.Poll(ctx, 100*time.Millisecond, func() error { return gone(root, "cli-b") }); err != nil {
		t.Fatalf("after the kill: %v", err)
	}
	reaped := time.Since(killed)
	t.Logf("a SIGKILLed sidecar: out of routing after %s, its registration reaped after %s (--liveness-ttl %s)",
		left.Round(time.Millisecond), reaped.Round(time.Millisecond), harness.LivenessTTL)
	if bound := 2*harness.LivenessTTL + 2*time.Second; left > bound {
		t.Errorf("out of routing after %s, want within 2 × --liveness-ttl + 2 s = %s", left, bound)
	}
	// The survivor serves a new user.
	s = env.newSession(ctx, t, env.clientOf(ctx, t, "acme", "bob"))
	ev, err = s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "still here"})
	if err != nil || !strings.Contains(answer(t, ev), "echo: still here") {
		t.Fatalf("turn after the faults: %v", err)
	}
}

// gone says what is left in Consul of instance id: nil when its node and
// liveness key are both gone.
func gone(c *api.Client, id string) error {
	node, _, err := c.Catalog().Node("climesh-"+id, nil)
	if err != nil {
		return err
	}
	key, _, err := c.KV().Get("climesh/live/copilot/"+id, nil)
	if err != nil {
		return err
	}
	if node != nil || key != nil {
		return fmt.Errorf("%s left behind: node %v, liveness key %v", id, node != nil, key != nil)
	}
	return nil
}
