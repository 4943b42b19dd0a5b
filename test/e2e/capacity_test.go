package e2e

import (
	"context"
	"fmt"
	"math"
	"strings"
	"syscall"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

// boundedClient starts an SDK client of tenant "bounded" for user; stop it with
// the returned function (also called when the test ends).
func (env *meshEnv) boundedClient(ctx context.Context, t *testing.T, user string) (*copilot.Client, func()) {
	t.Helper()
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token(user, "bounded")}})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c, func() { c.Stop() }
}

// TestCapacityAndBoundedLoad (issue scenario 4): the "bounded" pool's first
// instance holds at most 5 sessions; 8 users the ring puts on it arrive together.
// Bounded-load hashing (hash_balance_factor 125) sends some of them to the other
// instance; past the cap the least recently used idle sessions are released, and
// every released session resumes on demand, with its history, when its user
// comes back to it.
func TestCapacityAndBoundedLoad(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	reg := &registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}
	cfg := func() *copilot.SessionConfig {
		return &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll}
	}
	instanceOf := func(id string) string {
		rec, err := reg.Get(ctx, id)
		if err != nil || rec == nil {
			t.Fatalf("session %s: no record (%v)", id, err)
		}
		return rec.Instance
	}
	const hot = "bounded-0"

	// Which users does the ring put on the capped instance when nothing runs?
	var users []string
	for i := 0; len(users) < 8 && i < 80; i++ {
		user := fmt.Sprintf("bnd-%02d", i)
		c, stop := env.boundedClient(ctx, t, user)
		s, err := c.CreateSession(ctx, cfg())
		if err != nil {
			t.Fatal(err)
		}
		if instanceOf(s.SessionID) == hot {
			users = append(users, user)
		}
		stop()
	}
	if len(users) < 8 {
		t.Fatalf("only %d of 80 users hash to %s", len(users), hot)
	}
	err := harness.Poll(ctx, 20*time.Millisecond, func() error {
		if n, err := env.Envoy.Stat("cluster.pool/bounded.upstream_rq_active"); err != nil || n > 0 {
			return fmt.Errorf("%d tunnels still open (%v)", n, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The 8 arrive one after the other and stay; each opens two sessions.
	type userSessions struct {
		name  string
		where string
		s     [2]*copilot.Session
	}
	var all []*userSessions
	onHot := 0
	for _, name := range users {
		c, _ := env.boundedClient(ctx, t, name)
		u := &userSessions{name: name}
		for k := range u.s {
			s, err := c.CreateSession(ctx, cfg())
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if _, err := ownTurn(ctx, s, fmt.Sprintf("first of %s/%d", name, k)); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			u.s[k] = s
		}
		u.where = instanceOf(u.s[0].SessionID)
		if u.where == hot {
			onHot++
		}
		all = append(all, u)
	}
	t.Logf("bounded load: %d of 8 users hashed to %s were placed there, %d elsewhere", onHot, hot, len(users)-onHot)
	// Envoy's bound: an instance already above factor × the average load (the
	// newcomer counted) takes no new pick, so it ends at most one above it.
	bound := int(math.Ceil(float64(len(users))*harness.BoundedFactor/100/2)) + 1
	if onHot == len(users) || onHot > bound {
		t.Fatalf("bounded load: %d of %d users on %s, want fewer than all and at most %d", onHot, len(users), hot, bound)
	}
	if 2*onHot <= harness.BoundedCapacity {
		t.Fatalf("only %d sessions on %s: the cap of %d is not reached, the test proves nothing", 2*onHot, hot, harness.BoundedCapacity)
	}
	port := env.Sidecars[hot].AdminPort
	page := sidecarMetrics(t, port)
	evicted, active := metricValue(page, "climesh_sidecar_evictions_total"), metricValue(page, "climesh_sidecar_active_sessions")
	t.Logf("%s: %d sessions opened there, %v active, %v released", hot, 2*onHot, active, evicted)
	if active > harness.BoundedCapacity || evicted < float64(2*onHot-harness.BoundedCapacity) {
		t.Fatalf("%s holds %v sessions and released %v; want at most %d held", hot, active, evicted, harness.BoundedCapacity)
	}

	// Everyone comes back to both sessions: released ones resume on demand.
	for _, u := range all {
		for k, s := range u.s {
			text, err := ownTurn(ctx, s, fmt.Sprintf("again %s/%d", u.name, k))
			if err != nil {
				t.Fatalf("%s's session %d after the releases: %v", u.name, k, err)
			}
			if want := fmt.Sprintf("first: first of %s/%d", u.name, k); !strings.Contains(text, want) {
				t.Fatalf("%s's session %d lost its history: %q", u.name, k, text)
			}
		}
	}
	page = sidecarMetrics(t, port)
	if resumed := metricValue(page, "climesh_sidecar_resumes_on_demand_total"); resumed < 1 {
		t.Fatalf("no released session was resumed on demand:\n%s", grepLines(page, "climesh_sidecar_"))
	} else {
		t.Logf("%s: %v released sessions resumed on demand; %v released in all", hot, resumed, metricValue(page, "climesh_sidecar_evictions_total"))
	}
	if active := metricValue(page, "climesh_sidecar_active_sessions"); active > harness.BoundedCapacity {
		t.Fatalf("%s holds %v sessions after the second round, cap %d", hot, active, harness.BoundedCapacity)
	}

	// The load is published in the instance's Consul check.
	checks, err := env.Consul.Client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	c := checks["climesh-cli:"+hot]
	if c == nil || !strings.Contains(c.Output, "capacity=5") || !strings.Contains(c.Output, "active_sessions=") {
		t.Fatalf("consul check of %s does not carry the load: %+v", hot, c)
	}
	t.Logf("consul check output of %s: %q", hot, c.Output)
}

// TestHungCLILeavesRouting: a CLI that stops answering (SIGSTOP) fails its
// sidecar's pings, so its instance turns critical in Consul within the
// README's bound, (--ping-failures + 1) × --ping-interval (the harness runs
// 500ms and the default 2 failures), and leaves Envoy's routing; once it
// answers again (SIGCONT) it comes back. The bounds are asserted with a margin
// for a loaded machine: critical within 3 × interval + 1 s, out of routing
// within 1 s more (the control plane's convergence).
func TestHungCLILeavesRouting(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const id = "bounded-1"
	const pingInterval = 500 * time.Millisecond // harness.StartSidecar's --ping-interval
	cli := childCLI(t, env.Sidecars[id].Proc.Pid())
	healthy := func(want bool) error {
		if ok, err := env.routed("bounded", id); err != nil || ok != want {
			return fmt.Errorf("%s not yet healthy=%v in envoy (%v)", id, want, err)
		}
		return nil
	}
	if err := healthy(true); err != nil {
		t.Fatal(err)
	}
	hung := time.Now()
	if err := syscall.Kill(-cli, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(-cli, syscall.SIGCONT)
	err := harness.Poll(ctx, 20*time.Millisecond, func() error {
		checks, err := env.Consul.Client.Agent().Checks()
		if err != nil {
			return err
		}
		if c := checks["climesh-cli:"+id]; c == nil || c.Status != "critical" || !strings.Contains(c.Output, "ping") {
			return fmt.Errorf("consul check of the hung instance: %+v", c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	critical := time.Since(hung)
	if err := harness.Poll(ctx, 20*time.Millisecond, func() error { return healthy(false) }); err != nil {
		t.Fatal(err)
	}
	out := time.Since(hung)
	t.Logf("%s critical in Consul %s and out of routing %s after its CLI hung", id, critical.Round(time.Millisecond), out.Round(time.Millisecond))
	const pingFailures = 2 // climesh-sidecar's default --ping-failures
	if bound := (pingFailures+1)*pingInterval + time.Second; critical > bound {
		t.Errorf("critical after %s, bound (--ping-failures + 1) × --ping-interval = %s (+1 s margin)", critical, (pingFailures+1)*pingInterval)
	}
	if bound := (pingFailures+1)*pingInterval + 2*time.Second; out > bound {
		t.Errorf("out of routing after %s, want within %s", out, bound)
	}
	syscall.Kill(-cli, syscall.SIGCONT)
	back := time.Now()
	if err := harness.Poll(ctx, 20*time.Millisecond, func() error { return healthy(true) }); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s back in routing %s after its CLI answered again", id, time.Since(back).Round(time.Millisecond))
}
