package datapath

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
)

// A tunnel's data path is a pipeline of stages over one reading of each frame,
// each direction in an explicit order (as Envoy runs its HTTP filters):
//
//	client → local answers → policy → capacity → collab lock → CLI
//	CLI    → capacity → calls → turns → metrics → policy → client
//
// A stage sees each message once per direction and may pass it on (possibly
// replaced), answer it instead, or drop it. Every client request that reaches
// the CLI has one record in the tunnel's call table (the calls stage), from the
// moment it is forwarded to its answer or the tunnel's end, and the answer
// reaches the later stages with it (flow.call); a request a stage stops ends
// there, and the stages that had let it through are told (refused), so that
// nothing waits for an answer that will not come.
type stage interface {
	// toCLI sees a client message on its way to the CLI.
	toCLI(ctx context.Context, f *flow)
	// toClient sees a CLI message on its way to the client; f.call is the client
	// request it answers, once the calls stage has found it.
	toClient(ctx context.Context, f *flow)
	// refused: a later stage stopped a request this stage let through.
	refused(ctx context.Context, f *flow)
	// close: the tunnel is gone.
	close()
}

// flow is one message going through the stages.
type flow struct {
	msg    jsonrpc.Message
	call   *call  // toClient: the client request a CLI answer answers
	answer []byte // a stage answers the client instead of forwarding
	drop   bool   // a stage drops the message
	// wait, set by a stage that must wait without blocking the tunnel (the
	// collab lock), runs off the loop; a non-nil answer stops the request there.
	wait func(ctx context.Context) []byte
	// claimed: the policy stage wrote the session's registry entry for this
	// request (a create), to be undone if it does not reach the CLI.
	claimed bool
}

func (f *flow) stopped() bool { return f.answer != nil || f.drop }

// call is one client request the CLI has to answer.
type call struct {
	method, sessionID string
	claimed           bool
	sent              time.Time
}

// callTable is a tunnel's client requests awaiting the CLI's answers.
type callTable struct {
	mu    sync.Mutex
	calls map[string]*call // canonical id -> call
	max   int
}

// admit says why a request may not be forwarded now: its id awaits an answer
// already, or the tunnel has max requests in flight.
func (t *callTable) admit(m jsonrpc.Message) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, inUse := t.calls[m.IDKey()]; inUse {
		return invalid(m.ID, "id: a request with this id awaits its answer")
	}
	if len(t.calls) >= t.max {
		return jsonrpc.ErrorResponse(m.ID, protocol.CodeUnavailable, fmt.Sprintf("too many requests in flight on this connection (limit %d)", t.max), nil)
	}
	return nil
}

func (t *callTable) add(f *flow) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.calls == nil {
		t.calls = map[string]*call{}
	}
	t.calls[f.msg.IDKey()] = &call{method: f.msg.Method, sessionID: f.msg.SessionID, claimed: f.claimed, sent: time.Now()}
}

// answered removes and returns the call m answers (nil: m answers none).
func (t *callTable) answered(m jsonrpc.Message) *call {
	if m.Kind != jsonrpc.Response {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.calls[m.IDKey()]
	delete(t.calls, m.IDKey())
	return c
}

// sending reports whether a session.send for session id awaits its answer.
func (t *callTable) sending(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.calls {
		if c.method == protocol.MethodSessionSend && c.sessionID == id {
			return true
		}
	}
	return false
}

// Errors that end a tunnel, by the side that failed.
var (
	errClientGone = errors.New("client gone")
	errCLIWrite   = errors.New("copilot CLI write failed")
)

// pipeline runs one tunnel's stages.
type pipeline struct {
	inbound  []stage // client → CLI, in order
	outbound []stage // CLI → client, in order
	stages   []stage // every stage once, closed with the tunnel
	calls    *callTable
	toCLIw   func(body []byte) error // one frame to the CLI
	toClient func(ctx context.Context, body []byte) error
	onError  func(err error)         // from a wait that ran off the loop
	sent     func(m jsonrpc.Message) // a message went to the CLI
	// fromCLIMu keeps the CLI→client direction one message at a time: the
	// CLI's reader and the deadline stage's own events both enter it.
	fromCLIMu sync.Mutex
}

// fromClient takes a client message through the inbound stages: forwarded to
// the CLI, answered, or dropped.
func (p *pipeline) fromClient(ctx context.Context, m jsonrpc.Message) error {
	f := &flow{msg: m}
	if m.Kind == jsonrpc.Request {
		if f.answer = p.calls.admit(m); f.answer != nil {
			return p.toClient(ctx, f.answer)
		}
	}
	for i, s := range p.inbound {
		s.toCLI(ctx, f)
		if f.wait != nil {
			p.waitThenForward(ctx, f, i)
			return nil
		}
		if f.stopped() {
			p.stop(ctx, f, i)
			if f.answer != nil {
				return p.toClient(ctx, f.answer)
			}
			return nil
		}
	}
	return p.forward(f)
}

// waitThenForward runs stage i's wait off the tunnel's loop (a shared session's
// turn: the tunnel keeps reading meanwhile), then stops or forwards.
func (p *pipeline) waitThenForward(ctx context.Context, f *flow, i int) {
	wait := f.wait
	f.wait = nil
	go func() {
		if f.answer = wait(ctx); f.answer != nil {
			p.stop(ctx, f, i)
			if err := p.toClient(ctx, f.answer); err != nil {
				p.onError(errClientGone)
			}
			return
		}
		for _, s := range p.inbound[i+1:] {
			s.toCLI(ctx, f)
			if f.stopped() { // no stage after the lock stops a request today
				return
			}
		}
		if err := p.forward(f); err != nil {
			p.onError(err)
		}
	}()
}

// stop tells the inbound stages before stage i that a request they let through
// ends here.
func (p *pipeline) stop(ctx context.Context, f *flow, i int) {
	if f.msg.Kind != jsonrpc.Request {
		return
	}
	for j := i - 1; j >= 0; j-- {
		p.inbound[j].refused(ctx, f)
	}
}

func (p *pipeline) forward(f *flow) error {
	if f.msg.Kind == jsonrpc.Request {
		p.calls.add(f)
	}
	if err := p.toCLIw(jsonrpc.Frame(f.msg.Raw)); err != nil {
		return fmt.Errorf("%w: %v", errCLIWrite, err)
	}
	p.sent(f.msg)
	return nil
}

// fromCLI takes a CLI message through the outbound stages: to the client, or dropped.
func (p *pipeline) fromCLI(ctx context.Context, m jsonrpc.Message) error {
	p.fromCLIMu.Lock()
	defer p.fromCLIMu.Unlock()
	if m.Kind != jsonrpc.Response && protocol.OwnMethod(m.Method) {
		return nil // climesh's word comes from the sidecar, never from a CLI
	}
	f := &flow{msg: m}
	for _, s := range p.outbound {
		if s.toClient(ctx, f); f.drop {
			return nil
		}
	}
	return p.toClient(ctx, f.msg.Raw)
}

func (p *pipeline) close() {
	for _, s := range p.stages {
		s.close()
	}
}

// The calls stage finds the client request a CLI answer answers.
func (t *callTable) toCLI(context.Context, *flow) {}
func (t *callTable) toClient(_ context.Context, f *flow) {
	f.call = t.answered(f.msg)
}
func (t *callTable) refused(context.Context, *flow) {}
func (t *callTable) close()                         {}

// PolicyPath is a Guard with a tunnel's call table, deciding messages as one
// tunnel does but without a CLI: for tests and benchmarks of the decisions.
type PolicyPath struct {
	*Guard
	calls callTable
}

// Inbound decides a client message: the message to forward, or the answer.
func (p *PolicyPath) Inbound(ctx context.Context, m jsonrpc.Message) (*jsonrpc.Message, []byte) {
	if m.Kind == jsonrpc.Request {
		p.calls.max = p.bounds().Pending
		if answer := p.calls.admit(m); answer != nil {
			return nil, answer
		}
	}
	fwd, answer := p.Guard.inbound(ctx, m)
	if fwd != nil && fwd.Kind == jsonrpc.Request {
		p.calls.add(&flow{msg: *fwd})
	}
	return fwd, answer
}

// Outbound decides a CLI message: the bytes for the client, or false to drop it.
func (p *PolicyPath) Outbound(ctx context.Context, m jsonrpc.Message) ([]byte, bool) {
	return p.Guard.outbound(ctx, m, p.calls.answered(m))
}
