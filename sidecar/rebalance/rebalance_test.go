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
	before, r := ringOf("a", "b", "c"), ringOf("a", "b", "c", "d")
	mine, theirs := usersHomedOn(r, "a", 2), usersHomedOn(r, "d", 4)
	tunnels := []Tunnel{
		{ID: 1, Key: mine[0], Opened: t0, Movable: true, Placed: "a"},
		{ID: 2, Key: theirs[0], Opened: t0.Add(2 * time.Second), Movable: true, Placed: before.Home(theirs[0])},
		{ID: 3, Key: theirs[1], Opened: t0.Add(time.Second), Movable: true, Placed: before.Home(theirs[1])},
		{ID: 4, Key: theirs[2], Opened: t0, Movable: false, Placed: "a"}, // a client that cannot move
		{ID: 5, Key: mine[1], Opened: t0, Movable: true, Placed: "a"},
		// It came back after a move (Envoy placed it here again): its home
		// has not changed since it opened.
		{ID: 6, Key: theirs[3], Opened: t0.Add(6 * time.Second), Movable: true, Placed: "d"},
		// Bounded load put it here, away from its home b, which did not change.
		{ID: 7, Key: usersHomedOn(r, "b", 1)[0], Opened: t0, Movable: true, Placed: "b"},
		// No key: Envoy hashed nothing.
		{ID: 8, Key: "", Opened: t0, Movable: true, Placed: ""},
	}
	got := Misplaced("a", r, tunnels)
	if len(got) != 2 || got[0].ID != 3 || got[1].ID != 2 {
		t.Fatalf("misplaced %+v, want tunnels 3 then 2 (oldest first)", got)
	}
	if got := Misplaced("a", &ring.Ring{}, tunnels); len(got) != 0 {
		t.Fatalf("an empty ring (no healthy instance) moved %+v", got)
	}
}

// Two tunnels of one key (two clients of a user, or a tenant hashed as one)
// that Envoy keeps placing here are asked once each, then never again under
// this ring: no loop, whatever Envoy's reason.
func TestSharedKeyDoesNotLoop(t *testing.T) {
	r3, r4 := ringOf("a", "b", "c"), ringOf("a", "b", "c", "d")
	key := ""
	for i := 0; key == ""; i++ { // a user of a's that the fourth host takes
		if u := fmt.Sprintf("user-%d", i); r3.Home(u) == "a" && r4.Home(u) == "d" {
			key = u
		}
	}
	relay := &fakeRelay{open: map[uint64]Tunnel{}}
	m := NewMover(prometheus.NewRegistry())
	m.Self, m.Rate, m.Ring = "a", 5, RingConfig{EntriesPerHost: entries, MaxSize: maxSize}
	m.Tunnels, m.Ask = relay.tunnels, relay.ask
	m.SetFleet([]string{"a", "b", "c"}, t0)
	next := uint64(1)
	open := func(at time.Time) {
		relay.open[next] = Tunnel{ID: next, Key: key, Opened: at, Movable: true}
		m.Opened(next, key)
		next++
	}
	open(t0)
	open(t0)
	m.SetFleet([]string{"a", "b", "c", "d"}, t0.Add(time.Second))
	now := t0.Add(2 * time.Second)
	for range 50 {
		now = now.Add(200 * time.Millisecond)
		m.Step(now)
		// Every tunnel asked comes straight back (Envoy places the key here).
		for _, id := range relay.asked {
			if _, ok := relay.open[id]; ok {
				delete(relay.open, id)
				m.Closed(id, now)
				open(now)
			}
		}
	}
	if len(relay.asked) != 2 {
		t.Fatalf("asked %d times for two tunnels that keep coming back, want 2", len(relay.asked))
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
	m.Opened(999, keys[moving[1]])
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

// A tunnel that opens just after the ring changed may have been placed by
// Envoy on the old ring: it is judged by the old one until the change is
// Settle old — moved if it sits at its old home, left alone at its new one.
func TestTunnelOpenedAsTheRingChanges(t *testing.T) {
	r3, r4 := ringOf("a", "b", "c"), ringOf("a", "b", "c", "d")
	key := ""
	for i := 0; key == ""; i++ {
		if u := fmt.Sprintf("user-%d", i); r3.Home(u) == "a" && r4.Home(u) == "d" {
			key = u
		}
	}
	relay := &fakeRelay{open: map[uint64]Tunnel{}}
	clock := t0
	m := NewMover(prometheus.NewRegistry())
	m.Self, m.Rate, m.Settle, m.Ring = "a", 5, time.Second, RingConfig{EntriesPerHost: entries, MaxSize: maxSize}
	m.Tunnels, m.Ask, m.Now = relay.tunnels, relay.ask, func() time.Time { return clock }
	m.SetFleet([]string{"a", "b", "c"}, t0)
	m.SetFleet([]string{"a", "b", "c", "d"}, t0.Add(10*time.Second))
	clock = t0.Add(10*time.Second + 300*time.Millisecond) // Envoy still on the old ring: it came here
	relay.open[1] = Tunnel{ID: 1, Key: key, Opened: clock, Movable: true}
	m.Opened(1, key)
	m.Step(t0.Add(12 * time.Second))
	if len(relay.asked) != 1 {
		t.Fatalf("asked %v: a tunnel the old ring placed here must move to its new home", relay.asked)
	}
}

// An instance whose own check fails (a flap under load) is out of its ring:
// it moves none of its users away, and when it is back nobody moves at all.
func TestNoMovesWhileOutOfItsOwnRing(t *testing.T) {
	r3 := ringOf("a", "b", "c")
	relay := &fakeRelay{open: map[uint64]Tunnel{}}
	m := NewMover(prometheus.NewRegistry())
	m.Self, m.Rate, m.Ring = "a", 5, RingConfig{EntriesPerHost: entries, MaxSize: maxSize}
	m.Tunnels, m.Ask = relay.tunnels, relay.ask
	m.SetFleet([]string{"a", "b", "c"}, t0)
	for i, u := range usersHomedOn(r3, "a", 10) {
		relay.open[uint64(i+1)] = Tunnel{ID: uint64(i + 1), Key: u, Opened: t0, Movable: true}
		m.Opened(uint64(i+1), u)
	}
	m.SetFleet([]string{"b", "c"}, t0.Add(time.Second)) // a's check fails
	for i := range 20 {
		m.Step(t0.Add(2*time.Second + time.Duration(i)*200*time.Millisecond))
	}
	m.SetFleet([]string{"a", "b", "c"}, t0.Add(10*time.Second)) // and passes again
	m.Step(t0.Add(11 * time.Second))
	if len(relay.asked) != 0 {
		t.Fatalf("asked %v: an instance out of its own ring moved its users", relay.asked)
	}
}
