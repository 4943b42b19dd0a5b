package datapath

import (
	"context"
	"sync"
	"time"

	"github.com/climesh/climesh/periodic"
	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
)

// turns counts the turns running through this sidecar, so that a drain can let
// them finish: a turn starts when a session.send is accepted and ends at the
// session's next session.idle or session.error on the same tunnel.
type turns struct {
	mu      sync.Mutex
	running int
	changed chan struct{} // closed and replaced on every change
	gauge   func(float64)
}

func (t *turns) add(n int) {
	t.mu.Lock()
	t.running += n
	if t.gauge != nil {
		t.gauge(float64(t.running))
	}
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
	t.mu.Unlock()
}

// Running is the number of turns in flight.
func (t *turns) Running() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running
}

// waitIdle blocks until no turn runs or ctx ends; it reports whether all finished.
func (t *turns) waitIdle(ctx context.Context) bool {
	for {
		t.mu.Lock()
		if t.running <= 0 {
			t.mu.Unlock()
			return true
		}
		if t.changed == nil {
			t.changed = make(chan struct{})
		}
		ch := t.changed
		t.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// tunnelTurns follows one tunnel's turns: the turns stage.
type tunnelTurns struct {
	all     *turns
	calls   *callTable // sends awaiting their answer
	mu      sync.Mutex
	running map[string]int // session -> turns in flight
	started map[string][]time.Time
	observe func(float64) // turn duration in seconds; may be nil
}

func newTunnelTurns(all *turns, calls *callTable) *tunnelTurns {
	return &tunnelTurns{all: all, calls: calls, running: map[string]int{}, started: map[string][]time.Time{}}
}

// busy reports whether a turn runs on session id, or a session.send for it awaits its answer.
func (tt *tunnelTurns) busy(id string) bool {
	tt.mu.Lock()
	running := tt.running[id] > 0
	tt.mu.Unlock()
	return running || tt.calls.sending(id)
}

func (tt *tunnelTurns) toCLI(context.Context, *flow)   {}
func (tt *tunnelTurns) refused(context.Context, *flow) {}

// toClient follows what the CLI sends: a send's answer starts a turn, the
// session's idle or error event ends it.
func (tt *tunnelTurns) toClient(_ context.Context, f *flow) {
	m := f.msg
	starts := m.Kind == jsonrpc.Response && f.call != nil && f.call.method == protocol.MethodSessionSend && f.call.sessionID != "" && !m.Failed()
	ends := m.Kind == jsonrpc.Notification && m.SessionID != "" && jsonrpc.EndsTurn(m)
	if !starts && !ends {
		return // most frames (streamed deltas, other answers): no lock
	}
	tt.mu.Lock()
	defer tt.mu.Unlock()
	switch {
	case starts:
		sid := f.call.sessionID
		tt.running[sid]++
		tt.started[sid] = append(tt.started[sid], time.Now())
		tt.all.add(1)
	case ends:
		if tt.running[m.SessionID] > 0 {
			tt.running[m.SessionID]--
			tt.all.add(-1)
			if s := tt.started[m.SessionID]; len(s) > 0 {
				if tt.observe != nil {
					tt.observe(time.Since(s[0]).Seconds())
				}
				tt.started[m.SessionID] = s[1:]
			}
		}
	}
}

// close forgets the tunnel's turns (the tunnel is gone: they are lost, not running).
func (tt *tunnelTurns) close() {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	n := 0
	for _, c := range tt.running {
		n += c
	}
	tt.running = map[string]int{}
	tt.all.add(-n)
}

// Drain stops taking tunnels and empties the instance without cutting a turn
// where the client lets it: every client that follows protocol.MethodMove is
// asked to move, which it does at its first moment with nothing in flight, so
// that a client taking turns back to back loses none. Then, for up to timeout
// in all, it lets the running turns of the other clients finish, and closes
// every tunnel left (clients reconnect elsewhere and resume). It reports how
// many turns were still running when it closed them.
func (rl *Relay) Drain(ctx context.Context, timeout time.Duration) int {
	rl.mu.Lock()
	rl.draining = true
	rl.mu.Unlock()
	rl.metrics.drains.Inc()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var asks sync.WaitGroup // at once, so that a client that does not read delays none
	for _, t := range rl.Tunnels() {
		if t.Movable {
			asks.Go(func() { rl.AskToMove(t.ID) })
		}
	}
	asks.Wait()
	periodic.Every(ctx, 20*time.Millisecond, func() bool {
		for _, t := range rl.Tunnels() {
			if t.Movable {
				return true // still open: its client has a turn running
			}
		}
		return false
	})
	rl.turns.waitIdle(ctx)
	left := rl.turns.Running()
	rl.CloseAll("instance draining: reconnect to resume")
	return left
}

// Draining reports whether Drain has begun.
func (rl *Relay) Draining() bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return rl.draining
}
