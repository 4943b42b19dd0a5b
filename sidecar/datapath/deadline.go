package datapath

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/decisionlog"
	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
)

// The deadline stage ends a turn that runs past the relay's TurnTimeout: a
// model endpoint that hangs mid-answer would otherwise hold the turn — and a
// collab session's lock, and the client — for as long as the CLI waits on it.
// When the time is up the sidecar asks the CLI to abort the turn
// (session.abort, with an id of its own), and ends the turn for everyone
// downstream at once with a session.error event of its own, taken through the
// outbound stages as if the CLI had sent it: the turns stage counts the turn
// over, the guard releases the session's lock, and the client's SDK sees the
// turn fail with a message that says why. What the CLI sends after its abort
// (its own idle) passes as usual.
type turnDeadline struct {
	timeout  time.Duration
	log      *zap.Logger
	writeCLI func(body []byte) error
	// inject takes a message through the outbound stages as if the CLI had
	// sent it; set once the pipeline exists.
	inject    func(m jsonrpc.Message) error
	onTimeout func()

	mu      sync.Mutex
	running map[string]int       // session -> turns started and not ended
	timers  map[string]*deadline // session -> the deadline of its running turn
	seq     int
	closed  bool
}

// deadlineIDPrefix begins the ids of the aborts the stage sends; under the
// sidecar's own prefix, so that no client can use it.
const deadlineIDPrefix = ownIDPrefix + "deadline-"

// deadline is one armed timer; expire acts only on the one still armed.
type deadline struct{ timer *time.Timer }

func newTurnDeadline(timeout time.Duration, log *zap.Logger, toCLI func([]byte) error, onTimeout func()) *turnDeadline {
	return &turnDeadline{timeout: timeout, log: log, writeCLI: toCLI, onTimeout: onTimeout,
		running: map[string]int{}, timers: map[string]*deadline{}}
}

func (d *turnDeadline) toCLI(context.Context, *flow) {}

func (d *turnDeadline) refused(context.Context, *flow) {}

// toClient arms a session's deadline when a send's answer starts a turn, and
// disarms it when the turn ends (re-arming for a turn the CLI queued behind
// it); the CLI's answers to the stage's own aborts go no further.
func (d *turnDeadline) toClient(_ context.Context, f *flow) {
	m := f.msg
	if m.Kind == jsonrpc.Response && strings.HasPrefix(m.IDKey(), `"`+deadlineIDPrefix) {
		f.drop = true
		return
	}
	starts := m.Kind == jsonrpc.Response && f.call != nil && f.call.method == protocol.MethodSessionSend && f.call.sessionID != "" && !m.Failed()
	ends := m.Kind == jsonrpc.Notification && m.SessionID != "" && jsonrpc.EndsTurn(m)
	if !starts && !ends {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if starts {
		sid := f.call.sessionID
		d.running[sid]++
		if d.timers[sid] == nil {
			d.arm(sid)
		}
		return
	}
	sid := m.SessionID
	if d.running[sid] == 0 {
		return
	}
	d.running[sid]--
	if dl := d.timers[sid]; dl != nil {
		dl.timer.Stop()
		delete(d.timers, sid)
	}
	if d.running[sid] > 0 {
		d.arm(sid) // the next queued turn gets the whole timeout
	} else {
		delete(d.running, sid)
	}
}

// arm starts sid's deadline. d.mu held.
func (d *turnDeadline) arm(sid string) {
	dl := &deadline{}
	dl.timer = time.AfterFunc(d.timeout, func() { d.expire(sid, dl) })
	d.timers[sid] = dl
}

// expire ends sid's running turns, if dl is still their deadline.
func (d *turnDeadline) expire(sid string, dl *deadline) {
	d.mu.Lock()
	if d.closed || d.timers[sid] != dl {
		d.mu.Unlock()
		return
	}
	delete(d.timers, sid)
	turns := d.running[sid]
	delete(d.running, sid)
	d.seq++
	id := fmt.Sprintf("%s%d", deadlineIDPrefix, d.seq)
	d.mu.Unlock()

	d.log.Warn("turn ran past --turn-timeout; aborted", zap.String("session_id", sid), zap.Duration("turn_timeout", d.timeout), zap.Int("turns", turns))
	if d.onTimeout != nil {
		d.onTimeout()
	}
	abort, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": protocol.MethodSessionAbort,
		"params": map[string]string{"sessionId": sid}})
	if err := d.writeCLI(jsonrpc.Frame(abort)); err != nil {
		d.log.Warn("abort of a timed-out turn not sent", zap.String("session_id", sid), zap.Error(err))
	}
	for range turns {
		ev, err := jsonrpc.ParseTrusted(turnTimeoutEvent(sid, d.timeout))
		if err == nil && d.inject != nil {
			err = d.inject(ev)
		}
		if err != nil {
			d.log.Warn("timed-out turn not reported to the client", zap.String("session_id", sid), zap.Error(err))
			return
		}
	}
}

func (d *turnDeadline) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for _, dl := range d.timers {
		dl.timer.Stop()
	}
}

// turnTimeoutEvent is the session.error event that ends a timed-out turn, in
// the CLI's shape (the SDK reads it as SessionErrorData).
func turnTimeoutEvent(sid string, timeout time.Duration) []byte {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": protocol.MethodSessionEvent, "params": map[string]any{
		"sessionId": sid,
		"event": map[string]any{
			"id": decisionlog.NewID(), "parentId": nil, "timestamp": time.Now().UTC().Format(time.RFC3339Nano), "ephemeral": true,
			"type": protocol.EventSessionError,
			"data": map[string]any{"errorType": "timeout",
				"message": fmt.Sprintf("climesh: the turn ran past the sidecar's --turn-timeout (%s) and was aborted", timeout)},
		},
	}})
	return b
}
