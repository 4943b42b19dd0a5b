package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/lock"
	"github.com/climesh/climesh/session/registry"
)

// Guard decides every message of one tunnel for its one caller: requests are
// checked by Rego before the CLI sees them, session.create registers the owner,
// answers that list sessions are filtered, and events reach the tunnel only for
// sessions the caller may see.
type Guard struct {
	Engine   *policy.Engine
	Registry registry.Registry
	Caller   identity.Claims
	Instance string
	Pool     string
	Mode     string
	Log      *zap.Logger
	// RecordTTL bounds how long a looked-up record is reused (members can change).
	RecordTTL time.Duration
	// Locker serialises turns on collab sessions; LockWait is how long this
	// caller asked to wait for a busy session (0: answer busy at once).
	Locker   *lock.Locker
	LockWait time.Duration

	mu        sync.Mutex
	pending   map[string]pendingCall // client request id -> what to do with its answer
	records   map[string]cachedRecord
	visible   map[string]bool // sessions decided for events
	decisions map[decisionKey]policy.Decision
	held      map[string]*lock.Lock // collab sessions whose turn this tunnel runs
	touched   map[string]time.Time
}

// decisionKey: a decision is a pure function of the caller (fixed per tunnel),
// the method, the session's record and the policy. The record is compared by
// identity: a refetched record starts new entries.
type decisionKey struct {
	method, sessionID string
	record            *registry.Record
	generation        uint64
}

type pendingCall struct {
	method, sessionID string
	claimed           bool // the registry entry was written before forwarding
}

type cachedRecord struct {
	rec *registry.Record
	at  time.Time
}

// Methods whose answers name sessions and are filtered to what the caller may see.
var listingMethods = map[string]bool{"session.list": true, "session.getLastId": true, "session.getForeground": true}

// Denied answers a refused request. Code -32012, message the policy's reason.
func Denied(id json.RawMessage, reason, method, sessionID string) []byte {
	data := map[string]string{"method": method}
	if sessionID != "" {
		data["sessionId"] = sessionID
	}
	return jsonrpc.ErrorResponse(id, jsonrpc.CodeAccessDenied, reason, data)
}

func (g *Guard) record(ctx context.Context, id string) (*registry.Record, error) {
	g.mu.Lock()
	c, ok := g.records[id]
	g.mu.Unlock()
	if ok && time.Since(c.at) < g.RecordTTL {
		return c.rec, nil
	}
	rec, err := g.Registry.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	if g.records == nil {
		g.records = map[string]cachedRecord{}
	}
	g.records[id] = cachedRecord{rec, time.Now()}
	g.mu.Unlock()
	return rec, nil
}

func (g *Guard) forget(id string) {
	g.mu.Lock()
	delete(g.records, id)
	delete(g.visible, id)
	g.mu.Unlock()
}

func (g *Guard) decide(ctx context.Context, method, sessionID string) (policy.Decision, *registry.Record) {
	var rec *registry.Record
	if sessionID != "" {
		var err error
		if rec, err = g.record(ctx, sessionID); err != nil {
			g.Log.Warn("session registry unavailable; denied", zap.Error(err))
			return policy.Decision{Reason: "access denied: session registry unavailable"}, nil
		}
	}
	key := decisionKey{method, sessionID, rec, g.Engine.Generation()}
	g.mu.Lock()
	d, ok := g.decisions[key]
	g.mu.Unlock()
	if ok {
		return d, rec
	}
	d = g.Engine.DecideMessage(ctx, policy.MessageInput{
		User: g.Caller.User, Tenant: g.Caller.Tenant, Roles: g.Caller.Roles,
		Method: method, SessionID: sessionID, Record: rec.PolicyValue(),
	})
	g.mu.Lock()
	if g.decisions == nil || len(g.decisions) > 4096 {
		g.decisions = map[decisionKey]policy.Decision{} // bounded: start over
	}
	g.decisions[key] = d
	g.mu.Unlock()
	return d, rec
}

// Inbound handles a client→CLI message: forward it, or answer it here.
func (g *Guard) Inbound(ctx context.Context, m jsonrpc.Message) (answer []byte, forward bool) {
	if m.Kind != jsonrpc.Request {
		return nil, true // answers to the CLI's own requests, notifications
	}
	d, rec := g.decide(ctx, m.Method, m.SessionID)
	if !d.Allow {
		return Denied(m.ID, d.Reason, m.Method, m.SessionID), false
	}
	call := pendingCall{method: m.Method, sessionID: m.SessionID}
	if m.Method == "session.create" && m.SessionID != "" && rec == nil {
		// Claim the id before the CLI creates it: of two creators one wins.
		existing, err := g.Registry.Create(ctx, g.newRecord(m.SessionID))
		switch {
		case errors.Is(err, registry.ErrExists) && existing != nil && existing.Owner != g.Caller.User:
			return Denied(m.ID, "access denied: session belongs to another user", m.Method, m.SessionID), false
		case err != nil && !errors.Is(err, registry.ErrExists):
			return Denied(m.ID, "access denied: session registry unavailable", m.Method, m.SessionID), false
		}
		call.claimed = err == nil
		g.forget(m.SessionID)
	}
	if m.SessionID != "" {
		g.setVisible(m.SessionID, true) // allowed to touch it: its events may come here
	}
	if m.Method == "session.send" && rec != nil {
		g.touch(ctx, m.SessionID)
	}
	if (m.Method == "session.destroy" || m.Method == "session.detach") && rec != nil && rec.Mode == "collab" {
		// An SDK disconnecting from a shared session must not unload it for the
		// other members: closing this connection is all the detaching it needs.
		b, _ := jsonrpc.ResultResponse(m.ID, struct{}{})
		return b, false
	}
	if m.Method != "session.create" && m.Method != "session.delete" && m.Method != "session.send" && !listingMethods[m.Method] {
		return nil, true // nothing to do with the answer
	}
	g.mu.Lock()
	if g.pending == nil {
		g.pending = map[string]pendingCall{}
	}
	g.pending[string(m.ID)] = call
	g.mu.Unlock()
	return nil, true
}

// touch records activity for the idle-session sweeper, at most every 10 s per
// session per tunnel (it is a Consul write).
func (g *Guard) touch(ctx context.Context, id string) {
	g.mu.Lock()
	if g.touched == nil {
		g.touched = map[string]time.Time{}
	}
	last := g.touched[id]
	now := time.Now()
	if now.Sub(last) < 10*time.Second {
		g.mu.Unlock()
		return
	}
	g.touched[id] = now
	g.mu.Unlock()
	if err := g.Registry.Touch(ctx, id, now); err != nil {
		g.Log.Debug("session registry: touch", zap.String("session_id", id), zap.Error(err))
	}
}

func (g *Guard) newRecord(id string) *registry.Record {
	now := time.Now().UTC()
	return &registry.Record{ID: id, Owner: g.Caller.User, Tenant: g.Caller.Tenant, Mode: g.Mode, Members: []string{},
		Instance: g.Instance, Pool: g.Pool, Created: now, LastActive: now}
}

func (g *Guard) setVisible(id string, v bool) {
	g.mu.Lock()
	if g.visible == nil {
		g.visible = map[string]bool{}
	}
	g.visible[id] = v
	g.mu.Unlock()
}

// mayRead decides (once per session per tunnel) whether events of a session may
// reach this caller.
func (g *Guard) mayRead(ctx context.Context, id string) bool {
	g.mu.Lock()
	v, ok := g.visible[id]
	g.mu.Unlock()
	if ok {
		return v
	}
	d, rec := g.decide(ctx, "session.getMessages", id)
	v = d.Allow && rec != nil
	g.setVisible(id, v)
	return v
}

// NeedsTurn reports whether an allowed message must first take its session's
// turn lock (a session.send on a collab session). The relay then calls TakeTurn
// off its read loop, so that waiting never stops the tunnel from being read.
func (g *Guard) NeedsTurn(ctx context.Context, m jsonrpc.Message) bool {
	if g.Locker == nil || m.Kind != jsonrpc.Request || m.Method != "session.send" || m.SessionID == "" {
		return false
	}
	rec, err := g.record(ctx, m.SessionID)
	return err == nil && rec != nil && rec.Mode == "collab"
}

// TakeTurn holds the session's lock for the turn a session.send starts; it
// answers busy (code -32013, with holder and since) when the caller would not
// wait, or waited LockWait in vain. nil means: forward the send.
func (g *Guard) TakeTurn(ctx context.Context, m jsonrpc.Message) []byte {
	g.mu.Lock()
	_, mine := g.held[m.SessionID]
	g.mu.Unlock()
	if mine {
		return nil // a send while our own turn runs: the CLI queues it
	}
	lk, err := g.Locker.Acquire(ctx, m.SessionID, g.Caller.User, g.LockWait)
	var busy *lock.BusyError
	if errors.As(err, &busy) {
		return jsonrpc.ErrorResponse(m.ID, jsonrpc.CodeSessionBusy, "session is in use by another user",
			map[string]any{"sessionId": m.SessionID, "holder": busy.Holder.User, "since": busy.Holder.Since})
	}
	if err != nil {
		g.Log.Warn("session lock unavailable; refused", zap.Error(err))
		return jsonrpc.ErrorResponse(m.ID, jsonrpc.CodeSessionBusy, "session lock unavailable", map[string]string{"sessionId": m.SessionID})
	}
	g.mu.Lock()
	if g.held == nil {
		g.held = map[string]*lock.Lock{}
	}
	g.held[m.SessionID] = lk
	g.mu.Unlock()
	g.Log.Debug("turn lock taken", zap.String("session_id", m.SessionID))
	return nil
}

// endTurn releases the lock of a session whose turn ended on this tunnel.
func (g *Guard) endTurn(id string) {
	g.mu.Lock()
	lk := g.held[id]
	delete(g.held, id)
	g.mu.Unlock()
	if lk != nil {
		g.Log.Debug("turn lock released", zap.String("session_id", id))
		if err := lk.Release(); err != nil {
			g.Log.Warn("session lock release", zap.String("session_id", id), zap.Error(err))
		}
	}
}

// Close releases every lock this tunnel holds (the tunnel is gone).
func (g *Guard) Close() {
	g.mu.Lock()
	ids := make([]string, 0, len(g.held))
	for id := range g.held {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	for _, id := range ids {
		g.endTurn(id)
	}
}

// Outbound handles a CLI→client message: the bytes to send, or none to drop it.
func (g *Guard) Outbound(ctx context.Context, m jsonrpc.Message) ([]byte, bool) {
	if m.Kind == jsonrpc.Notification && m.SessionID != "" {
		g.mu.Lock()
		_, holding := g.held[m.SessionID]
		g.mu.Unlock()
		if holding && jsonrpc.EndsTurn(m) {
			defer g.endTurn(m.SessionID)
		}
	}
	if m.Kind != jsonrpc.Response {
		if m.SessionID != "" && !g.mayRead(ctx, m.SessionID) {
			return nil, false // another caller's session: its events are not ours
		}
		return m.Raw, true
	}
	g.mu.Lock()
	call, ok := g.pending[string(m.ID)]
	delete(g.pending, string(m.ID))
	g.mu.Unlock()
	if !ok {
		return m.Raw, true
	}
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if json.Unmarshal(m.Raw, &resp) != nil {
		return m.Raw, true
	}
	failed := len(resp.Error) > 0
	switch {
	case call.method == "session.send" && failed:
		g.endTurn(call.sessionID)
	case call.method == "session.create":
		g.created(ctx, call, resp.Result, failed)
	case call.method == "session.delete" && !failed:
		if err := g.Registry.Delete(ctx, call.sessionID); err != nil {
			g.Log.Warn("session registry: delete", zap.String("session_id", call.sessionID), zap.Error(err))
		}
		g.forget(call.sessionID)
	case listingMethods[call.method] && !failed:
		if filtered, err := g.filter(ctx, m.ID, resp.Result); err == nil {
			return filtered, true
		}
		return jsonrpc.ErrorResponse(m.ID, jsonrpc.CodeAccessDenied, "access denied: session list could not be filtered", nil), true
	}
	return m.Raw, true
}

func (g *Guard) created(ctx context.Context, call pendingCall, result json.RawMessage, failed bool) {
	if failed {
		if call.claimed {
			g.Registry.Delete(ctx, call.sessionID)
			g.forget(call.sessionID)
		}
		return
	}
	var r struct {
		SessionID string `json:"sessionId"`
	}
	json.Unmarshal(result, &r)
	if r.SessionID == "" || call.claimed {
		return
	}
	if _, err := g.Registry.Create(ctx, g.newRecord(r.SessionID)); err != nil {
		g.Log.Error("session created but not registered; its owner will be refused", zap.String("session_id", r.SessionID), zap.Error(err))
	}
	g.forget(r.SessionID)
	g.setVisible(r.SessionID, true)
}

// filter keeps only the sessions the caller may see, in session.list's
// {"sessions": [{"sessionId": ...}, ...]} and in {"sessionId": ...} answers.
func (g *Guard) filter(ctx context.Context, id json.RawMessage, result json.RawMessage) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(result, &obj); err != nil {
		return nil, err
	}
	if raw, ok := obj["sessions"]; ok {
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, err
		}
		kept := make([]json.RawMessage, 0, len(list))
		for _, item := range list {
			var s struct {
				SessionID string `json:"sessionId"`
			}
			if json.Unmarshal(item, &s) == nil && s.SessionID != "" && g.mayRead(ctx, s.SessionID) {
				kept = append(kept, item)
			}
		}
		obj["sessions"], _ = json.Marshal(kept)
	}
	if raw, ok := obj["sessionId"]; ok {
		var sid string
		if json.Unmarshal(raw, &sid) == nil && sid != "" && !g.mayRead(ctx, sid) {
			obj["sessionId"] = json.RawMessage("null")
		}
	}
	return jsonrpc.ResultResponse(id, obj)
}
