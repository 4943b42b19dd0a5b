// Package rebalance moves a sidecar's long-lived tunnels to their user's home
// instance after the fleet changes, between turns, at a bounded pace.
//
// Envoy sends a new tunnel to the home of its hash key (the user, by default)
// on the pool's ring; a tunnel opened before a fleet change stays where it
// was. Where sessions live on storage every instance shares, nothing but the
// open tunnel ties a user to an instance, so the sidecar asks such a tunnel's
// client to move (protocol.MethodMove) when the ring — computed here exactly
// as Envoy computes it (package ring), from the same Consul health the
// xds-server reads — gives its key a home other than the one it had when the
// tunnel opened. A tunnel is judged against where it was placed, not against
// this instance: one that bounded load (hash_balance_factor) or panic mode put
// here, or that came back after a move because Envoy placed it here again, is
// not moved until its home changes again — no loop, whatever Envoy's reasons.
// The client moves only with nothing in flight (between turns); the sidecar
// starts at most Rate moves a second.
//
// Data flows one way: the fleet (SetFleet) and the relay's tunnels (Tunnels)
// in, asks (Ask) out. Which tunnels are misplaced is a pure function
// (Misplaced).
package rebalance

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/climesh/climesh/ring"
)

// Tunnel is what the mover knows of one open tunnel.
type Tunnel struct {
	ID      uint64
	Key     string    // the value Envoy hashes for the pool (the user, by default)
	Opened  time.Time // when it was accepted
	Movable bool      // its client follows protocol.MethodMove
	Placed  string    // its key's home when it opened (the mover's record)
}

// Misplaced lists, oldest first, the movable tunnels whose key's home on r is
// neither self nor where the key's home was when the tunnel opened (Placed):
// the ring moved their home since. A tunnel without a key (Envoy hashed
// nothing, so placed it anywhere) is never misplaced.
func Misplaced(self string, r ring.Placement, tunnels []Tunnel) []Tunnel {
	var out []Tunnel
	for _, t := range tunnels {
		if !t.Movable || t.Key == "" {
			continue
		}
		if home := r.Home(t.Key); home != "" && home != self && home != t.Placed {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b Tunnel) int { return a.Opened.Compare(b.Opened) })
	return out
}

// RingConfig is the pool's hashing as the xds-server configures it (the
// pool's lb): a ring (ring_hash: ring_entries_per_host, or min_ring_size, and
// max_ring_size) or a Maglev table (maglev: table_size).
type RingConfig struct {
	Maglev                           bool
	EntriesPerHost, MinSize, MaxSize uint64
	TableSize                        uint64
}

// placement is where Envoy sends each key among the healthy hosts (sorted by id).
func (c RingConfig) placement(healthy []string) ring.Placement {
	if c.Maglev {
		return ring.NewMaglev(healthy, c.TableSize)
	}
	return ring.New(healthy, ring.Size(c.EntriesPerHost, c.MinSize, c.MaxSize, len(healthy)), c.MaxSize)
}

// Mover asks misplaced tunnels to move. Tunnels and Ask are the relay's.
type Mover struct {
	Self string
	Ring RingConfig
	// Rate bounds the moves this instance starts, per second.
	Rate float64
	// Settle is how long the ring must stay the same before moves start: a
	// health check that flaps moves nobody back and forth.
	Settle time.Duration
	// Tunnels lists the open tunnels.
	Tunnels func() []Tunnel
	// Ask sends the move to a tunnel; false when it is gone. Its client moves
	// at its first moment with nothing in flight: at once between turns, or
	// when the turn running ends.
	Ask func(id uint64) bool
	// Paused, when true, starts no move (the instance drains: its tunnels
	// close by themselves).
	Paused func() bool
	Log    *zap.Logger

	metrics moverMetrics

	// Now is the clock (time.Now when nil).
	Now func() time.Time

	mu        sync.Mutex
	hosts     []string
	ring      ring.Placement
	prev      ring.Placement       // the ring before the last change
	changedAt time.Time            // the first ring change not yet balanced (zero: balanced)
	setAt     time.Time            // the ring's last change
	placed    map[uint64]string    // open tunnel -> its key's home when it opened
	asked     map[uint64]time.Time // tunnel -> when a move was asked (until it closes or the ask expires)
}

type moverMetrics struct {
	started, completed, failed prometheus.Counter
	balanced                   prometheus.Histogram
	misplaced                  prometheus.Gauge
}

// NewMover registers the mover's metrics on reg.
func NewMover(reg prometheus.Registerer) *Mover {
	f := promauto.With(reg)
	return &Mover{
		metrics: moverMetrics{
			started: f.NewCounter(prometheus.CounterOpts{Name: "climesh_sidecar_moves_started_total",
				Help: "Tunnels asked to move to their key's home instance (between turns, after a fleet change)."}),
			completed: f.NewCounter(prometheus.CounterOpts{Name: "climesh_sidecar_moves_completed_total",
				Help: "Moves asked whose tunnel closed within " + askExpiry.String() + " (the client went to its home)."}),
			failed: f.NewCounter(prometheus.CounterOpts{Name: "climesh_sidecar_moves_failed_total",
				Help: "Moves asked whose tunnel was still open " + askExpiry.String() + " later (the client was busy or did not follow); asked again."}),
			balanced: f.NewHistogram(prometheus.HistogramOpts{Name: "climesh_sidecar_rebalance_seconds",
				Help:    "From a change of the pool's ring (the first of those that came before balance) to no tunnel here belonging elsewhere.",
				Buckets: prometheus.ExponentialBuckets(0.1, 2, 14)}),
			misplaced: f.NewGauge(prometheus.GaugeOpts{Name: "climesh_sidecar_misplaced_tunnels",
				Help: "Open tunnels whose key's home is another instance (movable ones)."}),
		},
		placed: map[uint64]string{},
		asked:  map[uint64]time.Time{},
	}
}

// askExpiry is how long a tunnel asked to move has to close before the ask
// counts as failed (and is repeated): long enough for the turn running to end.
const askExpiry = time.Minute

// SetFleet takes the pool's healthy instances (their hash keys: instance ids).
// A different set makes a new ring.
func (m *Mover) SetFleet(healthy []string, now time.Time) {
	healthy = slices.Sorted(slices.Values(healthy))
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ring != nil && slices.Equal(healthy, m.hosts) {
		return
	}
	first := m.ring == nil
	m.hosts = healthy
	m.prev, m.ring = m.ring, m.Ring.placement(healthy)
	m.setAt = now
	if !first && m.changedAt.IsZero() {
		m.changedAt = now
	}
	if m.Log != nil {
		m.Log.Info("the pool's ring changed", zap.Strings("healthy", healthy))
	}
}

// Opened tells the mover a tunnel opened: its key's home now is where it was
// placed — by the ring before the last change while that change is younger
// than Settle, for Envoy may not have applied it yet when the tunnel came
// (judged by the old ring, a tunnel Envoy placed by the new one is at its
// home, and one it placed by the old one moves).
func (m *Mover) Opened(id uint64, key string) {
	now := time.Now()
	if m.Now != nil {
		now = m.Now()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.ring == nil:
	case m.prev != nil && now.Sub(m.setAt) < m.Settle:
		m.placed[id] = m.prev.Home(key)
	default:
		m.placed[id] = m.ring.Home(key)
	}
}

// Closed tells the mover a tunnel closed.
func (m *Mover) Closed(id uint64, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.placed, id)
	if at, ok := m.asked[id]; ok {
		delete(m.asked, id)
		if now.Sub(at) <= askExpiry {
			m.metrics.completed.Inc()
		}
	}
}

// Run asks one misplaced tunnel to move every 1/Rate until ctx ends.
func (m *Mover) Run(ctx context.Context) {
	every := time.Duration(float64(time.Second) / max(m.Rate, 0.01))
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.Step(now)
		}
	}
}

// Step starts at most one move.
func (m *Mover) Step(now time.Time) {
	m.mu.Lock()
	// An instance out of its own ring (its check failing, as under load) starts
	// no move: Envoy only stops sending it new tunnels, and a flap would
	// otherwise send its users away and back. Removing a host changes no other
	// key's home, so nobody else moves for it either.
	r, settling := m.ring, now.Sub(m.setAt) < m.Settle || !slices.Contains(m.hosts, m.Self)
	for id, at := range m.asked {
		if now.Sub(at) > askExpiry {
			delete(m.asked, id)
			m.metrics.failed.Inc()
		}
	}
	m.mu.Unlock()
	if r == nil || settling || (m.Paused != nil && m.Paused()) {
		return
	}
	tunnels := m.Tunnels()
	m.mu.Lock()
	for i, t := range tunnels {
		p, ok := m.placed[t.ID]
		if !ok { // opened before there was a ring: placed as the ring says now
			p = r.Home(t.Key)
			m.placed[t.ID] = p
		}
		tunnels[i].Placed = p
	}
	misplaced := Misplaced(m.Self, r, tunnels)
	m.metrics.misplaced.Set(float64(len(misplaced)))
	if len(misplaced) == 0 {
		if !m.changedAt.IsZero() {
			m.metrics.balanced.Observe(now.Sub(m.changedAt).Seconds())
			if m.Log != nil {
				m.Log.Info("balanced: no tunnel here belongs elsewhere", zap.Duration("since_ring_change", now.Sub(m.changedAt)))
			}
			m.changedAt = time.Time{}
		}
		m.mu.Unlock()
		return
	}
	var candidates []Tunnel
	for _, t := range misplaced {
		if _, pending := m.asked[t.ID]; !pending {
			candidates = append(candidates, t)
		}
	}
	m.mu.Unlock()
	for _, t := range candidates {
		ok := m.Ask(t.ID)
		m.mu.Lock()
		m.asked[t.ID] = now // failed too: not asked again before the expiry
		m.mu.Unlock()
		if ok {
			m.metrics.started.Inc()
			return
		}
	}
}
