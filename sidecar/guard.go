package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"go.uber.org/zap"

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
	data := map[string]string{"method": method}
	if sessionID != "" {
		data["sessionId"] = sessionID
	}
	return jsonrpc.ErrorResponse(id, protocol.CodeAccessDenied, reason, data)
}

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

func (g *Guard) decide(ctx context.Context, m jsonrpc.Message) (policy.Decision, *registry.Record) {
	var rec *registry.Record
	if m.SessionID != "" {
		var err error
		if rec, err = g.record(ctx, m.SessionID); err != nil {
			g.Log.Warn("session registry unavailable; denied", zap.Error(err))
			return policy.Decision{Reason: "access denied: session registry unavailable"}, nil
		}
	}
	key := decisionKey{m.Kind.String(), m.Method, m.SessionID, maphash.Bytes(paramsSeed, m.Params), rec, g.Engine.Generation()}
	g.mu.Lock()
	d, ok := g.decisions[key]
	g.mu.Unlock()
	if ok {
		return d, rec
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
	return d, rec
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
		if d, _ := g.decide(ctx, m); !d.Allow {
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
	d, rec := g.decide(ctx, m)
	if !d.Allow {
		return nil, Denied(m.ID, d.Reason, m.Method, m.SessionID)
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
			return nil, Denied(m.ID, "access denied: session registry unavailable", m.Method, m.SessionID)
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
		g.touch(ctx, m.SessionID)
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

// answers reports whether m answers a pending request of the CLI's that this
// tunnel was shown (a requestId in an event of m's session), and uses it up.
func (g *Guard) answers(m jsonrpc.Message) bool {
	rid, ok := jsonrpc.StringMember(m.Params, "requestId")
	if !ok || rid == "" {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if sid, ok := g.asked[rid]; ok && sid == m.SessionID {
		delete(g.asked, rid)
		return true
	}
	return false
}

// shown records the requestId an event of a session this tunnel may read carries
// (external_tool.requested, permission.requested, ...).
func (g *Guard) shown(m jsonrpc.Message, sid string) {
	if m.Method != protocol.MethodSessionEvent {
		return
	}
	rid, ok := jsonrpc.StringMember(m.Params, "event", "data", "requestId")
	if !ok || rid == "" {
		return
	}
	g.mu.Lock()
	if g.asked == nil || len(g.asked) >= g.bounds().Pending {
		g.asked = map[string]string{}
	}
	g.asked[rid] = sid
	g.mu.Unlock()
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

func newSessionID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// withMember is m with params[name] set to value.
func withMember(m jsonrpc.Message, name string, value any) (jsonrpc.Message, error) {
	obj := map[string]json.RawMessage{}
	if m.Params != nil {
		// A map matches names exactly; the params were read strictly (no duplicates).
		if err := json.Unmarshal(m.Params, &obj); err != nil {
			return m, fmt.Errorf("params: %v", err)
		}
	}
	v, err := json.Marshal(value)
	if err != nil {
		return m, err
	}
	obj[name] = v
	b, err := json.Marshal(obj)
	if err != nil {
		return m, err
	}
	return m.WithParams(jsontext.Value(b))
}

// setOptions applies the decision to a create's or resume's params: the policy's
// set_params, and the built-in tools it opened.
//
// The CLI's built-in tools (shell, files, web fetch...) become those the policy
// opened, whatever the client asked: availableTools is set to the client's own
// tools (declared in params.tools, which the CLI hands back to the client to run)
// and the opened built-ins, within the client's own availableTools if it gave one.
// Each client tool is marked overridesBuiltInTool, so that a client tool named like
// a built-in is the client's. ["*"] leaves the tools alone.
func setOptions(m jsonrpc.Message, d policy.Decision) (jsonrpc.Message, error) {
	if d.AllTools() && len(d.SetParams) == 0 {
		return m, nil
	}
	obj := map[string]json.RawMessage{}
	if m.Params != nil {
		if err := json.Unmarshal(m.Params, &obj); err != nil {
			return m, fmt.Errorf("params: %v", err)
		}
	}
	for name, v := range d.SetParams {
		b, err := json.Marshal(v)
		if err != nil {
			return m, fmt.Errorf("policy set_params.%s: %v", name, err)
		}
		obj[name] = b
	}
	if d.AllTools() {
		b, err := json.Marshal(obj)
		if err != nil {
			return m, err
		}
		return m.WithParams(jsontext.Value(b))
	}
	var allowed []string
	if raw, ok := obj["tools"]; ok && string(raw) != "null" {
		var tools []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &tools); err != nil {
			return m, errors.New("params.tools: want a list of tool objects")
		}
		for i, t := range tools {
			var name string
			if err := json.Unmarshal(t["name"], &name); err != nil || name == "" {
				return m, fmt.Errorf("params.tools[%d].name: want a string", i)
			}
			allowed = append(allowed, name)
			t["overridesBuiltInTool"] = json.RawMessage("true")
		}
		obj["tools"], _ = json.Marshal(tools)
	}
	allowed = append(allowed, d.BuiltinTools...)
	if raw, ok := obj["availableTools"]; ok && string(raw) != "null" {
		var asked []string
		if err := json.Unmarshal(raw, &asked); err != nil {
			return m, errors.New("params.availableTools: want a list of tool names")
		}
		allowed = slices.DeleteFunc(allowed, func(n string) bool { return !slices.Contains(asked, n) })
	}
	slices.Sort(allowed)
	allowed = slices.Compact(allowed)
	if allowed == nil {
		allowed = []string{} // [] is "no tools"; null would be "all of them"
	}
	obj["availableTools"], _ = json.Marshal(allowed)
	b, err := json.Marshal(obj)
	if err != nil {
		return m, err
	}
	return m.WithParams(jsontext.Value(b))
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

func (g *Guard) setVisible(id string, v bool) {
	g.mu.Lock()
	if g.visible == nil || len(g.visible) >= g.bounds().Sessions {
		g.visible = map[string]bool{} // bounded: decided again on demand
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
	// Decided as a read of the session would be.
	params, _ := json.Marshal(map[string]string{"sessionId": id})
	d, rec := g.decide(ctx, jsonrpc.Message{Kind: jsonrpc.Request, Method: protocol.MethodSessionGetMessages, SessionID: id, Params: params})
	v = d.Allow && rec != nil
	g.setVisible(id, v)
	return v
}

// NeedsTurn reports whether an allowed message must first take its session's
// turn lock: on a collab sidecar, every session.send. The relay then calls
// TakeTurn off its read loop, so that waiting never stops the tunnel from being read.
func (g *Guard) NeedsTurn(m jsonrpc.Message) bool {
	return g.Locker != nil && g.Mode == "collab" && m.Kind == jsonrpc.Request && m.Method == protocol.MethodSessionSend && m.SessionID != ""
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
	lk, err := g.Locker.Acquire(ctx, m.SessionID, g.owner(), g.LockWait)
	var busy *lock.BusyError
	if errors.As(err, &busy) {
		return jsonrpc.ErrorResponse(m.ID, protocol.CodeSessionBusy, "session is in use by another user",
			map[string]any{"sessionId": m.SessionID, "holder": busy.Holder.User, "since": busy.Holder.Since})
	}
	if err != nil {
		g.Log.Warn("session lock unavailable; refused", zap.Error(err))
		return jsonrpc.ErrorResponse(m.ID, protocol.CodeSessionBusy, "session lock unavailable", map[string]string{"sessionId": m.SessionID})
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

// eventSession is the session a CLI notification or request is about:
// params.sessionId, or params.scope.sessionId (host.event).
func eventSession(m jsonrpc.Message) string {
	if m.SessionID != "" {
		return m.SessionID
	}
	id, _ := jsonrpc.StringMember(m.Params, "scope", "sessionId")
	return id
}

// outbound handles a CLI→client message: the bytes to send, or none to drop it.
// c is the client request m answers (from the tunnel's call table), if any.
func (g *Guard) outbound(ctx context.Context, m jsonrpc.Message, c *call) ([]byte, bool) {
	if m.Kind != jsonrpc.Response {
		sid := eventSession(m)
		if m.Kind == jsonrpc.Notification && sid != "" {
			g.mu.Lock()
			_, holding := g.held[sid]
			g.mu.Unlock()
			if holding && jsonrpc.EndsTurn(m) {
				defer g.endTurn(sid)
			}
		}
		if sid != "" && !g.mayRead(ctx, sid) {
			return nil, false // another caller's session: its events are not ours
		}
		if sid != "" {
			g.shown(m, sid)
		}
		if m.Kind == jsonrpc.Request {
			g.mu.Lock()
			if g.cliCalls == nil || len(g.cliCalls) >= g.bounds().Pending {
				g.cliCalls = map[string]struct{}{}
			}
			g.cliCalls[m.IDKey()] = struct{}{}
			g.mu.Unlock()
		}
		return m.Raw, true
	}
	if c == nil {
		return nil, false // nobody on this tunnel asked
	}
	failed := m.Failed()
	claimed := g.claim(m.IDKey())
	switch {
	case c.method == protocol.MethodSessionSend && failed:
		g.endTurn(c.sessionID)
	case c.method == protocol.MethodSessionCreate && failed && claimed != "":
		g.abandon(ctx, claimed)
	case c.method == protocol.MethodSessionDelete && !failed:
		if err := g.Registry.Delete(ctx, c.sessionID); err != nil {
			g.Log.Warn("session registry: delete", zap.String("session_id", c.sessionID), zap.Error(err))
		}
		g.forget(c.sessionID)
	case listingMethods[c.method] && !failed:
		if filtered, err := g.filter(ctx, m.ID, m.Result); err == nil {
			return filtered, true
		}
		return jsonrpc.ErrorResponse(m.ID, protocol.CodeAccessDenied, "access denied: session list could not be filtered", nil), true
	}
	return m.Raw, true
}

// filter keeps only the sessions the caller may see, in session.list's
// {"sessions": [{"sessionId": ...}, ...]} and in {"sessionId": ...} answers. It
// reads member names exactly; an entry whose sessionId is not a string is dropped.
func (g *Guard) filter(ctx context.Context, id []byte, result []byte) ([]byte, error) {
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
			if sid, ok := jsonrpc.StringMember(item, "sessionId"); ok && sid != "" && g.mayRead(ctx, sid) {
				kept = append(kept, item)
			}
		}
		obj["sessions"], _ = json.Marshal(kept)
	}
	if raw, ok := obj["sessionId"]; ok && string(raw) != "null" {
		if sid, ok := jsonrpc.StringMember(result, "sessionId"); !ok || !g.mayRead(ctx, sid) {
			obj["sessionId"] = json.RawMessage("null")
		}
	}
	return jsonrpc.ResultResponse(id, obj)
}
