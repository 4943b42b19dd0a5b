package xds

import (
	"context"
	"time"

	"golang.org/x/sync/semaphore"
)

// A change to a large pool is one response of hundreds of kilobytes to every
// Envoy at once. gRPC queues each stream's encoded response in full until it is
// written, so without a bound the server holds streams × response size at the
// peak of a change (1.1 GB for 1,000 Envoys × 10,000 endpoints, bench/fanout).
// The pacer bounds the bytes of large responses that are sent and not yet
// answered: a stream waits for room before it sends one, and gives the room back
// when Envoy ACKs or NACKs that response, when the stream closes, or after
// pacedHold — an Envoy that never answers does not hold it longer. Every stream
// still receives every change; the ones that wait go next, in the order they
// asked (the semaphore is FIFO).
//
// A stream that already holds room sends on without waiting for more: it is the
// stream's own goroutine that reads its ACKs, so a stream that waited while
// holding room could never give it back.
type pacer struct {
	ctx    context.Context // the server's: ends the waits when it stops
	sem    *semaphore.Weighted
	window int64
}

// pacedMin is the size from which a response is paced; listeners, routes and
// small pools pass at once.
const pacedMin = 64 << 10

// pacedHold is how long a response keeps its room without an answer.
const pacedHold = 10 * time.Second

func newPacer(ctx context.Context, window int64) *pacer {
	if window <= 0 {
		return nil
	}
	return &pacer{ctx: ctx, sem: semaphore.NewWeighted(window), window: window}
}

// room is what a response of size bytes takes from the window: all of it, for a
// response larger than the window, which then goes alone.
func (pc *pacer) room(size int) int64 { return min(int64(size), pc.window) }

// grant is room a stream holds, given back once.
type grant struct {
	pc    *pacer
	n     int64
	nonce string // the response that took it
	timer *time.Timer
}

// pace blocks until the response of size bytes that key is about to send with
// nonce has room, and records the grant on the stream. It returns at once for a
// small response, a stream that holds room already, or a publisher without a
// window.
func (p *Publisher) pace(key streamKey, nonce string, size int) {
	pc := p.pacer
	if pc == nil || size < pacedMin {
		return
	}
	p.mu.Lock()
	s := p.streams[key]
	holds := s == nil || s.grant != nil
	p.mu.Unlock()
	if holds {
		return
	}
	n := pc.room(size)
	start := time.Now()
	if err := pc.sem.Acquire(pc.ctx, n); err != nil {
		return // the server is stopping
	}
	p.metrics.paceWait.Observe(time.Since(start).Seconds())
	p.metrics.pacedBytes.Add(float64(n))
	g := &grant{pc: pc, n: n, nonce: nonce}
	p.mu.Lock()
	defer p.mu.Unlock()
	s = p.streams[key]
	if s == nil {
		p.release(g)
		return
	}
	s.grant = g
	g.timer = time.AfterFunc(pacedHold, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if s.grant == g {
			s.grant = nil
			p.release(g)
		}
	})
}

// answered gives back s's room when nonce is the response that took it. p.mu held.
func (p *Publisher) answered(s *streamState, nonce string) {
	if g := s.grant; g != nil && g.nonce == nonce {
		g.timer.Stop()
		s.grant = nil
		p.release(g)
	}
}

// dropGrant gives back a closing stream's room. p.mu held.
func (p *Publisher) dropGrant(s *streamState) {
	if g := s.grant; g != nil {
		if g.timer != nil {
			g.timer.Stop()
		}
		s.grant = nil
		p.release(g)
	}
}

func (p *Publisher) release(g *grant) {
	p.metrics.pacedBytes.Sub(float64(g.n))
	g.pc.sem.Release(g.n)
}
