package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	copilot "github.com/github/copilot-sdk/go"
)

type options struct {
	connectAddr, edgeURL, connectBin string
	model                            string
	providerType, providerURL        string
	providerKey                      string
	turnTimeout, lockWait            time.Duration
}

// app holds one SDK client per caller (keyed by their token) and, for team chat,
// one per caller and room. That is all the state it keeps: which CLI serves a
// user, who owns a session and whose turn it is are the mesh's business.
type app struct {
	o   options
	log *slog.Logger

	mu      sync.Mutex
	clients map[string]*copilot.Client
	open    map[string]*copilot.Session // "<client key>/<session id>" -> attached session
}

func newApp(o options, log *slog.Logger) *app {
	return &app{o: o, log: log, clients: map[string]*copilot.Client{}, open: map[string]*copilot.Session{}}
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /api/chat/start", handle(a.chatStart))
	mux.Handle("POST /api/chat/message", handle(a.chatMessage))
	mux.Handle("POST /api/chat/end", handle(a.chatEnd))
	mux.Handle("POST /api/analyze", handle(a.analyze))
	mux.Handle("POST /team-chat", handle(a.teamChat))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	return mux
}

func (a *app) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.clients {
		c.Stop()
	}
}

func (a *app) provider() *copilot.ProviderConfig {
	if a.o.providerType == "" {
		return nil
	}
	return &copilot.ProviderConfig{Type: a.o.providerType, BaseURL: a.o.providerURL, APIKey: a.o.providerKey}
}

func (a *app) sessionConfig() *copilot.SessionConfig {
	return &copilot.SessionConfig{Model: a.o.model, Provider: a.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll}
}

func (a *app) resumeConfig() *copilot.ResumeSessionConfig {
	return &copilot.ResumeSessionConfig{Model: a.o.model, Provider: a.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll}
}

// client returns the caller's SDK client, started on first use: over TCP to
// climesh-connect, or (room != "") over stdio with the room as the shared session.
func (a *app) client(ctx context.Context, token, room string) (*copilot.Client, string, error) {
	sum := sha256.Sum256([]byte(token))
	key := fmt.Sprintf("%x", sum[:8])
	if room != "" {
		key += "/room/" + room
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.clients[key]; ok {
		return c, key, nil
	}
	var conn copilot.RuntimeConnection = copilot.URIConnection{URL: a.o.connectAddr, ConnectionToken: token}
	if room != "" {
		if a.o.edgeURL == "" {
			return nil, "", errors.New("team chat needs --edge")
		}
		conn = copilot.StdioConnection{Path: a.o.connectBin, Env: append(os.Environ(), "CLIMESH_EDGE="+a.o.edgeURL,
			"CLIMESH_TOKEN="+token, "CLIMESH_SESSION="+room, "CLIMESH_LOCK_WAIT="+a.o.lockWait.String())}
	}
	c := copilot.NewClient(&copilot.ClientOptions{Connection: conn})
	if err := c.Start(ctx); err != nil {
		return nil, "", err
	}
	a.clients[key] = c
	return c, key, nil
}

// attached returns the caller's session id, resuming it on their client once.
func (a *app) attached(ctx context.Context, c *copilot.Client, key, id string) (*copilot.Session, error) {
	a.mu.Lock()
	s, ok := a.open[key+"/"+id]
	a.mu.Unlock()
	if ok {
		return s, nil
	}
	s, err := c.ResumeSession(ctx, id, a.resumeConfig())
	if err != nil {
		return nil, err
	}
	a.remember(key, s)
	return s, nil
}

func (a *app) remember(key string, s *copilot.Session) {
	a.mu.Lock()
	a.open[key+"/"+s.SessionID] = s
	a.mu.Unlock()
}

func (a *app) forget(key, id string) {
	a.mu.Lock()
	delete(a.open, key+"/"+id)
	a.mu.Unlock()
}

func (a *app) reply(ctx context.Context, s *copilot.Session, prompt string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, a.o.turnTimeout)
	defer cancel()
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: prompt})
	if err != nil {
		return "", err
	}
	if ev == nil {
		return "", errors.New("the turn ended without a reply")
	}
	if d, ok := ev.Data.(*copilot.AssistantMessageData); ok {
		return d.Content, nil
	}
	return "", fmt.Errorf("the turn ended with %T", ev.Data)
}

// endpoint is one route: the caller's bearer token in, the JSON answer (or an
// error, mapped by fail) out.
type endpoint func(r *http.Request, token string) (any, error)

// handle checks the bearer token, runs e and writes its answer.
func handle(e endpoint) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Authorization: Bearer <token> required"})
			return
		}
		out, err := e(r, token)
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// badRequest is a body that cannot be used; fail answers it with 400.
type badRequest string

func (e badRequest) Error() string { return string(e) }

// decode reads the JSON body into v, then checks that every named field is set.
func decode(r *http.Request, v any, fields func() map[string]string) error {
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(v); err != nil {
		return badRequest("body: " + err.Error())
	}
	for _, name := range slices.Sorted(maps.Keys(fields())) {
		if fields()[name] == "" {
			return badRequest("body: field " + name + " is required")
		}
	}
	return nil
}

// POST /api/chat/start → {"sessionId"}
func (a *app) chatStart(r *http.Request, token string) (any, error) {
	c, key, err := a.client(r.Context(), token, "")
	if err != nil {
		return nil, err
	}
	s, err := c.CreateSession(r.Context(), a.sessionConfig())
	if err != nil {
		return nil, err
	}
	a.remember(key, s)
	return map[string]string{"sessionId": s.SessionID}, nil
}

// POST /api/chat/message {"sessionId", "message"} → {"content"}
func (a *app) chatMessage(r *http.Request, token string) (any, error) {
	var in struct{ SessionID, Message string }
	if err := decode(r, &in, func() map[string]string { return map[string]string{"sessionId": in.SessionID, "message": in.Message} }); err != nil {
		return nil, err
	}
	c, key, err := a.client(r.Context(), token, "")
	if err != nil {
		return nil, err
	}
	s, err := a.attached(r.Context(), c, key, in.SessionID)
	if err != nil {
		return nil, err
	}
	content, err := a.reply(r.Context(), s, in.Message)
	if err != nil {
		return nil, err
	}
	return map[string]string{"content": content}, nil
}

// POST /api/chat/end {"sessionId"} → {"success": true}
func (a *app) chatEnd(r *http.Request, token string) (any, error) {
	var in struct{ SessionID string }
	if err := decode(r, &in, func() map[string]string { return map[string]string{"sessionId": in.SessionID} }); err != nil {
		return nil, err
	}
	c, key, err := a.client(r.Context(), token, "")
	if err != nil {
		return nil, err
	}
	if err := c.DeleteSession(r.Context(), in.SessionID); err != nil {
		return nil, err
	}
	a.forget(key, in.SessionID)
	return map[string]bool{"success": true}, nil
}

// POST /api/analyze {"prompt"} → {"result"}: an ephemeral session.
func (a *app) analyze(r *http.Request, token string) (any, error) {
	var in struct{ Prompt string }
	if err := decode(r, &in, func() map[string]string { return map[string]string{"prompt": in.Prompt} }); err != nil {
		return nil, err
	}
	c, _, err := a.client(r.Context(), token, "")
	if err != nil {
		return nil, err
	}
	s, err := c.CreateSession(r.Context(), a.sessionConfig())
	if err != nil {
		return nil, err
	}
	defer s.Disconnect()
	result, err := a.reply(r.Context(), s, in.Prompt)
	if err != nil {
		return nil, err
	}
	return map[string]string{"result": result}, nil
}

// POST /team-chat {"room", "message"} → {"content"}: one session shared by the
// room's members (the mesh's policy data lists them; its lock orders their turns).
// The first member to write creates the room, and owns it.
func (a *app) teamChat(r *http.Request, token string) (any, error) {
	var in struct{ Room, Message string }
	if err := decode(r, &in, func() map[string]string { return map[string]string{"room": in.Room, "message": in.Message} }); err != nil {
		return nil, err
	}
	c, key, err := a.client(r.Context(), token, in.Room)
	if err != nil {
		return nil, err
	}
	s, err := a.attached(r.Context(), c, key, in.Room)
	if err != nil && (strings.Contains(err.Error(), "no such session") || strings.Contains(err.Error(), "not found")) {
		// The mesh refuses a room that does not exist and one that is not ours
		// alike: try to open it. If it exists, the create is refused in turn.
		cfg := a.sessionConfig()
		cfg.SessionID = in.Room
		if s, err = c.CreateSession(r.Context(), cfg); err == nil {
			a.remember(key, s)
		}
	}
	if err != nil {
		return nil, err
	}
	content, err := a.reply(r.Context(), s, in.Message)
	if err != nil {
		return nil, err
	}
	return map[string]string{"content": content}, nil
}

// fail maps an error to an HTTP status: a bad body is 400; of what the mesh
// answered, a refusal by the policy is 403, a busy shared session 409, an
// unreachable mesh 503.
func fail(w http.ResponseWriter, err error) {
	status, msg := http.StatusBadGateway, err.Error()
	var bad badRequest
	switch {
	case errors.As(err, &bad):
		status = http.StatusBadRequest
	case strings.Contains(msg, "-32012") || strings.Contains(msg, "not allowed") || strings.Contains(msg, "denied"):
		status = http.StatusForbidden
	case strings.Contains(msg, "-32013") || strings.Contains(msg, "in use by another user"):
		status = http.StatusConflict
	case strings.Contains(msg, "-32010") || strings.Contains(msg, "unavailable"):
		status = http.StatusServiceUnavailable
	case strings.Contains(msg, "not found"):
		status = http.StatusNotFound
	}
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
