package datapath

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/attach"
	"github.com/climesh/climesh/session/jsonrpc"
)

// Capacity keeps a CLI's active sessions — those attached on an open tunnel, which
// the CLI holds in memory — at or under Max. Past it, the least recently used
// session with no turn running is released with session.destroy: its state stays
// on disk, and the tunnel that had it resumes it on demand, with the options it
// was created or resumed with, when its client next names it. The client never
// learns. The cap is soft: when every session is in a turn, none is released.
type Capacity struct {
	Max int // 0: no cap
	Log *zap.Logger
	// Evicted, Resumed and Changed feed metrics; any may be nil.
	Evicted func()
	Resumed func()
	Changed func(active int)

	mu     sync.Mutex
	active map[string]*activeSession
	now    func() time.Time
}

type activeSession struct {
	lastUsed time.Time
	holders  map[*tunnelSessions]struct{}
}

// Active is the number of sessions held in memory.
func (c *Capacity) Active() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.active)
}

func (c *Capacity) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// attach records that ts has session id, and releases what is over the cap.
func (c *Capacity) attach(ts *tunnelSessions, id string) {
	c.mu.Lock()
	if c.active == nil {
		c.active = map[string]*activeSession{}
	}
	s := c.active[id]
	if s == nil {
		s = &activeSession{holders: map[*tunnelSessions]struct{}{}}
		c.active[id] = s
	}
	s.holders[ts] = struct{}{}
	s.lastUsed = c.clock()
	victims := c.overCap(id)
	c.changed(len(c.active))
	c.mu.Unlock()
	for vid, holders := range victims {
		c.Log.Info("session released: over capacity", zap.String("session_id", vid), zap.Int("max", c.Max))
		for _, h := range holders {
			h.release(vid)
		}
		if c.Evicted != nil {
			c.Evicted()
		}
	}
}

// overCap picks the sessions to release, least recently used first, never keep
// nor one in a turn. Called with c.mu held.
func (c *Capacity) overCap(keep string) map[string][]*tunnelSessions {
	if c.Max <= 0 {
		return nil
	}
	victims := map[string][]*tunnelSessions{}
	for len(c.active) > c.Max {
		var lru string
		for id, s := range c.active {
			if id == keep || c.busy(id, s) {
				continue
			}
			if lru == "" || s.lastUsed.Before(c.active[lru].lastUsed) {
				lru = id
			}
		}
		if lru == "" {
			c.Log.Warn("over capacity with every session in a turn", zap.Int("active", len(c.active)), zap.Int("max", c.Max))
			break
		}
		for h := range c.active[lru].holders {
			victims[lru] = append(victims[lru], h)
		}
		delete(c.active, lru)
	}
	return victims
}

func (c *Capacity) busy(id string, s *activeSession) bool {
	for h := range s.holders {
		if h.busy != nil && h.busy(id) {
			return true
		}
	}
	return false
}

// touch marks a session used now.
func (c *Capacity) touch(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.active[id]; s != nil {
		s.lastUsed = c.clock()
	}
}

// detach forgets ts's hold on the sessions ids (the tunnel closed, or the client
// destroyed or deleted them).
func (c *Capacity) detach(ts *tunnelSessions, ids ...string) {
	c.mu.Lock()
	for _, id := range ids {
		if s := c.active[id]; s != nil {
			delete(s.holders, ts)
			if len(s.holders) == 0 {
				delete(c.active, id)
			}
		}
	}
	c.changed(len(c.active))
	c.mu.Unlock()
}

// changed reports the active count; called with c.mu held, so reports keep their order.
func (c *Capacity) changed(n int) {
	if c.Changed != nil {
		c.Changed(n)
	}
}

// tunnelSessions follows the sessions one tunnel has attached, with the params
// to resume each, and runs the sidecar's own calls on the tunnel's CLI connection.
type tunnelSessions struct {
	cap  *Capacity
	log  *zap.Logger
	cli  func([]byte) error // writes one frame to this tunnel's CLI connection
	busy func(id string) bool

	own      *jsonrpc.Caller // the sidecar's own requests on this connection
	attached attach.Tracker  // the sessions this tunnel attached, with their resume params

	mu       sync.Mutex
	released map[string]chan struct{} // released sessions; closed once the CLI answered the destroy
}

func newTunnelSessions(c *Capacity, log *zap.Logger, cli func([]byte) error, busy func(string) bool) *tunnelSessions {
	return &tunnelSessions{cap: c, log: log, cli: cli, busy: busy, released: map[string]chan struct{}{},
		own: jsonrpc.NewCaller(ownIDPrefix, func(b []byte) error { return cli(jsonrpc.Frame(b)) })}
}

// ownIDPrefix begins the ids of the sidecar's own requests on a tunnel's CLI
// connection; a client may not use it (see reservedIDPrefix).
const ownIDPrefix = "climesh-sidecar-"

// fromClient looks at a request about to be forwarded to the CLI. A session the
// sidecar released is resumed first, so that the request finds it; an error
// means the resume failed (the request is forwarded anyway and the CLI answers it).
// A non-nil answer is the request's answer, given here: the client detaching a
// session the sidecar already released (the CLI no longer has it to detach).
func (ts *tunnelSessions) fromClient(ctx context.Context, m jsonrpc.Message) (answer []byte, err error) {
	if m.Kind != jsonrpc.Request {
		return nil, nil
	}
	if detached := ts.attached.Request(m); detached != "" {
		ts.mu.Lock()
		_, released := ts.released[detached]
		delete(ts.released, detached)
		ts.mu.Unlock()
		ts.cap.detach(ts, detached)
		if released && m.Method != protocol.MethodSessionDelete {
			answer, _ = jsonrpc.ResultResponse(m.ID, struct{}{})
		}
		return answer, nil
	}
	switch m.Method {
	case protocol.MethodSessionCreate, protocol.MethodSessionResume, protocol.MethodSessionDestroy,
		protocol.MethodSessionDetach, protocol.MethodSessionDelete:
		return nil, nil
	}
	if m.SessionID == "" {
		return nil, nil
	}
	ts.mu.Lock()
	destroyed, released := ts.released[m.SessionID]
	ts.mu.Unlock()
	params, _ := ts.attached.ResumeParams(m.SessionID)
	if !released {
		ts.cap.touch(m.SessionID)
		return nil, nil
	}
	// The destroy must be done before the resume, or it would undo it.
	select {
	case <-destroyed:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ts.mu.Lock()
	delete(ts.released, m.SessionID)
	ts.mu.Unlock()
	if _, err := ts.own.Call(ctx, protocol.MethodSessionResume, params); err != nil {
		ts.mu.Lock()
		ts.released[m.SessionID] = destroyed // the next request tries again
		ts.mu.Unlock()
		return nil, fmt.Errorf("resume released session %s: %w", m.SessionID, err)
	}
	ts.log.Debug("released session resumed on demand", zap.String("session_id", m.SessionID))
	if ts.cap.Resumed != nil {
		ts.cap.Resumed()
	}
	ts.cap.attach(ts, m.SessionID)
	return nil, nil
}

// fromCLI looks at what the CLI sends; true means the message answers one of the
// sidecar's own requests and is not the client's.
func (ts *tunnelSessions) fromCLI(m jsonrpc.Message) bool {
	if m.Kind != jsonrpc.Response {
		return false
	}
	if ts.own.Deliver(m) {
		return true
	}
	if id := ts.attached.Answer(m); id != "" {
		ts.mu.Lock()
		delete(ts.released, id)
		ts.mu.Unlock()
		ts.cap.attach(ts, id)
	}
	return ts.own.Owns(m.IDKey()) // a late answer to a call that gave up: nobody's
}

// release sends session.destroy for id on this tunnel's CLI connection; the next
// request naming id resumes it.
func (ts *tunnelSessions) release(id string) {
	if _, ok := ts.attached.ResumeParams(id); !ok {
		return
	}
	ts.mu.Lock()
	done := make(chan struct{})
	ts.released[id] = done
	ts.mu.Unlock()
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := ts.own.Call(ctx, protocol.MethodSessionDestroy, map[string]string{"sessionId": id}); err != nil {
			ts.log.Warn("release of an idle session failed", zap.String("session_id", id), zap.Error(err))
		}
	}()
}

// close forgets the tunnel's sessions: the CLI shuts them down with the connection.
func (ts *tunnelSessions) close() {
	ids := ts.attached.Reset()
	ts.own.Close(errors.New("the tunnel closed"))
	ts.cap.detach(ts, ids...)
}
