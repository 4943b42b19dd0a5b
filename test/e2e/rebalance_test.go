package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/ring"
	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/tunnel"
)

// TestRingPredictsEnvoy: where a sidecar computes a user's home (package
// ring) is where real Envoy sends a new tunnel of theirs, for ring_hash — on
// four instances and after one leaves — and for Maglev — on three and after a
// fourth joins — so that a sidecar can tell which of its tunnels a fleet change
// gave another home.
func TestRingPredictsEnvoy(t *testing.T) {
	env := startChaosMesh(t, harness.MeshOptions{Instances: 4, Scratch: []harness.ScratchPool{{Name: "maglev", Policy: "maglev"}}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ringOf := func(hosts []string) ring.Placement {
		return ring.New(hosts, ring.Size(config.DefaultRingEntries, 0, config.DefaultMaxRingSize, len(hosts)), config.DefaultMaxRingSize)
	}
	ids := []string{harness.InstanceID(0), harness.InstanceID(1), harness.InstanceID(2), harness.InstanceID(3)}
	counts := predictsEnvoy(ctx, t, env, "acme", env.Sidecars, ringOf(ids))
	t.Logf("ring_hash, 4 instances: 40 users where the ring says: %v", counts)
	// One instance leaves: once Envoy has seen it go, the others have exactly
	// its users, as the ring of three says.
	env.Sidecars[ids[3]].Close()
	counts = predictsEnvoy(ctx, t, env, "acme", env.Sidecars, ringOf(ids[:3]))
	t.Logf("ring_hash, 3 instances: 40 users where the ring says: %v", counts)

	pool := env.startPool(ctx, t, "maglev", harness.PoolOptions{Instances: 3, Attach: true})
	maglevOf := func(hosts ...string) ring.Placement { return ring.NewMaglev(hosts, config.DefaultMaglevTable) }
	counts = predictsEnvoy(ctx, t, env, "maglev", pool.Sidecars, maglevOf("maglev-0", "maglev-1", "maglev-2"))
	t.Logf("maglev, 3 instances: 40 users where the table says: %v", counts)
	if _, err := pool.Add(ctx); err != nil {
		t.Fatal(err)
	}
	counts = predictsEnvoy(ctx, t, env, "maglev", pool.Sidecars, maglevOf("maglev-0", "maglev-1", "maglev-2", "maglev-3"))
	t.Logf("maglev, 4 instances: 40 users where the table says: %v", counts)
}

// predictsEnvoy waits (bounded) until 40 users of tenant land, on new tunnels,
// where placement says, and returns how many landed on each instance.
func predictsEnvoy(ctx context.Context, t *testing.T, env *meshEnv, tenant string, sidecars map[string]*harness.Sidecar, placement ring.Placement) map[string]int {
	t.Helper()
	// The pin Envoy answers is the upstream address, base64: which sidecar.
	byPin := map[string]string{}
	for id, sc := range sidecars {
		byPin[base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "127.0.0.1:%d", sc.Port))] = id
	}
	var counts map[string]int
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second) // Envoy sees a fleet change well within
	defer cancel()
	err := harness.Poll(ctx, 100*time.Millisecond, func() error {
		counts = map[string]int{}
		for i := range 40 {
			user := fmt.Sprintf("ringuser-%d", i)
			c, err := tunnel.Dial(ctx, env.EdgeURL, bearer(env.Token(user, tenant)), 1<<20)
			if err != nil {
				return err // e.g. 503 while Envoy still routes to an instance that left
			}
			c.Close("")
			got, ok := byPin[c.Pin]
			if !ok {
				return fmt.Errorf("%s: unknown pin %q", user, c.Pin)
			}
			if want := placement.Home(user); got != want {
				return fmt.Errorf("%s landed on %s, the placement says %s", user, got, want)
			}
			counts[got]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return counts
}

// rebalanceLoad is users of one pool taking turns back to back on long-lived
// clients, each turn checking that the model saw the session's whole history.
type rebalanceLoad struct {
	mu     sync.Mutex
	turns  []*turn
	count  map[string]int // turns each user completed (the first included)
	stop   chan struct{}
	done   sync.WaitGroup
	failed atomic.Int64
}

func startRebalanceLoad(ctx context.Context, t *testing.T, env *meshEnv, pool string, names []string) (*rebalanceLoad, map[string]*copilot.Session) {
	t.Helper()
	l := &rebalanceLoad{count: map[string]int{}, stop: make(chan struct{})}
	sessions := map[string]*copilot.Session{}
	for _, name := range names {
		s := env.newSession(ctx, t, env.clientOf(ctx, t, pool, name))
		if _, err := historyTurn(ctx, s, "first of "+name, 1); err != nil {
			t.Fatalf("%s's first turn: %v", name, err)
		}
		sessions[name], l.count[name] = s, 1
	}
	for _, name := range names {
		s := sessions[name]
		l.done.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				l.mu.Lock()
				n := l.count[name] + 1
				l.mu.Unlock()
				tr := &turn{user: name, prompt: fmt.Sprintf("slow 300 for %s, turn %d", name, n), sent: time.Now()}
				_, tr.err = historyTurn(ctx, s, tr.prompt, n)
				tr.ended = time.Now()
				l.mu.Lock()
				l.turns = append(l.turns, tr)
				if tr.err == nil {
					l.count[name] = n
				}
				l.mu.Unlock()
				if tr.err != nil {
					l.failed.Add(1)
					return
				}
			}
		})
	}
	return l, sessions
}

// finish stops the load and returns the turns taken, failing the test on any
// failed turn.
func (l *rebalanceLoad) finish(t *testing.T) []*turn {
	t.Helper()
	close(l.stop)
	l.done.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, tr := range l.turns {
		if tr.err != nil {
			t.Errorf("%s: %q failed: %v", tr.user, tr.prompt, tr.err)
		}
	}
	return l.turns
}

// historyTurn takes one turn and waits for the session to be idle again; the
// model's echo must count n user messages (the session's whole history).
func historyTurn(ctx context.Context, s *copilot.Session, prompt string, n int) (string, error) {
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: prompt})
	if err != nil {
		return "", err
	}
	d, ok := ev.Data.(*copilot.AssistantMessageData)
	if !ok {
		return "", fmt.Errorf("the turn ended without an answer: %T", ev.Data)
	}
	if want := fmt.Sprintf("(user messages: %d,", n); !strings.Contains(d.Content, "echo: "+prompt) || !strings.Contains(d.Content, want) {
		return d.Content, fmt.Errorf("the model saw another history: %q, want %q", d.Content, want)
	}
	return d.Content, nil
}

// tunnelsOn is each instance's open tunnels (climesh_sidecar_tunnels), but
// for those in skip (gone).
func tunnelsOn(t *testing.T, p *harness.Pool, skip ...string) map[string]int {
	out := map[string]int{}
	for id, sc := range p.Sidecars {
		if !slices.Contains(skip, id) {
			out[id] = int(metricValue(sidecarMetrics(t, sc.AdminPort), "climesh_sidecar_tunnels"))
		}
	}
	return out
}

// movesStarted sums climesh_sidecar_moves_started_total over p's instances
// but those in skip.
func movesStarted(t *testing.T, p *harness.Pool, skip ...string) float64 {
	total := 0.0
	for id, sc := range p.Sidecars {
		if !slices.Contains(skip, id) {
			total += metricValue(sidecarMetrics(t, sc.AdminPort), "climesh_sidecar_moves_started_total")
		}
	}
	return total
}

// homes is where the ring of ids sends each user.
func homes(ids []string, users []string) map[string]string {
	r := ring.New(ids, ring.Size(config.DefaultRingEntries, 0, config.DefaultMaxRingSize, len(ids)), config.DefaultMaxRingSize)
	out := map[string]string{}
	for _, u := range users {
		out[u] = r.Home(u)
	}
	return out
}

// TestRebalanceMovesTunnelsHome (issue 15): 20 users with long-lived clients
// take turns back to back on 3 instances that share session storage; a
// fourth joins. Within the bound, the new instance carries the tunnels of the
// users whose home it now is (±1), by moves made between turns: no turn fails,
// every turn's model sees the session's whole history, and only the users
// whose home moved were asked. A drain of one instance under the same load
// fails nothing and moves nobody else. A sticky-only pool (each instance its
// own storage, no --rebalance) moves nobody when it grows.
func TestRebalanceMovesTunnelsHome(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	pool := env.startPool(ctx, t, "rebalance", harness.PoolOptions{Instances: 3,
		Extra: []string{"--rebalance", "--rebalance-rate", "5", "--rebalance-settle", "2s"}})
	// 20 users of whom 5 — the fourth instance's share — have it for their
	// home once it joins (the ring is Envoy's: TestRingPredictsEnvoy).
	three := []string{"rebalance-0", "rebalance-1", "rebalance-2"}
	four := append(slices.Clone(three), "rebalance-3")
	var names []string
	for i, onNew := 0, 0; len(names) < 20; i++ {
		name := fmt.Sprintf("rb-%03d", i)
		if homes(four, []string{name})[name] == "rebalance-3" {
			if onNew == 5 {
				continue
			}
			onNew++
		} else if len(names)-onNew == 15 {
			continue
		}
		names = append(names, name)
	}
	load, _ := startRebalanceLoad(ctx, t, env, pool.Name, names)
	before := homes(three, names)
	if got := tunnelsOn(t, pool); got["rebalance-0"]+got["rebalance-1"]+got["rebalance-2"] != len(names) {
		t.Fatalf("tunnels before the scale-out: %v", got)
	}
	time.Sleep(time.Second) // the load runs

	added, err := pool.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	joined := time.Now()
	if added.ID != "rebalance-3" {
		t.Fatalf("the fourth instance is %s", added.ID)
	}
	after := homes(four, names)
	share, moved := 0, 0
	for _, u := range names {
		if after[u] == added.ID {
			share++
		}
		if after[u] != before[u] {
			moved++
		}
	}
	var balanced time.Duration
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		got := tunnelsOn(t, pool)
		total := 0
		for _, n := range got {
			total += n
		}
		if d := got[added.ID] - share; d < -1 || d > 1 || total != len(names) {
			return fmt.Errorf("tunnels %v (total %d), want %s to carry %d±1", got, total, added.ID, share)
		}
		balanced = time.Since(joined)
		return nil
	})
	if err != nil {
		t.Fatalf("not balanced: %v", err)
	}
	time.Sleep(2 * time.Second) // turns go on after the moves
	started := movesStarted(t, pool)
	if started < float64(moved-1) || started > float64(moved) {
		t.Errorf("%v moves started, want the %d users whose home moved (±1 still on its way)", started, moved)
	}
	t.Logf("rebalance: %s carries %d tunnels (its share %d±1) %v after it was routed; %d users' homes moved, %v moves started",
		added.ID, tunnelsOn(t, pool)[added.ID], share, balanced.Round(time.Millisecond), moved, started)

	// A drain of one of the first instances under the same load: no failure,
	// no move beyond those made already.
	drained := "rebalance-1"
	others := movesStarted(t, pool, drained)
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/drain", pool.Sidecars[drained].AdminPort), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The drained sidecar ends once its tunnels closed; the others carry all.
	if err := harness.Poll(ctx, 100*time.Millisecond, func() error {
		got := tunnelsOn(t, pool, drained)
		total := 0
		for _, n := range got {
			total += n
		}
		if total != len(names) {
			return fmt.Errorf("tunnels %v: %d of %d users' on the others", got, total, len(names))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if again := movesStarted(t, pool, drained); again != others {
		t.Errorf("the drain started %v more moves on the other instances", again-others)
	}
	turns := load.finish(t)
	if t.Failed() {
		return
	}
	t.Logf("%d turns by %d users across the scale-out and the drain, none failed, each with its whole history", len(turns), len(names))
}

// TestStickyPoolMovesNobody (issue 15): in a sticky-only pool each instance
// keeps its sessions on storage of its own, so its sidecars run without
// --rebalance. When it grows under load, every tunnel stays where it is — the
// new instance gets none of them — and every turn keeps its whole history.
func TestStickyPoolMovesNobody(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pool := env.startPool(ctx, t, "sticky", harness.PoolOptions{Instances: 3, Attach: true})
	three := []string{"sticky-0", "sticky-1", "sticky-2"}
	four := append(slices.Clone(three), "sticky-3")
	// 8 users, at least 2 of whom the fourth instance would be home to.
	var names []string
	for i, onNew := 0, 0; len(names) < 8; i++ {
		name := fmt.Sprintf("st-%03d", i)
		if homes(four, []string{name})[name] == "sticky-3" {
			onNew++
		} else if len(names)-onNew >= 6 {
			continue
		}
		names = append(names, name)
	}
	load, _ := startRebalanceLoad(ctx, t, env, pool.Name, names)
	before := tunnelsOn(t, pool)
	added, err := pool.Add(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // longer than a rebalancing pool takes to move them
	got := tunnelsOn(t, pool)
	turns := load.finish(t)
	if got[added.ID] != 0 {
		t.Errorf("%s took %d tunnels in a sticky-only pool", added.ID, got[added.ID])
	}
	for _, id := range three {
		if got[id] != before[id] {
			t.Errorf("%s: %d tunnels, had %d: a sticky-only pool moved users", id, got[id], before[id])
		}
	}
	if movesStarted(t, pool) != 0 {
		t.Errorf("moves started in a sticky-only pool")
	}
	if t.Failed() {
		return
	}
	t.Logf("sticky-only pool grew under load: tunnels %v stayed %v; %d turns, none failed", before, got, len(turns))
}
