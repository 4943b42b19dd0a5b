package connector

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/tunnel"
	"github.com/climesh/climesh/tunnel/tunneltest"
)

// sdkSide is the SDK's end of a connection: what it writes goes to Serve's input,
// what Serve writes comes back framed.
type sdkSide struct {
	toServe   *io.PipeWriter
	fromServe *jsonrpc.Reader
}

func run(t *testing.T, o Options, token string) (*sdkSide, chan error) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- Serve(t.Context(), o, token, jsonrpc.NewReader(inR, jsonrpc.DefaultLimits), outW, nil)
		outW.Close()
	}()
	t.Cleanup(func() { inW.Close() })
	return &sdkSide{toServe: inW, fromServe: jsonrpc.NewReader(outR, jsonrpc.DefaultLimits)}, done
}

// reconnectingTo serves edge for the test and returns Options that reach it and
// reconnect for up to 10 s.
func reconnectingTo(t *testing.T, edge http.Handler) Options {
	return Options{EdgeURL: tunneltest.Serve(t, edge), Limits: jsonrpc.DefaultLimits, Reconnect: 10 * time.Second}
}

// readWithin is the next message to the SDK, failing the test after d (a
// message lost in a move would otherwise hang it).
func (s *sdkSide) readWithin(t *testing.T, d time.Duration) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		b, err := s.fromServe.Read()
		if err != nil {
			b = []byte("read error: " + err.Error())
		}
		got <- string(b)
	}()
	select {
	case b := <-got:
		return b
	case <-time.After(d):
		t.Fatalf("no message for the application within %v", d)
		return ""
	}
}

func (s *sdkSide) call(t *testing.T, body string) string {
	t.Helper()
	if _, err := s.toServe.Write(jsonrpc.Frame([]byte(body))); err != nil {
		t.Fatal(err)
	}
	got, err := s.fromServe.Read()
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

func TestServeCarriesIdentityAndMessages(t *testing.T) {
	var seen http.Header
	url := tunneltest.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		serveTunnel(w, r, func(msg []byte) ([]byte, string) { return msg, "" }) // echo
	}))
	o := Options{EdgeURL: url, Session: "team-chat", User: "alice", Limits: jsonrpc.DefaultLimits}
	sdk, _ := run(t, o, "alice-token")
	if got := sdk.call(t, `{"jsonrpc":"2.0","id":1,"method":"ping"}`); got != `{"jsonrpc":"2.0","id":1,"method":"ping"}` {
		t.Fatalf("echo %q", got)
	}
	if seen.Get("Authorization") != "Bearer alice-token" || seen.Get("X-Climesh-User") != "alice" || seen.Get("X-Climesh-Session") != "team-chat" {
		t.Fatalf("upgrade headers %v", seen)
	}
}

func TestServeAnswersWhenTheEdgeRefuses(t *testing.T) {
	// The edge that cannot decide (its authorization service is down) answers
	// 503: an outage, told apart from a refusal.
	down := tunneltest.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	sdk503, _ := run(t, Options{EdgeURL: down, Limits: jsonrpc.DefaultLimits}, "bob")
	got := sdk503.call(t, `{"jsonrpc":"2.0","id":4,"method":"connect","params":{}}`)
	for _, want := range []string{`"id":4`, "-32010", "503", `"unavailable":"edge authorization"`} {
		if !strings.Contains(got, want) {
			t.Fatalf("503 answer %s lacks %q", got, want)
		}
	}
	url := tunneltest.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "tenant not admitted", http.StatusForbidden)
	}))
	sdk, done := run(t, Options{EdgeURL: url, Limits: jsonrpc.DefaultLimits}, "bob")
	got = sdk.call(t, `{"jsonrpc":"2.0","id":5,"method":"connect","params":{}}`)
	for _, want := range []string{`"id":5`, "-32011", "403", "tenant not admitted"} {
		if !strings.Contains(got, want) {
			t.Fatalf("refusal %s lacks %q", got, want)
		}
	}
	sdk.toServe.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Serve returned no error for a refused tunnel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve hung after the SDK closed")
	}
}

func TestConnectToken(t *testing.T) {
	if got := ConnectToken([]byte(`{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"t1"}}`)); got != "t1" {
		t.Fatalf("got %q", got)
	}
	if got := ConnectToken([]byte(`{"jsonrpc":"2.0","id":1,"method":"ping","params":{"token":"t1"}}`)); got != "" {
		t.Fatalf("a ping's token was taken: %q", got)
	}
}

// flakyEdge answers like a sidecar and drops its first tunnel right after
// accepting a session.send, as a crashed instance would.
type flakyEdge struct {
	mu      sync.Mutex
	tunnels int
	seen    []string // method and params of every request, per tunnel
	// refuseFor, when set, refuses upgrades (503) for this long after the crash.
	refuseFor time.Duration
	crashedAt time.Time
}

func (f *flakyEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	refusing := !f.crashedAt.IsZero() && time.Since(f.crashedAt) < f.refuseFor
	f.mu.Unlock()
	if refusing {
		http.Error(w, "no healthy instance yet", http.StatusServiceUnavailable)
		return
	}
	c, err := tunnel.Accept(w, r, 1<<20)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.tunnels++
	n := f.tunnels
	f.mu.Unlock()
	for {
		msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		m, _ := jsonrpc.ParseTrusted(msg)
		f.mu.Lock()
		f.seen = append(f.seen, fmt.Sprintf("%d %s %s", n, m.Method, msg))
		f.mu.Unlock()
		c.Write(r.Context(), sidecarAnswer(m))
		if m.Method == "session.send" && n == 1 {
			f.mu.Lock()
			f.crashedAt = time.Now()
			f.mu.Unlock()
			c.Fail("instance crashed")
			return
		}
	}
}

func TestServeReconnectsAndResumes(t *testing.T) {
	edge := &flakyEdge{}
	ev := &Events{}
	o := reconnectingTo(t, edge)
	o.Events = ev
	sdk, _ := run(t, o, "alice")
	sdk.call(t, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"alice"}}`)
	sdk.call(t, `{"jsonrpc":"2.0","id":2,"method":"session.create","params":{"model":"m","provider":{"type":"openai","baseUrl":"http://model","apiKey":"k"}}}`)
	// The send is accepted, then the instance goes away mid-turn: the app is told.
	if got := sdk.call(t, `{"jsonrpc":"2.0","id":3,"method":"session.send","params":{"sessionId":"s-1","prompt":"hi"}}`); !strings.Contains(got, "m-1") {
		t.Fatalf("send: %s", got)
	}
	lostTurn, err := sdk.fromServe.Read()
	if err != nil || !strings.Contains(string(lostTurn), `"type":"session.error"`) || !strings.Contains(string(lostTurn), `"sessionId":"s-1"`) {
		t.Fatalf("no session.error for the lost turn: %s %v", lostTurn, err)
	}
	// The next call works, on a new tunnel where the session was resumed with the
	// provider the application gave at create.
	if got := sdk.call(t, `{"jsonrpc":"2.0","id":4,"method":"session.getMessages","params":{"sessionId":"s-1"}}`); !strings.Contains(got, `"id":4,"result"`) {
		t.Fatalf("after the reconnect: %s", got)
	}
	edge.mu.Lock()
	defer edge.mu.Unlock()
	resumed := false
	for _, s := range edge.seen {
		if strings.HasPrefix(s, "2 session.resume") && strings.Contains(s, `"sessionId":"s-1"`) && strings.Contains(s, `"baseUrl":"http://model"`) {
			resumed = true
		}
	}
	if !resumed || ev.Reconnects.Load() != 1 {
		t.Fatalf("second tunnel saw %v (reconnects %d)", edge.seen, ev.Reconnects.Load())
	}
}

// pinningEdge pins like Envoy's stateful_session: each accepted tunnel is told
// its instance in x-climesh-host. The first tunnel ends after one answer; a
// tunnel that asks for that instance again is refused as a draining one would be.
type pinningEdge struct {
	mu    sync.Mutex
	asked []string // x-climesh-host of every upgrade, in order
}

func (e *pinningEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.asked = append(e.asked, r.Header.Get(protocol.HeaderPin))
	n := len(e.asked)
	e.mu.Unlock()
	if r.Header.Get(protocol.HeaderPin) == "host-1" {
		http.Error(w, "climesh sidecar: draining; connect to another instance", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set(protocol.HeaderPin, fmt.Sprintf("host-%d", n))
	serveTunnel(w, r, func(msg []byte) ([]byte, string) {
		m, _ := jsonrpc.ParseTrusted(msg)
		resp, _ := jsonrpc.ResultResponse(m.ID, map[string]any{})
		if n == 1 {
			return resp, "instance going away"
		}
		return resp, ""
	})
}

// TestReconnectAsksForItsInstanceFirst: a lost tunnel's reconnect asks for the
// instance it had (x-climesh-host from the upgrade response); refused there, it
// drops the pin at once and lets the ring pick.
func TestReconnectAsksForItsInstanceFirst(t *testing.T) {
	edge := &pinningEdge{}
	o := reconnectingTo(t, edge)
	sdk, _ := run(t, o, "alice")
	sdk.call(t, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"alice"}}`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got := sdk.call(t, `{"jsonrpc":"2.0","id":2,"method":"ping","params":{}}`); strings.Contains(got, `"result"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never reconnected")
		}
		time.Sleep(20 * time.Millisecond)
	}
	edge.mu.Lock()
	defer edge.mu.Unlock()
	if want := []string{"", "host-1", ""}; len(edge.asked) < 3 || fmt.Sprint(edge.asked[:3]) != fmt.Sprint(want) {
		t.Fatalf("upgrades asked for %q, want %q (none, the lost instance, then the ring)", edge.asked, want)
	}
}

func TestHeaderNamesTheUser(t *testing.T) {
	for name, c := range map[string]struct {
		o    Options
		want string
	}{
		"token only":        {Options{}, ""},
		"explicit user":     {Options{User: "bob", TokenAsUser: true}, "bob"},
		"token as the user": {Options{TokenAsUser: true}, "alice"},
	} {
		h := c.o.Header("alice")
		if got := h.Get(protocol.HeaderUser); got != c.want || h.Get(protocol.HeaderAuthorization) != "Bearer alice" {
			t.Errorf("%s: user %q (want %q), authorization %q", name, got, c.want, h.Get(protocol.HeaderAuthorization))
		}
	}
}

// TestCallsWhileReconnectingAreHeld: a call the application makes while its
// tunnel is being regained is sent once the sessions are back, not failed.
func TestCallsWhileReconnectingAreHeld(t *testing.T) {
	edge := &flakyEdge{refuseFor: 300 * time.Millisecond}
	o := reconnectingTo(t, edge)
	sdk, _ := run(t, o, "alice")
	sdk.call(t, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"alice"}}`)
	sdk.call(t, `{"jsonrpc":"2.0","id":2,"method":"session.create","params":{"model":"m"}}`)
	sdk.call(t, `{"jsonrpc":"2.0","id":3,"method":"session.send","params":{"sessionId":"s-1","prompt":"hi"}}`)
	if lost, err := sdk.fromServe.Read(); err != nil || !strings.Contains(string(lost), "session.error") {
		t.Fatalf("no session.error for the lost turn: %s %v", lost, err)
	}
	// The edge refuses for 300 ms: this call waits for the new tunnel.
	start := time.Now()
	got := sdk.call(t, `{"jsonrpc":"2.0","id":4,"method":"session.send","params":{"sessionId":"s-1","prompt":"again"}}`)
	if !strings.Contains(got, `"id":4,"result"`) {
		t.Fatalf("a call made while reconnecting was answered %s", got)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Fatalf("answered after %s: the edge was still refusing, so it cannot have been sent yet", waited)
	}
	edge.mu.Lock()
	defer edge.mu.Unlock()
	var order []string
	for _, s := range edge.seen {
		if strings.HasPrefix(s, "2 ") {
			order = append(order, strings.Fields(s)[1])
		}
	}
	if fmt.Sprint(order) != "[connect session.resume session.send]" {
		t.Fatalf("the new tunnel saw %v, want the resume before the held send", order)
	}
}

// serveTunnel accepts a tunnel and answers each message with reply's answer;
// a reason from reply then fails the tunnel with it.
func serveTunnel(w http.ResponseWriter, r *http.Request, reply func([]byte) (answer []byte, fail string)) {
	c, err := tunnel.Accept(w, r, 1<<20)
	if err != nil {
		return
	}
	for {
		msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		answer, fail := reply(msg)
		c.Write(r.Context(), answer)
		if fail != "" {
			c.Fail(fail)
			return
		}
	}
}

// sidecarAnswer answers m as a sidecar would: session s-1, message m-1.
func sidecarAnswer(m jsonrpc.Message) []byte {
	var result any = map[string]any{}
	switch m.Method {
	case "session.create":
		result = map[string]any{"sessionId": "s-1"}
	case "session.send":
		result = map[string]any{"messageId": "m-1"}
	}
	resp, _ := jsonrpc.ResultResponse(m.ID, result)
	return resp
}

// movingEdge asks its first tunnel to move (climesh/move) while a turn runs;
// the turn ends when the application next asks for the messages.
type movingEdge struct {
	mu       sync.Mutex
	tunnels  int
	seen     []string // "<tunnel> <method> <message>"
	upgrades []string // "<pin asked>|<features>" per upgrade
}

func (e *movingEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.tunnels++
	n := e.tunnels
	e.upgrades = append(e.upgrades, r.Header.Get(protocol.HeaderPin)+"|"+r.Header.Get(protocol.HeaderFeatures))
	e.mu.Unlock()
	w.Header().Set(protocol.HeaderPin, fmt.Sprintf("host-%d", n))
	c, err := tunnel.Accept(w, r, 1<<20)
	if err != nil {
		return
	}
	move := []byte(`{"jsonrpc":"2.0","method":"climesh/move","params":{}}`)
	for {
		msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		m, _ := jsonrpc.ParseTrusted(msg)
		e.mu.Lock()
		e.seen = append(e.seen, fmt.Sprintf("%d %s %s", n, m.Method, msg))
		e.mu.Unlock()
		c.Write(r.Context(), sidecarAnswer(m))
		if n == 1 && m.Method == "session.send" {
			c.Write(r.Context(), move) // a turn runs: not now
		}
		if n == 1 && m.Method == "session.getMessages" {
			c.Write(r.Context(), []byte(`{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-1","event":{"type":"session.idle","id":"e-9","data":{}}}}`))
		}
	}
}

// TestMoveBetweenTurns: a climesh/move that arrives while a turn runs cuts
// nothing — calls go on on the same tunnel — and is made when the turn ends:
// the tunnel closes before the turn's last event reaches the application, the
// connector dials again without the pin (the ring decides), resumes the
// session with the options the application gave, and the application's next
// call is answered there. It never sees the move, nor an error.
func TestMoveBetweenTurns(t *testing.T) {
	edge := &movingEdge{}
	ev := &Events{}
	o := reconnectingTo(t, edge)
	o.Events = ev
	sdk, _ := run(t, o, "alice")
	sdk.call(t, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"alice"}}`)
	sdk.call(t, `{"jsonrpc":"2.0","id":2,"method":"session.create","params":{"model":"m","provider":{"type":"openai","baseUrl":"http://model","apiKey":"k"}}}`)
	if got := sdk.call(t, `{"jsonrpc":"2.0","id":3,"method":"session.send","params":{"sessionId":"s-1","prompt":"hi"}}`); !strings.Contains(got, "m-1") {
		t.Fatalf("send: %s", got)
	}
	var toApp []string
	if got := sdk.call(t, `{"jsonrpc":"2.0","id":4,"method":"session.getMessages","params":{"sessionId":"s-1"}}`); !strings.Contains(got, `"id":4,"result"`) {
		t.Fatalf("during the turn: %s", got)
	}
	idle, err := sdk.fromServe.Read()
	if err != nil || !strings.Contains(string(idle), "session.idle") {
		t.Fatalf("the turn's end: %s %v", idle, err)
	}
	// The move was made as the turn ended.
	for deadline := time.Now().Add(5 * time.Second); ev.Moves.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no move after the turn ended")
		}
	}
	got := sdk.call(t, `{"jsonrpc":"2.0","id":5,"method":"session.getMessages","params":{"sessionId":"s-1"}}`)
	toApp = append(toApp, string(idle), got)
	if !strings.Contains(got, `"id":5,"result"`) {
		t.Fatalf("after the move: %s", got)
	}
	edge.mu.Lock()
	defer edge.mu.Unlock()
	var second []string
	for _, s := range edge.seen {
		if f := strings.Fields(s); f[0] == "2" {
			second = append(second, f[1])
		}
		if strings.HasPrefix(s, "2 session.resume") && !strings.Contains(s, `"baseUrl":"http://model"`) {
			t.Fatalf("resumed without the application's provider: %s", s)
		}
	}
	if fmt.Sprint(second) != "[connect session.resume session.getMessages]" {
		t.Fatalf("the new tunnel saw %v, want the resume before the next call (all: %v)", second, edge.seen)
	}
	if fmt.Sprint(edge.upgrades) != "[|move |move]" {
		t.Fatalf("upgrades (pin|features) %q: want both announcing move, the second without a pin", edge.upgrades)
	}
	if ev.Moves.Load() != 1 || edge.tunnels != 2 {
		t.Fatalf("moves %d, tunnels %d: want one move", ev.Moves.Load(), edge.tunnels)
	}
	for _, m := range toApp {
		if strings.Contains(m, "climesh/move") || strings.Contains(m, `"error"`) {
			t.Fatalf("the application saw %s", m)
		}
	}
}

// askingEdge streams, on its first tunnel, a turn the application did not
// start in this connection (another member's in a shared session, or a CLI
// request to the application), with a move asked in the middle of it.
type askingEdge struct {
	mu       sync.Mutex
	tunnels  int
	upgrades []string // x-climesh-features per upgrade
	answered chan string
}

func (e *askingEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.tunnels++
	n := e.tunnels
	e.upgrades = append(e.upgrades, r.Header.Get(protocol.HeaderFeatures))
	e.mu.Unlock()
	c, err := tunnel.Accept(w, r, 1<<20)
	if err != nil {
		return
	}
	for {
		msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		m, _ := jsonrpc.ParseTrusted(msg)
		switch {
		case m.Kind == jsonrpc.Response:
			e.answered <- fmt.Sprintf("%d %s", n, msg)
		case m.Kind == jsonrpc.Request:
			c.Write(r.Context(), sidecarAnswer(m))
		}
		if n == 1 && m.Method == "session.create" {
			c.Write(r.Context(), []byte(`{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-1","event":{"type":"assistant.message_delta","id":"e-1","data":{}}}}`))
			c.Write(r.Context(), []byte(`{"jsonrpc":"2.0","id":"cli-1","method":"tool.call","params":{"sessionId":"s-1","toolName":"t"}}`))
			c.Write(r.Context(), []byte(`{"jsonrpc":"2.0","method":"climesh/move","params":{}}`))
			c.Write(r.Context(), []byte(`{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-1","event":{"type":"session.idle","id":"e-9","data":{}}}}`))
		}
	}
}

// TestMoveWaitsForWhatTheCLIAsked: a move asked while the CLI awaits the
// application's answer to one of its requests (a tool call) waits: the
// answer goes back on the tunnel that asked, then the connector moves.
func TestMoveWaitsForWhatTheCLIAsked(t *testing.T) {
	edge := &askingEdge{answered: make(chan string, 4)}
	ev := &Events{}
	o := reconnectingTo(t, edge)
	o.Events = ev
	sdk, _ := run(t, o, "alice")
	sdk.call(t, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"alice"}}`)
	sdk.call(t, `{"jsonrpc":"2.0","id":2,"method":"session.create","params":{"model":"m"}}`)
	var got []string
	for range 3 { // the delta, the tool call, the idle
		got = append(got, sdk.readWithin(t, 5*time.Second))
	}
	if !strings.Contains(got[1], `"id":"cli-1"`) || !strings.Contains(got[2], "session.idle") {
		t.Fatalf("the application saw %q", got)
	}
	time.Sleep(100 * time.Millisecond)
	if ev.Moves.Load() != 0 {
		t.Fatal("moved while the CLI awaited the application's answer")
	}
	sdk.toServe.Write(jsonrpc.Frame([]byte(`{"jsonrpc":"2.0","id":"cli-1","result":{"ok":true}}`)))
	select {
	case a := <-edge.answered:
		if !strings.HasPrefix(a, "1 ") {
			t.Fatalf("the answer went to tunnel %s, not the one that asked", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the answer never reached the CLI")
	}
	// The next message after the answer lets the move happen (the link sees
	// the application idle when the next frame comes; here, the answer to a ping).
	if got := sdk.call(t, `{"jsonrpc":"2.0","id":3,"method":"ping","params":{}}`); !strings.Contains(got, `"id":3,"result"`) {
		t.Fatalf("ping: %s", got)
	}
	for deadline := time.Now().Add(5 * time.Second); ev.Moves.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no move once the application had answered")
		}
	}
}

// TestSharedSessionTunnelsDoNotMove: a connector on a shared (collab) session
// announces no move and ignores one — another member's turn streams to it
// without its knowing when it ends — and the application sees every event.
func TestSharedSessionTunnelsDoNotMove(t *testing.T) {
	edge := &askingEdge{answered: make(chan string, 4)}
	ev := &Events{}
	o := reconnectingTo(t, edge)
	o.Events, o.Session = ev, "team-room"
	sdk, _ := run(t, o, "alice")
	sdk.call(t, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"alice"}}`)
	sdk.call(t, `{"jsonrpc":"2.0","id":2,"method":"session.create","params":{"model":"m"}}`)
	for range 3 {
		sdk.readWithin(t, 5*time.Second)
	}
	sdk.toServe.Write(jsonrpc.Frame([]byte(`{"jsonrpc":"2.0","id":"cli-1","result":{"ok":true}}`)))
	if got := sdk.call(t, `{"jsonrpc":"2.0","id":3,"method":"ping","params":{}}`); !strings.Contains(got, `"id":3,"result"`) {
		t.Fatalf("ping: %s", got)
	}
	time.Sleep(200 * time.Millisecond)
	edge.mu.Lock()
	defer edge.mu.Unlock()
	if ev.Moves.Load() != 0 || edge.tunnels != 1 || edge.upgrades[0] != "" {
		t.Fatalf("moves %d, tunnels %d, features %q: a shared session's tunnel must not move", ev.Moves.Load(), edge.tunnels, edge.upgrades)
	}
}
