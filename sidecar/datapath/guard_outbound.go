package datapath

import (
	"context"
	"encoding/json"

	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
)

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
	d, rec, err := g.decide(ctx, jsonrpc.Message{Kind: jsonrpc.Request, Method: protocol.MethodSessionGetMessages, SessionID: id, Params: params})
	if err != nil {
		return false // not remembered: decided again once the registry answers
	}
	v = d.Allow && rec != nil
	g.setVisible(id, v)
	return v
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
	switch {
	case c.method == protocol.MethodSessionSend && failed:
		g.endTurn(c.sessionID)
	case c.method == protocol.MethodSessionCreate:
		if claimed := g.claim(m.IDKey()); failed && claimed != "" {
			g.abandon(ctx, claimed)
		}
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
