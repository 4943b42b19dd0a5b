package datapath

import (
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/decisionlog"
	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/lock"
	"github.com/climesh/climesh/session/registry"
)

// Guard decides every message of one tunnel for its one caller, on the one strict
// reading of each frame (jsonrpc.Parse): requests are checked by Rego before the
// CLI sees them — method, session, and the whole params — and what is forwarded
// is the message the decision was made on; session.create claims the session in
// the registry first; answers that list sessions are filtered, and events reach
// the tunnel only for sessions the caller may see.
type Guard struct {
	Policy
	Caller identity.Claims
	Log    *zap.Logger
	// LockWait is how long this caller asked to wait for a busy collab session
	// (0: answer busy at once).
	LockWait time.Duration
	// Bounds limits the per-tunnel tables; zero fields take DefaultBounds.
	Bounds Bounds

	mu        sync.Mutex
	claims    map[string]string   // create request id (canonical) -> the session it claimed in the registry
	cliCalls  map[string]struct{} // the CLI's requests to the client awaiting an answer
	records   map[string]cachedRecord
	visible   map[string]bool // sessions decided for events
	decisions map[decisionKey]policy.Decision
	held      map[string]*lock.Lock // collab sessions whose turn this tunnel runs
	asked     map[string]string     // requestIds of the CLI's pending requests this tunnel was shown -> their session
	touched   map[string]time.Time
}

// Policy is what every tunnel's Guard shares: the rules, the session registry,
// where this sidecar stands and the collab lock. A Relay holds one; without it
// frames pass as read.
type Policy struct {
	Engine   *policy.Engine
	Registry registry.Registry
	Instance string
	Pool     string
	Mode     string
	// RecordTTL bounds how long a looked-up record is reused (members can change).
	RecordTTL time.Duration
	// Locker serialises turns on collab sessions; LockWaitMax caps what a caller
	// may ask for in x-climesh-lock-wait.
	Locker      *lock.Locker
	LockWaitMax time.Duration
	// Decisions, when set, logs every per-message decision (OPA's decision
	// log format); a refusal then carries its decision id.
	Decisions *decisionlog.Logger
}

// guardFor is the Guard of one tunnel: caller is who the edge verified, lockWait
// the x-climesh-lock-wait header it sent (unparsable or absent: do not wait).
func (p *Policy) guardFor(caller identity.Claims, log *zap.Logger, bounds Bounds, lockWait string) *Guard {
	g := &Guard{Policy: *p, Caller: caller, Log: log, Bounds: bounds}
	if w, err := time.ParseDuration(lockWait); err == nil && w > 0 {
		g.LockWait = min(w, p.LockWaitMax)
	}
	return g
}

// Bounds limit what one tunnel can make the sidecar remember.
type Bounds struct {
	Pending  int // client requests awaiting the CLI's answer
	Sessions int // sessions whose records and visibility are remembered
}

// DefaultBounds suit an SDK: it has a handful of calls in flight and sessions open.
var DefaultBounds = Bounds{Pending: 1024, Sessions: 4096}

func (g *Guard) bounds() Bounds {
	b := g.Bounds
	if b.Pending <= 0 {
		b.Pending = DefaultBounds.Pending
	}
	if b.Sessions <= 0 {
		b.Sessions = DefaultBounds.Sessions
	}
	return b
}

// decisionKey: a decision is a pure function of the caller (fixed per tunnel),
// the message (kind, method, session, params), the session's record and the
// policy. The record is compared by identity: a refetched record starts new entries.
type decisionKey struct {
	kind, method, sessionID string
	params                  uint64 // hash of the params bytes
	record                  *registry.Record
	generation              uint64
}

var paramsSeed = maphash.MakeSeed()

type cachedRecord struct {
	rec *registry.Record
	at  time.Time
}

// Methods whose answers name sessions and are filtered to what the caller may see.
var listingMethods = map[string]bool{protocol.MethodSessionList: true, protocol.MethodSessionGetLastID: true, protocol.MethodSessionGetForeground: true}

// The one refusal for a session that does not exist and one that is not the
// caller's (the shipped policy's reason too): nothing tells them apart.
const noSession = "access denied: no such session for this caller"

// reservedIDPrefix marks the ids the sidecar uses on a tunnel's CLI connection
// (its own connect, capacity's destroy and resume); a client may not use them.
const reservedIDPrefix = `"` + ownIDPrefix

// sessionIDPattern is what a session id may be: the CLI makes a directory of it.
var sessionIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Denied answers a refused request. Code -32012, message the policy's reason.
func Denied(id []byte, reason, method, sessionID string) []byte {
	return deniedDecision(id, reason, method, sessionID, "")
}

// deniedDecision is Denied naming the policy decision (data.decision_id), to
// find it in the sidecar's decision log.
func deniedDecision(id []byte, reason, method, sessionID, decisionID string) []byte {
	data := map[string]string{"method": method}
	if sessionID != "" {
		data["sessionId"] = sessionID
	}
	if decisionID != "" {
		data["decision_id"] = decisionID
	}
	return jsonrpc.ErrorResponse(id, protocol.CodeAccessDenied, reason, data)
}

// Unavailable answers a request that could not be decided or done because a
// dependency did not answer: code -32010, data.unavailable names it. Nothing
// was done; the call may be tried again.
func Unavailable(id []byte, what, method, sessionID string) []byte {
	data := map[string]string{"unavailable": what, "method": method}
	if sessionID != "" {
		data["sessionId"] = sessionID
	}
	return jsonrpc.ErrorResponse(id, protocol.CodeUnavailable, what+" unavailable; nothing was done, try again", data)
}

// What Unavailable names.
const (
	unavailableRegistry = "session registry"
	unavailableLock     = "session lock"
)

func invalid(id []byte, msg string) []byte {
	return jsonrpc.ErrorResponse(id, jsonrpc.CodeInvalidRequest, msg, nil)
}

func (g *Guard) owner() string { return g.Caller.Tenant + "/" + g.Caller.User }

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
	if g.records == nil || len(g.records) >= g.bounds().Sessions {
		g.records = map[string]cachedRecord{} // bounded: start over
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

// decide is the policy's decision on m with its session's record. A record
// that cannot be had is an error: the registry did not answer (ErrUnavailable),
// or holds something unreadable; either way nothing is decided.
func (g *Guard) decide(ctx context.Context, m jsonrpc.Message) (policy.Decision, *registry.Record, error) {
	d, rec, _, err := g.decideLogged(ctx, m)
	return d, rec, err
}

// decideLogged is decide, logging the decision (cached ones too: each is a
// decision a caller got) under the id it returns ("" without a log).
func (g *Guard) decideLogged(ctx context.Context, m jsonrpc.Message) (policy.Decision, *registry.Record, string, error) {
	d, rec, err := g.decideOnce(ctx, m)
	if err != nil || g.Decisions == nil {
		return d, rec, "", err
	}
	id := decisionlog.NewID()
	input := map[string]any{"user": g.Caller.User, "tenant": g.Caller.Tenant, "roles": g.Caller.Roles, "pool": g.Pool, "mode": g.Mode,
		"kind": m.Kind.String(), "method": m.Method}
	if m.SessionID != "" {
		input["session_id"] = m.SessionID
	}
	if len(m.Params) > 0 {
		var params any
		if json.Unmarshal(m.Params, &params) == nil {
			input["params"] = params
		}
	}
	if rec != nil {
		input["record"] = rec.PolicyValue()
	}
	result := map[string]any{"allow": d.Allow}
	if d.Reason != "" {
		result["reason"] = d.Reason
	}
	if d.BuiltinTools != nil {
		result["builtin_tools"] = d.BuiltinTools
	}
	g.Decisions.Log(decisionlog.Event{DecisionID: id, Path: "climesh/session/decision", Input: input, Result: result})
	return d, rec, id, nil
}

func (g *Guard) decideOnce(ctx context.Context, m jsonrpc.Message) (policy.Decision, *registry.Record, error) {
	var rec *registry.Record
	if m.SessionID != "" {
		var err error
		if rec, err = g.record(ctx, m.SessionID); err != nil {
			g.Log.Warn("session record unavailable; refused", zap.String("session_id", m.SessionID), zap.Error(err))
			return policy.Decision{}, nil, err
		}
	}
	key := decisionKey{m.Kind.String(), m.Method, m.SessionID, maphash.Bytes(paramsSeed, m.Params), rec, g.Engine.Generation()}
	g.mu.Lock()
	d, ok := g.decisions[key]
	g.mu.Unlock()
	if ok {
		return d, rec, nil
	}
	d = g.Engine.DecideMessage(ctx, policy.MessageInput{
		User: g.Caller.User, Tenant: g.Caller.Tenant, Roles: g.Caller.Roles, Pool: g.Pool, Mode: g.Mode,
		Kind: m.Kind.String(), Method: m.Method, SessionID: m.SessionID, Params: m.Params, Record: rec.PolicyValue(),
	})
	g.mu.Lock()
	if g.decisions == nil || len(g.decisions) > 4096 {
		g.decisions = map[decisionKey]policy.Decision{} // bounded: start over
	}
	g.decisions[key] = d
	g.mu.Unlock()
	return d, rec, nil
}

// refusal answers a request whose record could not be had: unavailable when
// the registry did not answer, else denied (an unreadable record decides
// nothing, and says no more than a denial).
func refusal(m jsonrpc.Message, err error) []byte {
	if errors.Is(err, registry.ErrUnavailable) {
		return Unavailable(m.ID, unavailableRegistry, m.Method, m.SessionID)
	}
	return Denied(m.ID, noSession, m.Method, m.SessionID)
}

// inbound handles a client→CLI message. It returns the message to forward (the
// one the decision was made on, possibly with params the sidecar set), or an
// answer to give the client instead; neither means: drop it.
func (g *Guard) inbound(ctx context.Context, m jsonrpc.Message) (fwd *jsonrpc.Message, answer []byte) {
	switch m.Kind {
	case jsonrpc.Response:
		// An answer to one of the CLI's requests on this connection, or nothing.
		g.mu.Lock()
		_, asked := g.cliCalls[m.IDKey()]
		delete(g.cliCalls, m.IDKey())
		g.mu.Unlock()
		if !asked {
			return nil, nil
		}
		return &m, nil
	case jsonrpc.Notification:
		if d, _, _ := g.decide(ctx, m); !d.Allow {
			g.Log.Info("notification dropped", zap.String("method", m.Method), zap.String("reason", d.Reason))
			return nil, nil
		}
		return &m, nil
	}
	if strings.HasPrefix(m.IDKey(), reservedIDPrefix) {
		return nil, invalid(m.ID, `id: ids beginning "climesh-sidecar-" are the sidecar's`)
	}
	if m.SessionID != "" && !sessionIDPattern.MatchString(m.SessionID) {
		return nil, jsonrpc.ErrorResponse(m.ID, jsonrpc.CodeInvalidParams, "params.sessionId: want 1-128 of A-Z a-z 0-9 . _ - (not starting with . _ -)", nil)
	}
	if m.Method == protocol.MethodSessionCreate && m.SessionID == "" {
		// The sidecar names the session, so that it is claimed in the registry
		// before the CLI creates it: no session exists that nobody owns.
		var err error
		if m, err = withMember(m, "sessionId", newSessionID()); err != nil {
			return nil, invalid(m.ID, err.Error())
		}
	}
	d, rec, decisionID, err := g.decideLogged(ctx, m)
	if err != nil {
		return nil, refusal(m, err)
	}
	if !d.Allow {
		return nil, deniedDecision(m.ID, d.Reason, m.Method, m.SessionID, decisionID)
	}
	if strings.Contains(m.Method, ".handlePending") && !g.answers(m) {
		// The CLI finds a pending request by its id across all sessions: an
		// answer must name one this tunnel was shown, for the session it named.
		return nil, Denied(m.ID, "access denied: no such request for this caller", m.Method, m.SessionID)
	}
	claimed := false
	if m.Method == protocol.MethodSessionCreate && rec == nil {
		// Claim the id before the CLI creates it: of two creators one wins.
		_, err := g.Registry.Create(ctx, g.newRecord(m.SessionID))
		switch {
		case errors.Is(err, registry.ErrExists):
			g.forget(m.SessionID)
			return nil, Denied(m.ID, noSession, m.Method, m.SessionID)
		case err != nil:
			g.Log.Warn("session not claimed; create refused", zap.String("session_id", m.SessionID), zap.Error(err))
			return nil, refusal(m, err)
		}
		claimed = true
		g.forget(m.SessionID)
	}
	if m.Method == protocol.MethodSessionCreate || m.Method == protocol.MethodSessionResume {
		var err error
		if m, err = setOptions(m, d); err != nil {
			if claimed {
				g.abandon(ctx, m.SessionID)
			}
			return nil, jsonrpc.ErrorResponse(m.ID, jsonrpc.CodeInvalidParams, err.Error(), nil)
		}
	}
	if m.SessionID != "" {
		g.setVisible(m.SessionID, true) // allowed to touch it: its events may come here
	}
	if m.Method == protocol.MethodSessionSend && rec != nil {
		// Off the message's path: a touch is best effort, and a stalled
		// registry must not hold the send for its time-out.
		go g.touch(context.WithoutCancel(ctx), m.SessionID)
	}
	if (m.Method == protocol.MethodSessionDestroy || m.Method == protocol.MethodSessionDetach) && g.Mode == "collab" {
		// An SDK disconnecting from a shared session must not unload it for the
		// other members: closing this connection is all the detaching it needs.
		b, _ := jsonrpc.ResultResponse(m.ID, struct{}{})
		return nil, b
	}
	if claimed {
		g.mu.Lock()
		if g.claims == nil {
			g.claims = map[string]string{}
		}
		g.claims[m.IDKey()] = m.SessionID
		g.mu.Unlock()
	}
	return &m, nil
}

// abandon undoes the registry claim of a session that will not be created.
func (g *Guard) abandon(ctx context.Context, sessionID string) {
	g.Registry.Delete(ctx, sessionID)
	g.forget(sessionID)
}

// claim takes back the claim request idKey made, if any: the session it names.
func (g *Guard) claim(idKey string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	sid := g.claims[idKey]
	delete(g.claims, idKey)
	return sid
}

// refused tells the guard that a request it let through was stopped before
// reaching the CLI (busy, a failed resume): a session it claimed is not created.
func (g *Guard) refused(ctx context.Context, m jsonrpc.Message) {
	if sid := g.claim(m.IDKey()); sid != "" {
		g.abandon(ctx, sid)
	}
}

// touch records activity for the idle-session sweeper, and this instance as
// where the session now lives, at most every 10 s per session per tunnel (it
// is a Consul write).
func (g *Guard) touch(ctx context.Context, id string) {
	g.mu.Lock()
	if g.touched == nil || len(g.touched) >= g.bounds().Sessions {
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
	if err := g.Registry.Touch(ctx, id, now, g.Instance); err != nil {
		g.Log.Debug("session registry: touch", zap.String("session_id", id), zap.Error(err))
	}
}

func (g *Guard) newRecord(id string) *registry.Record {
	now := time.Now().UTC()
	return &registry.Record{ID: id, Owner: g.Caller.User, Tenant: g.Caller.Tenant, Mode: g.Mode, Members: []string{},
		Instance: g.Instance, Pool: g.Pool, Created: now, LastActive: now}
}
