package e2e

// The lifecycle tests drain, kill, stop and add instances. Each does it on a
// pool of its own (harness.Mesh.StartPool), so they run in any order among the
// other tests (go test -shuffle=on) and leave the shared pools as they found them.

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

// scratchPools are the mesh's empty pools, one per test that needs its own.
var scratchPools = []harness.ScratchPool{{Name: "drain"}, {Name: "kill"}, {Name: "dead"}, {Name: "scaleout"}, {Name: "sweep"},
	{Name: "nostore"}, {Name: "crashroom", HashKey: "session"}, {Name: "rotate"}, {Name: "orphan"}, {Name: "rebalance"}, {Name: "sticky"}}

// startPool starts the scratch pool name for this test and stops it after.
func (env *meshEnv) startPool(ctx context.Context, t *testing.T, name string, o harness.PoolOptions) *harness.Pool {
	t.Helper()
	p, err := env.StartPool(ctx, name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	t.Cleanup(func() {
		if t.Failed() {
			for id, sc := range p.Sidecars {
				t.Logf("--- %s ---\n%s", id, sc.Proc.Tail(150))
			}
			t.Logf("--- climesh-connect ---\n%s", env.Connect.Tail(30))
		}
	})
	return p
}

// registry is the session registry the mesh's sidecars share.
func (env *meshEnv) registry() *registry.Consul {
	return &registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}
}

// clientOf starts an SDK client through climesh-connect for user of tenant;
// it stops with the test.
func (env *meshEnv) clientOf(ctx context.Context, t *testing.T, tenant, user string) *copilot.Client {
	t.Helper()
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token(user, tenant)}})
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start a client for %s/%s: %v", tenant, user, err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func (env *meshEnv) newSession(ctx context.Context, t *testing.T, c *copilot.Client) *copilot.Session {
	t.Helper()
	s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// poolUser is a user of a scratch pool (its tenant) with one live session.
type poolUser struct {
	name    string
	session *copilot.Session
	where   string // the instance that created the session
}

// poolUsers makes n users "<prefix>-NN" of pool p, each with a session and one
// turn ("first of <name>"), and returns them and the instance holding the most
// of their sessions, with its users.
func (env *meshEnv) poolUsers(ctx context.Context, t *testing.T, p *harness.Pool, prefix string, n int) (all []*poolUser, busiest string, there []*poolUser) {
	t.Helper()
	reg := env.registry()
	byInstance := map[string][]*poolUser{}
	for i := range n {
		u := &poolUser{name: fmt.Sprintf("%s-%02d", prefix, i)}
		u.session = env.newSession(ctx, t, env.clientOf(ctx, t, p.Name, u.name))
		if _, err := ownTurn(ctx, u.session, "first of "+u.name); err != nil {
			t.Fatal(err)
		}
		rec, err := reg.Get(ctx, u.session.SessionID)
		if err != nil || rec == nil {
			t.Fatalf("%s: no record (%v)", u.name, err)
		}
		u.where = rec.Instance
		all = append(all, u)
		byInstance[u.where] = append(byInstance[u.where], u)
	}
	for id, us := range byInstance {
		if busiest == "" || len(us) > len(byInstance[busiest]) {
			busiest = id
		}
	}
	return all, busiest, byInstance[busiest]
}

// turn is one turn of a user: when its prompt reached the model, when and how
// it ended for the app.
type turn struct {
	user          string
	prompt        string
	sent          time.Time // the app sent it
	reachedModel  time.Time
	modelAnswered time.Time // zero if the model never answered it
	ended         time.Time
	err           error
}

// atModel says whether the turn was in the model's hands at moment: it had
// reached the model before and the model had not answered it yet, so the
// instance had to carry it across moment.
func (tr *turn) atModel(moment time.Time) bool {
	return tr.reachedModel.Before(moment) && (tr.modelAnswered.IsZero() || tr.modelAnswered.After(moment))
}

func (tr *turn) timeline() string {
	f := func(at time.Time) string {
		if at.IsZero() {
			return "never"
		}
		return at.Format("15:04:05.000000")
	}
	return fmt.Sprintf("reached the model %s, answered by it %s, ended for the app %s", f(tr.reachedModel), f(tr.modelAnswered), f(tr.ended))
}

// slowTurns starts a "slow <ms>" turn for each user and returns once every one
// has reached the model. Each ends on the channel, after at most limit: a turn
// neither answered nor reported by then ends with an error saying it was lost
// silently.
func (env *meshEnv) slowTurns(ctx context.Context, t *testing.T, users []*poolUser, ms int, limit time.Duration) <-chan *turn {
	t.Helper()
	results := make(chan *turn, len(users))
	started := make([]*turn, len(users))
	for i, u := range users {
		tr := &turn{user: u.name, prompt: fmt.Sprintf("slow %d for %s", ms, u.name), sent: time.Now()}
		started[i] = tr
		go func() {
			tctx, cancel := context.WithTimeout(ctx, limit)
			defer cancel()
			_, err := ownTurn(tctx, u.session, tr.prompt)
			tr.ended = time.Now()
			tr.modelAnswered, _ = env.Model.Answered(tr.prompt)
			if err != nil && tctx.Err() != nil {
				err = fmt.Errorf("neither answered nor reported to its app within %s: lost silently", limit)
			}
			tr.err = err
			results <- tr
		}()
	}
	err := harness.Poll(ctx, 10*time.Millisecond, func() error {
		for _, tr := range started {
			at, ok := env.Model.Arrived(tr.prompt)
			if !ok {
				return fmt.Errorf("the turn of %s has not reached the model", tr.user)
			}
			tr.reachedModel = at
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return results
}

// routed says whether Envoy routes pool's instance id.
func (env *meshEnv) routed(pool, id string) (bool, error) {
	hosts, err := env.Envoy.Hosts("pool/" + pool)
	if err != nil {
		return false, err
	}
	for _, h := range hosts {
		if h.Hostname == id && h.Health == "HEALTHY" {
			return true, nil
		}
	}
	return false, nil
}

// TestDrainKeepsSessions (issue scenario 1): 30 users with live sessions on a
// pool with shared session storage; one instance is drained while 10 of its
// users' turns are in flight. Each of those turns reached the model before the
// drain call and completes after it; the instance deregisters and exits; every
// user's next turn succeeds on the same client with its history, those of the
// drained instance on another one.
func TestDrainKeepsSessions(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pool := env.startPool(ctx, t, "drain", harness.PoolOptions{Instances: 3, Extra: []string{"--drain-timeout", "30s"}})
	users, drained, there := env.poolUsers(ctx, t, pool, "dur", 30)
	if len(there) < 10 { // 30 users on 3 instances: the busiest has at least 10
		t.Fatalf("the busiest instance has %d of 30 users", len(there))
	}
	victims := there[:10]
	t.Logf("draining %s with %d of 30 users, 10 of them in a turn", drained, len(there))

	results := env.slowTurns(ctx, t, victims, 5000, time.Minute)
	drainAt := time.Now()
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/drain", pool.Sidecars[drained].AdminPort), "text/plain", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("drain call: %v %v", resp, err)
	}
	var last time.Duration
	for range victims {
		tr := <-results
		if tr.err != nil {
			t.Errorf("%s: a turn in flight at the drain did not complete: %v", tr.user, tr.err)
			continue
		}
		if !tr.atModel(drainAt) || !tr.ended.After(drainAt) {
			t.Errorf("%s: not in flight at the drain call (%s): %s", tr.user, drainAt.Format("15:04:05.000000"), tr.timeline())
		}
		last = max(last, tr.ended.Sub(drainAt))
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("drain: 10 turns at the model when the drain was called, all completed, the last %s after the call", last.Round(time.Millisecond))

	// The drained instance deregisters and exits before anyone's next turn, so
	// those turns run elsewhere.
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		services, _, err := env.Consul.Client.Catalog().Service("drain", "", nil)
		if err != nil {
			return err
		}
		for _, s := range services {
			if s.ServiceID == drained {
				return fmt.Errorf("%s still registered", drained)
			}
		}
		if !pool.Sidecars[drained].Proc.Exited() {
			return fmt.Errorf("the drained sidecar still runs")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := env.registry()
	var slowest time.Duration
	for _, u := range users {
		start := time.Now()
		text, err := ownTurn(ctx, u.session, "next of "+u.name)
		if err != nil {
			t.Fatalf("%s after the drain: %v", u.name, err)
		}
		slowest = max(slowest, time.Since(start))
		if !strings.Contains(text, "first: first of "+u.name) {
			t.Fatalf("%s lost its history: %q", u.name, text)
		}
		if rec, err := reg.Get(ctx, u.session.SessionID); err != nil || rec == nil || rec.Instance == drained {
			t.Fatalf("%s's session after the drain: %+v %v, want it on a live instance", u.name, rec, err)
		}
	}
	t.Logf("drain: all 30 next turns succeeded with their history; the slowest took %s (a measured figure, not a bound)", slowest.Round(time.Millisecond))
}

// TestScaleOutUnderLoad: 32 users keep taking turns of a second or more while a
// fourth instance joins a pool with shared session storage. Turns are in flight
// when Envoy starts routing to it (sent before, answered after), and none
// fails; afterwards users' new connections reach the new instance, and no user
// moves between the old ones.
func TestScaleOutUnderLoad(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pool := env.startPool(ctx, t, "scaleout", harness.PoolOptions{Instances: 3})
	reg := env.registry()
	const n = 32
	users := make([]*poolUser, n)
	for i := range users {
		u := &poolUser{name: fmt.Sprintf("so-%02d", i)}
		u.session = env.newSession(ctx, t, env.clientOf(ctx, t, pool.Name, u.name))
		users[i] = u
	}
	// where opens a new connection for user and reports the instance it reaches.
	where := func(name string) string {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token(name, pool.Name)}})
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer c.Stop()
		s := env.newSession(ctx, t, c)
		defer c.DeleteSession(ctx, s.SessionID)
		rec, err := reg.Get(ctx, s.SessionID)
		if err != nil || rec == nil {
			t.Fatalf("%s: no record of its session (%v)", name, err)
		}
		return rec.Instance
	}
	before := map[string]string{}
	for _, u := range users {
		before[u.name] = where(u.name)
	}

	// Load: every user takes turns until it has finished two that began after
	// the new instance was routed.
	var joinedAt time.Time
	var joined sync.WaitGroup
	joined.Add(1)
	var mu sync.Mutex
	var turns []*turn
	var load sync.WaitGroup
	for _, u := range users {
		load.Go(func() {
			after := 0
			for i := 0; after < 2; i++ {
				tr := &turn{user: u.name, prompt: fmt.Sprintf("slow 1000 for %s, load %d", u.name, i), sent: time.Now()}
				_, tr.err = ownTurn(ctx, u.session, tr.prompt)
				tr.ended = time.Now()
				if at, ok := env.Model.Arrived(tr.prompt); ok {
					tr.reachedModel = at
				}
				mu.Lock()
				turns = append(turns, tr)
				if !joinedAt.IsZero() && tr.reachedModel.After(joinedAt) {
					after++
				}
				mu.Unlock()
				if tr.err != nil || ctx.Err() != nil {
					return
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // every user is in its first turn
	if _, err := pool.Add(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	joinedAt = time.Now()
	mu.Unlock()
	const added = "scaleout-3"
	if ok, err := env.routed(pool.Name, added); err != nil || !ok {
		t.Fatalf("%s not routed after Add: %v", added, err)
	}
	load.Wait()

	inFlight, failed := 0, 0
	for _, tr := range turns {
		if tr.err != nil {
			failed++
			t.Errorf("%s: %q failed: %v", tr.user, tr.prompt, tr.err)
		}
		if tr.sent.Before(joinedAt) && tr.ended.After(joinedAt) {
			inFlight++
		}
	}
	if inFlight < n/2 {
		t.Fatalf("%d turns were in flight when %s was routed, want at least %d: the load did not overlap the scale-out", inFlight, added, n/2)
	}
	if failed > 0 {
		t.FailNow()
	}
	moved, toNew := 0, 0
	var movedOld []string
	for _, u := range users {
		now := where(u.name)
		if now != before[u.name] {
			moved++
			if now == added {
				toNew++
			} else {
				movedOld = append(movedOld, fmt.Sprintf("%s %s->%s", u.name, before[u.name], now))
			}
		}
	}
	t.Logf("scale-out 3 -> 4 under load: %d turns, none failed, %d in flight when %s was routed; %d of %d users' new connections moved, %d to the new instance",
		len(turns), inFlight, added, moved, n, toNew)
	if len(movedOld) > 0 {
		slices.Sort(movedOld)
		t.Fatalf("users moved between the old instances: %v", movedOld)
	}
	if toNew == 0 { // a ring of 4 gives the new instance about a quarter: P(none of 32) < 1e-4
		t.Fatalf("no user's new connection reached %s", added)
	}
}
