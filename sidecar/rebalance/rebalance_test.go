package rebalance

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/climesh/climesh/ring"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

const entries, maxSize = 256, 1 << 23

func ringOf(hosts ...string) *ring.Ring {
	return ring.New(hosts, ring.Size(entries, 0, maxSize, len(hosts)), maxSize)
}

// usersHomedOn returns n users whose home on r is host.
func usersHomedOn(r *ring.Ring, host string, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		if u := fmt.Sprintf("user-%d", i); r.Home(u) == host {
			out = append(out, u)
		}
	}
	return out
}

func TestMisplaced(t *testing.T) {
	r := ringOf("a", "b", "c", "d")
	mine, theirs := usersHomedOn(r, "a", 2), usersHomedOn(r, "d", 3)
	tunnels := []Tunnel{
		{ID: 1, Key: mine[0], Opened: t0, Movable: true},
		{ID: 2, Key: theirs[0], Opened: t0.Add(2 * time.Second), Movable: true},
		{ID: 3, Key: theirs[1], Opened: t0.Add(time.Second), Movable: true},
		{ID: 4, Key: theirs[2], Opened: t0, Movable: false}, // a client that cannot move
		{ID: 5, Key: mine[1], Opened: t0, Movable: true},
	}
	got := Misplaced("a", r, tunnels, nil)
	if len(got) != 2 || got[0].ID != 3 || got[1].ID != 2 {
		t.Fatalf("misplaced %+v, want tunnels 3 then 2 (oldest first)", got)
	}
	// theirs[1] was moved at t0+5s; its tunnel opened after came back: left
	// alone under this ring. One opened before is still asked.
	tunnels = append(tunnels, Tunnel{ID: 6, Key: theirs[1], Opened: t0.Add(6 * time.Second), Movable: true})
	got = Misplaced("a", r, tunnels, map[string]time.Time{theirs[1]: t0.Add(5 * time.Second)})
	if len(got) != 2 || got[0].ID != 3 || got[1].ID != 2 {
		t.Fatalf("with a key that came back: %+v, want 3 and 2, not 6", got)
	}
	if got := Misplaced("a", &ring.Ring{}, tunnels, nil); len(got) != 0 {
		t.Fatalf("an empty ring (no healthy instance) moved %+v", got)
	}
}

// fakeRelay is the relay's side of the mover.
type fakeRelay struct {
	open  map[uint64]Tunnel
	asked []uint64
}

func (f *fakeRelay) tunnels() []Tunnel {
	var out []Tunnel
	for _, t := range f.open {
		out = append(out, t)
	}
	return out
}

func (f *fakeRelay) ask(id uint64) bool {
	if _, ok := f.open[id]; !ok {
		return false
	}
	f.asked = append(f.asked, id)
	return true
}

func TestMoverPacesAndMeasures(t *testing.T) {
	before := ringOf("a", "b", "c")
	relay := &fakeRelay{open: map[uint64]Tunnel{}}
	for i, u := range usersHomedOn(before, "a", 40) {
		relay.open[uint64(i+1)] = Tunnel{ID: uint64(i + 1), Key: u, Opened: t0, Movable: true}
	}
	reg := prometheus.NewRegistry()
	m := NewMover(reg)
	m.Self, m.Rate, m.Settle, m.Ring = "a", 5, time.Second, RingConfig{EntriesPerHost: entries, MaxSize: maxSize}
	m.Tunnels, m.Ask = relay.tunnels, relay.ask
	draining := false
	m.Paused = func() bool { return draining }

	m.SetFleet([]string{"c", "a", "b"}, t0)
	m.Step(t0.Add(time.Second))
	if len(relay.asked) != 0 {
		t.Fatalf("asked %v with every user at home", relay.asked)
	}
	// d joins: the users whose home it now is move, one per step.
	after := ringOf("a", "b", "c", "d")
	var moving []uint64
	for id, tn := range relay.open {
		if after.Home(tn.Key) == "d" {
			moving = append(moving, id)
		}
	}
	keys := map[uint64]string{}
	for id, tn := range relay.open {
		keys[id] = tn.Key
	}
	if len(moving) < 3 {
		t.Fatalf("only %d of 40 users have d as their new home", len(moving))
	}
	// d's check flaps: the ring changes twice; nobody moves until it has
	// stayed the same for Settle.
	flapped := t0.Add(9 * time.Second)
	m.SetFleet([]string{"a", "b", "c", "d"}, flapped)
	m.SetFleet([]string{"a", "b", "c"}, flapped.Add(300*time.Millisecond))
	changed := t0.Add(10 * time.Second)
	m.SetFleet([]string{"a", "b", "c", "d"}, changed)
	m.Step(changed.Add(900 * time.Millisecond))
	if len(relay.asked) != 0 {
		t.Fatalf("asked %v while the ring was settling", relay.asked)
	}
	changed = changed.Add(time.Second)
	for i := range moving {
		now := changed.Add(time.Duration(i+1) * 200 * time.Millisecond)
		m.Step(now)
		if len(relay.asked) != i+1 {
			t.Fatalf("step %d: asked %v, want one more", i, relay.asked)
		}
		id := relay.asked[i]
		if after.Home(relay.open[id].Key) != "d" {
			t.Fatalf("asked tunnel %d, whose home is still a", id)
		}
		if i == 0 {
			continue // the first one's client does not follow (busy): it stays open
		}
		delete(relay.open, id)
		m.Closed(id, now.Add(50*time.Millisecond))
	}
	if got := testutil.ToFloat64(m.metrics.started); got != float64(len(moving)) {
		t.Fatalf("started %v, want %d", got, len(moving))
	}
	if got := testutil.ToFloat64(m.metrics.completed); got != float64(len(moving)-1) {
		t.Fatalf("completed %v, want %d", got, len(moving)-1)
	}
	// The one that did not follow is not asked again before the ask expires...
	m.Step(changed.Add(30 * time.Second))
	if len(relay.asked) != len(moving) {
		t.Fatalf("asked again before the expiry: %v", relay.asked)
	}
	// ...then it counts as failed and is asked again.
	later := changed.Add(askExpiry + 5*time.Second)
	m.Step(later)
	if got := testutil.ToFloat64(m.metrics.failed); got != 1 || len(relay.asked) != len(moving)+1 || relay.asked[len(moving)] != relay.asked[0] {
		t.Fatalf("failed %v, asked %v: want the first one failed and asked again", got, relay.asked)
	}
	first := relay.asked[0]
	delete(relay.open, first)
	m.Closed(first, later.Add(time.Second))
	// Balanced: nothing misplaced, the time since the ring changed observed once.
	m.Step(later.Add(2 * time.Second))
	if n := testutil.CollectAndCount(reg, "climesh_sidecar_rebalance_seconds"); n != 1 {
		t.Fatalf("rebalance histogram: %d series", n)
	}
	if got := testutil.ToFloat64(m.metrics.misplaced); got != 0 {
		t.Fatalf("misplaced %v after the moves", got)
	}
	// A user whose new tunnel came back here (were Envoy to disagree with the
	// ring) is not asked again under this ring.
	asked := len(relay.asked)
	relay.open[999] = Tunnel{ID: 999, Key: keys[moving[1]], Opened: later.Add(3 * time.Second), Movable: true}
	m.Step(later.Add(4 * time.Second))
	if len(relay.asked) != asked {
		t.Fatalf("a tunnel that came back after its move was asked again: %v", relay.asked[asked:])
	}
	// A draining instance starts no move.
	m.SetFleet([]string{"a", "b", "c", "d", "e"}, later.Add(5*time.Second))
	draining = true
	m.Step(later.Add(6 * time.Second))
	if len(relay.asked) != asked {
		t.Fatal("a draining instance asked a tunnel to move")
	}
}
