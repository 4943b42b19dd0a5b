package datapath

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/lock"
)

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
		return Unavailable(m.ID, unavailableLock, m.Method, m.SessionID)
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
		// Before the turn's end reaches the client (this runs as the guard
		// passes the ending event): a member who then sends must find the
		// session free. The release waits for Consul at most the locker's
		// time-out; past it the lock's TTL frees it.
		if err := lk.Release(); err != nil {
			g.Log.Warn("session lock release", zap.String("session_id", id), zap.Error(err))
			return
		}
		g.Log.Debug("turn lock released", zap.String("session_id", id))
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
