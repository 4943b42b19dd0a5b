// Package modeldouble is the only double in climesh's end-to-end tests: a small
// OpenAI-compatible chat-completions server on loopback that the real Copilot CLI
// talks to through a bring-your-own-key provider. Its answers are deterministic:
//
//   - a user message `call tool NAME {json}` makes it ask for that tool (when the
//     request offers it); the tool's result then comes back as `tool NAME said: ...`;
//   - anything else is answered `echo: <last user message> (user messages: N, first: <first>)`,
//     so a test can tell that a resumed session still has its history.
//   - a user message `slow N` (or `slow N <more words>`) answers after N
//     milliseconds (a long turn).
package modeldouble

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server is a running model double.
type Server struct {
	URL      string // base URL to give the CLI, ending in /v1
	srv      *http.Server
	requests atomic.Int64
	mu       sync.Mutex
	last     []Message
	texts    []string             // every message's text it was sent, system prompts included
	arrived  map[string]time.Time // each prompt (a user's last message) -> its first request
	answered map[string]time.Time // each prompt -> when the double first began answering it
}

// Message is a chat message as the CLI sends it.
type Message struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
	ToolCalls  []struct {
		ID       string `json:"id"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	} `json:"tool_calls,omitempty"`
}

// Text is the message content as plain text (string or list of text parts).
func (m Message) Text() string {
	var s string
	if json.Unmarshal(m.Content, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(m.Content, &parts) == nil {
		var b strings.Builder
		for _, p := range parts {
			b.WriteString(p.Text)
		}
		return b.String()
	}
	return string(m.Content)
}

type chatRequest struct {
	Model    string    `json:"model"`
	Messages []Message `json:"messages"`
	Stream   bool      `json:"stream"`
	Tools    []struct {
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	} `json:"tools"`
}

// Start listens on a free loopback port.
func Start() (*Server, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{URL: "http://" + lis.Addr().String() + "/v1"}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", s.chat)
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": []map[string]any{{"id": "double-1", "object": "model", "owned_by": "climesh"}}})
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go s.srv.Serve(lis)
	return s, nil
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// Saw reports whether any message the double was sent so far contains text.
func (s *Server) Saw(text string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.texts {
		if strings.Contains(t, text) {
			return true
		}
	}
	return false
}

// Arrived is when a turn whose prompt is exactly prompt first reached the
// double (the request whose last message is that user message).
func (s *Server) Arrived(prompt string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.arrived[prompt]
	return at, ok
}

// Answered is when the double first began answering prompt (after its delay);
// false while it has not, or when every request for it was cancelled first.
// A turn is in the model's hands from Arrived to Answered.
func (s *Server) Answered(prompt string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.answered[prompt]
	return at, ok
}

// mark records now for prompt in *times unless it is there; s.mu is held.
func (s *Server) mark(times *map[string]time.Time, prompt string) {
	if _, seen := (*times)[prompt]; seen {
		return
	}
	if *times == nil {
		*times = map[string]time.Time{}
	}
	(*times)[prompt] = time.Now()
}

// Requests counts chat completions served.
func (s *Server) Requests() int64 { return s.requests.Load() }

// reply is what the double decided to say.
type reply struct {
	text     string
	toolName string
	toolArgs string
	delay    time.Duration
}

// contextBlocks are what the CLI wraps around a prompt (<current_datetime>...).
var contextBlocks = regexp.MustCompile(`(?s)<([a-z_]+)>.*?</[a-z_]+>`)

func decide(req chatRequest) reply {
	var users []string
	for _, m := range req.Messages {
		if m.Role == "user" {
			users = append(users, strings.TrimSpace(contextBlocks.ReplaceAllString(m.Text(), "")))
		}
	}
	last := req.Messages[len(req.Messages)-1]
	if last.Role == "tool" {
		name := "?"
		for _, m := range req.Messages {
			for _, c := range m.ToolCalls {
				if c.ID == last.ToolCallID {
					name = c.Function.Name
				}
			}
		}
		return reply{text: fmt.Sprintf("tool %s said: %s", name, last.Text())}
	}
	if len(users) == 0 {
		return reply{text: "echo: (nothing)"}
	}
	u := users[len(users)-1]
	if rest, ok := strings.CutPrefix(u, "call tool "); ok {
		name, args, _ := strings.Cut(rest, " ")
		for _, t := range req.Tools {
			if t.Function.Name == name {
				if args == "" {
					args = "{}"
				}
				return reply{toolName: name, toolArgs: args}
			}
		}
		return reply{text: "no tool named " + name + " was offered"}
	}
	r := reply{text: fmt.Sprintf("echo: %s (user messages: %d, first: %s)", u, len(users), users[0])}
	if rest, ok := strings.CutPrefix(u, "slow "); ok {
		// "slow N" or "slow N for <anything>": the first word is the delay.
		word, _, _ := strings.Cut(rest, " ")
		if ms, err := strconv.Atoi(word); err == nil && ms > 0 {
			r.delay = time.Duration(ms) * time.Millisecond
		}
	}
	return r
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Messages) == 0 {
		http.Error(w, `{"error":{"message":"bad request: want messages"}}`, http.StatusBadRequest)
		return
	}
	s.requests.Add(1)
	s.mu.Lock()
	s.last = req.Messages
	for _, m := range req.Messages {
		s.texts = append(s.texts, m.Text())
	}
	prompt := ""
	if last := req.Messages[len(req.Messages)-1]; last.Role == "user" {
		prompt = strings.TrimSpace(contextBlocks.ReplaceAllString(last.Text(), ""))
		s.mark(&s.arrived, prompt)
	}
	s.mu.Unlock()
	rep := decide(req)
	if rep.delay > 0 {
		select {
		case <-time.After(rep.delay):
		case <-r.Context().Done():
			return
		}
	}
	if prompt != "" {
		s.mu.Lock()
		s.mark(&s.answered, prompt)
		s.mu.Unlock()
	}
	id := fmt.Sprintf("chatcmpl-%d", s.requests.Load())
	finish := "stop"
	var toolCalls []map[string]any
	if rep.toolName != "" {
		finish = "tool_calls"
		toolCalls = []map[string]any{{"index": 0, "id": "call_" + id, "type": "function",
			"function": map[string]any{"name": rep.toolName, "arguments": rep.toolArgs}}}
	}
	usage := map[string]int{"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
	if !req.Stream {
		msg := map[string]any{"role": "assistant", "content": rep.text}
		if toolCalls != nil {
			msg["content"] = nil
			msg["tool_calls"] = toolCalls
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"id": id, "object": "chat.completion", "created": time.Now().Unix(), "model": req.Model,
			"choices": []map[string]any{{"index": 0, "message": msg, "finish_reason": finish}}, "usage": usage,
		})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	flusher, _ := w.(http.Flusher)
	chunk := func(delta map[string]any, finish any, withUsage bool) {
		c := map[string]any{"id": id, "object": "chat.completion.chunk", "created": time.Now().Unix(), "model": req.Model,
			"choices": []map[string]any{{"index": 0, "delta": delta, "finish_reason": finish}}}
		if withUsage {
			c["usage"] = usage
		}
		b, _ := json.Marshal(c)
		fmt.Fprintf(w, "data: %s\n\n", b)
		if flusher != nil {
			flusher.Flush()
		}
	}
	chunk(map[string]any{"role": "assistant", "content": ""}, nil, false)
	if toolCalls != nil {
		chunk(map[string]any{"tool_calls": toolCalls}, nil, false)
	} else {
		// Two content deltas, so that streaming is really exercised.
		half := len(rep.text) / 2
		chunk(map[string]any{"content": rep.text[:half]}, nil, false)
		chunk(map[string]any{"content": rep.text[half:]}, nil, false)
	}
	chunk(map[string]any{}, finish, true)
	fmt.Fprint(w, "data: [DONE]\n\n")
	if flusher != nil {
		flusher.Flush()
	}
}
