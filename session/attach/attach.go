// Package attach follows the sessions one connection to the CLI has attached — a
// session.create or session.resume the CLI accepted — with the params that resume
// each one later or elsewhere (the same options, provider included, which the CLI
// needs on every resume). climesh-connect uses it to resume a tunnel's sessions
// after a reconnect; the sidecar's capacity stage, to resume a session it released.
package attach

import (
	"encoding/json"
	"sync"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
)

// Tracker is one connection's attached sessions. It is safe for concurrent use:
// requests arrive on one goroutine, answers on another.
type Tracker struct {
	mu       sync.Mutex
	asked    map[string]request         // request id (canonical) -> a create or resume awaiting its answer
	attached map[string]json.RawMessage // session id -> params for session.resume
}

type request struct {
	sessionID string
	params    json.RawMessage
}

// Request notes a request on its way to the CLI: a create or resume awaits its
// answer; a destroy, detach or delete detaches its session at once, which it
// returns ("" otherwise): the caller asked to let it go, whatever the CLI answers.
func (t *Tracker) Request(m jsonrpc.Message) (detached string) {
	if m.Kind != jsonrpc.Request {
		return ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch m.Method {
	case protocol.MethodSessionCreate, protocol.MethodSessionResume:
		if t.asked == nil {
			t.asked = map[string]request{}
		}
		t.asked[m.IDKey()] = request{sessionID: m.SessionID, params: json.RawMessage(m.Params)}
	case protocol.MethodSessionDestroy, protocol.MethodSessionDetach, protocol.MethodSessionDelete:
		if m.SessionID != "" {
			delete(t.attached, m.SessionID)
			return m.SessionID
		}
	}
	return ""
}

// Answer notes the CLI's answer m; it returns the session a create or resume
// attached ("" for any other answer, or a failed one).
func (t *Tracker) Answer(m jsonrpc.Message) (attached string) {
	if m.Kind != jsonrpc.Response {
		return ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.asked[m.IDKey()]
	if !ok {
		return ""
	}
	delete(t.asked, m.IDKey())
	if m.Failed() {
		return ""
	}
	id := jsonrpc.AttachedSession(m.Result, r.sessionID)
	if id == "" {
		return ""
	}
	if t.attached == nil {
		t.attached = map[string]json.RawMessage{}
	}
	t.attached[id] = jsonrpc.ResumeParams(r.params, id)
	return id
}

// Withdraw forgets a request that will not reach the CLI (refused on the way).
func (t *Tracker) Withdraw(idKey string) {
	t.mu.Lock()
	delete(t.asked, idKey)
	t.mu.Unlock()
}

// ResumeParams are the params that resume session id, if it is attached.
func (t *Tracker) ResumeParams(id string) (json.RawMessage, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.attached[id]
	return p, ok
}

// Sessions is every attached session with its resume params (a copy).
func (t *Tracker) Sessions() map[string]json.RawMessage {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]json.RawMessage, len(t.attached))
	for id, p := range t.attached {
		out[id] = p
	}
	return out
}

// Reset forgets everything (the connection closed: the CLI let its sessions go)
// and returns the sessions that were attached.
func (t *Tracker) Reset() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]string, 0, len(t.attached))
	for id := range t.attached {
		ids = append(ids, id)
	}
	t.attached, t.asked = nil, nil
	return ids
}
