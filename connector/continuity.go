package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/attach"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/tunnel"
)

// continuity remembers what the application attached over one SDK connection, so
// that when the tunnel under it closes (drain, crash, scale event) the connection
// can be re-established and every session resumed with the options the
// application gave (provider included). What is lost is only what was in flight:
// requests awaiting an answer get an error, and a turn that was running gets a
// session.error event — the application sees an error, never a dead client.
type continuity struct {
	out   io.Writer
	outMu sync.Mutex

	mu       sync.Mutex
	pending  map[string]sdkCall // SDK request id -> the call
	attached attach.Tracker     // sessions attached, with their resume params
	running  map[string]bool    // sessions with a turn in flight
	asked    map[string]bool    // the CLI's requests to the application, awaiting its answer
	own      *jsonrpc.Caller    // our own requests on the current tunnel (restore)
}

type sdkCall struct {
	method, sessionID string
	params            json.RawMessage
}

func newContinuity(out io.Writer) *continuity {
	return &continuity{out: out, pending: map[string]sdkCall{}, running: map[string]bool{}, asked: map[string]bool{}}
}

func (c *continuity) write(msg []byte) error {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	_, err := c.out.Write(jsonrpc.Frame(msg))
	return err
}

// fromSDK notes a message the application sends.
func (c *continuity) fromSDK(body []byte) {
	m, err := jsonrpc.ParseTrusted(body)
	if err != nil {
		return
	}
	if m.Kind == jsonrpc.Response {
		c.mu.Lock()
		delete(c.asked, m.IDKey())
		c.mu.Unlock()
		return
	}
	if m.Kind != jsonrpc.Request {
		return
	}
	c.mu.Lock()
	c.pending[m.IDKey()] = sdkCall{method: m.Method, sessionID: m.SessionID, params: json.RawMessage(m.Params)}
	if detached := c.attached.Request(m); detached != "" {
		delete(c.running, detached)
	}
	c.mu.Unlock()
}

// fromEdge notes a message for the application; false means it was ours.
func (c *continuity) fromEdge(body []byte) bool {
	m, err := jsonrpc.ParseTrusted(body)
	if err != nil {
		return true
	}
	switch m.Kind {
	case jsonrpc.Response:
		c.mu.Lock()
		own := c.own
		c.mu.Unlock()
		if own != nil && (own.Deliver(m) || own.Owns(m.IDKey())) {
			return false // ours, answered or given up on
		}
		c.mu.Lock()
		call, ok := c.pending[m.IDKey()]
		delete(c.pending, m.IDKey())
		c.mu.Unlock()
		c.attached.Answer(m)
		if ok && call.method == protocol.MethodSessionSend && !m.Failed() {
			c.mu.Lock()
			c.running[call.sessionID] = true
			c.mu.Unlock()
		}
	case jsonrpc.Notification:
		if m.SessionID != "" && jsonrpc.EndsTurn(m) {
			c.mu.Lock()
			delete(c.running, m.SessionID)
			c.mu.Unlock()
		}
	case jsonrpc.Request: // the CLI asks the application (a tool, a permission)
		c.mu.Lock()
		if len(c.asked) < maxQueued {
			c.asked[m.IDKey()] = true
		}
		c.mu.Unlock()
	}
	return true
}

// idle reports whether nothing of the application's is in flight: no request
// unanswered, no turn running.
func (c *continuity) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) == 0 && len(c.running) == 0 && len(c.asked) == 0
}

// lost reports what the closed tunnel took with it: every unanswered request gets
// an error, every running turn a session.error event.
func (c *continuity) lost(cause error) {
	c.mu.Lock()
	pending, running, own := c.pending, c.running, c.own
	c.pending, c.running, c.own, c.asked = map[string]sdkCall{}, map[string]bool{}, nil, map[string]bool{}
	c.mu.Unlock()
	if own != nil {
		own.Close(errors.New("tunnel lost"))
	}
	msg := "climesh: the connection to the instance was lost: " + cause.Error()
	for id := range pending {
		c.write(jsonrpc.ErrorResponse(json.RawMessage(id), protocol.CodeUnavailable, msg, map[string]bool{"reconnecting": true}))
	}
	for sid := range running {
		c.write(errorEvent(sid, "climesh: the turn in flight was lost when its instance went away; the session was resumed"))
	}
}

func errorEvent(sessionID, message string) []byte {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": protocol.MethodSessionEvent, "params": map[string]any{
		"sessionId": sessionID,
		"event": map[string]any{"type": protocol.EventSessionError, "id": fmt.Sprintf("climesh-%d", time.Now().UnixNano()),
			"parentId": nil, "timestamp": time.Now().UTC().Format(time.RFC3339Nano), "ephemeral": true,
			"data": map[string]any{"errorType": "connection", "message": message}},
	}})
	return b
}

// restore re-attaches every session on a new tunnel; one that cannot be resumed
// is reported to the application as a session.error event.
func (c *continuity) restore(ctx context.Context, conn *tunnel.Conn) error {
	own := jsonrpc.NewCaller("climesh-connect-", func(b []byte) error { return conn.Write(ctx, b) })
	c.mu.Lock()
	c.own = own
	c.mu.Unlock()
	if _, err := own.Call(ctx, protocol.MethodConnect, map[string]any{}); err != nil {
		return err
	}
	for id, params := range c.attached.Sessions() {
		if _, err := own.Call(ctx, protocol.MethodSessionResume, params); err != nil {
			c.write(errorEvent(id, "climesh: the session could not be resumed after a reconnect: "+err.Error()))
		}
	}
	return nil
}
