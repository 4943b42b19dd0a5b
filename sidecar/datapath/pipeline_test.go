package datapath

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/climesh/climesh/session/jsonrpc"
)

// recorder is a stage that notes what it sees and does what it is told.
type recorder struct {
	name   string
	mu     *sync.Mutex
	log    *[]string
	answer string // answer every request with this
	wait   string // make every request wait, then answer this ("" forwards)
}

func (r recorder) note(s string) {
	r.mu.Lock()
	*r.log = append(*r.log, r.name+":"+s)
	r.mu.Unlock()
}

func (r recorder) toCLI(_ context.Context, f *flow) {
	r.note("toCLI " + f.msg.Method)
	switch {
	case r.answer != "" && f.msg.Method != "":
		f.answer = []byte(r.answer)
	case r.wait != "-" && r.wait != "":
		answer := r.wait
		f.wait = func(context.Context) []byte {
			if answer == "forward" {
				return nil
			}
			return []byte(answer)
		}
	}
}
func (r recorder) toClient(_ context.Context, f *flow) {
	called := "nil"
	if f.call != nil {
		called = f.call.method
	}
	r.note("toClient call=" + called)
}
func (r recorder) refused(_ context.Context, f *flow) { r.note("refused " + f.msg.Method) }
func (r recorder) close()                             { r.note("close") }

type wires struct {
	mu             sync.Mutex
	toCLI, toApp   []string
	forwarded, ans chan struct{}
}

func newTestPipeline(stages ...recorder) (*pipeline, *wires, func() []string) {
	var mu sync.Mutex
	var log []string
	w := &wires{forwarded: make(chan struct{}, 10), ans: make(chan struct{}, 10)}
	p := &pipeline{calls: &callTable{max: 2},
		toCLIw: func(b []byte) error {
			w.mu.Lock()
			w.toCLI = append(w.toCLI, string(b))
			w.mu.Unlock()
			w.forwarded <- struct{}{}
			return nil
		},
		toClient: func(_ context.Context, b []byte) error {
			w.mu.Lock()
			w.toApp = append(w.toApp, string(b))
			w.mu.Unlock()
			w.ans <- struct{}{}
			return nil
		},
		onError: func(error) {},
		sent:    func(jsonrpc.Message) {},
	}
	for _, s := range stages {
		s.mu, s.log = &mu, &log
		p.inbound = append(p.inbound, s)
	}
	p.outbound = append(p.outbound, p.calls)
	for i := len(stages) - 1; i >= 0; i-- {
		s := stages[i]
		s.mu, s.log = &mu, &log
		p.outbound = append(p.outbound, s)
	}
	return p, w, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), log...)
	}
}

func TestPipelineOrderAndCallTable(t *testing.T) {
	p, w, log := newTestPipeline(recorder{name: "a"}, recorder{name: "b"})
	ctx := t.Context()
	if err := p.fromClient(ctx, msg(t, `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s"}}`)); err != nil {
		t.Fatal(err)
	}
	<-w.forwarded
	// The answer finds its call, for every outbound stage after the calls stage.
	if err := p.fromCLI(ctx, msg(t, `{"jsonrpc":"2.0","id":1,"result":{}}`)); err != nil {
		t.Fatal(err)
	}
	<-w.ans
	want := "a:toCLI session.send b:toCLI session.send b:toClient call=session.send a:toClient call=session.send"
	if got := strings.Join(log(), " "); got != want {
		t.Fatalf("order:\n got %s\nwant %s", got, want)
	}
	// The call ended with its answer: the id may be used again, and a second
	// answer with it finds no call.
	if p.calls.answered(msg(t, `{"jsonrpc":"2.0","id":1,"result":{}}`)) != nil {
		t.Fatal("the call is still in the table after its answer")
	}
}

func TestPipelineAdmission(t *testing.T) {
	p, w, _ := newTestPipeline(recorder{name: "a"})
	ctx := t.Context()
	for _, id := range []string{"1", "2"} {
		p.fromClient(ctx, msg(t, `{"jsonrpc":"2.0","id":`+id+`,"method":"ping","params":{}}`))
		<-w.forwarded
	}
	p.fromClient(ctx, msg(t, `{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}`))
	<-w.ans
	p.fromClient(ctx, msg(t, `{"jsonrpc":"2.0","id":3,"method":"ping","params":{}}`))
	<-w.ans
	if !strings.Contains(w.toApp[0], "awaits its answer") || !strings.Contains(w.toApp[1], "too many requests in flight on this connection (limit 2)") {
		t.Fatalf("answers %q", w.toApp)
	}
	if len(w.toCLI) != 2 {
		t.Fatalf("forwarded %d, want 2", len(w.toCLI))
	}
}

// A request a stage stops ends there: the stages before it are told, the ones
// after never see it, nothing enters the call table.
func TestPipelineStopTellsEarlierStages(t *testing.T) {
	p, w, got := sendThrough(t, answered, recorder{name: "a"}, recorder{name: "b", answer: `{"stop":1}`}, recorder{name: "c"})
	if want := "a:toCLI session.send b:toCLI session.send a:refused session.send"; got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if p.calls.sending("s") || len(w.toCLI) != 0 || w.toApp[0] != `{"stop":1}` {
		t.Fatalf("table %v, to CLI %q, to client %q", p.calls.calls, w.toCLI, w.toApp)
	}
}

// A stage that must wait (the collab lock) does so off the loop; a refusal after
// the wait is told to the stages before it, a pass runs the rest and forwards.
func TestPipelineWait(t *testing.T) {
	p, _, got := sendThrough(t, answered, recorder{name: "a"}, recorder{name: "lock", wait: `{"busy":1}`}, recorder{name: "c"})
	if want := "a:toCLI session.send lock:toCLI session.send a:refused session.send"; got != want {
		t.Fatalf("busy: got %s\nwant %s", got, want)
	}
	// A send answered busy awaits no answer: its session is not busy with it
	// (issue 12: it used to stay recorded until the tunnel closed).
	if p.calls.sending("s") {
		t.Fatal("a send answered busy is still awaiting its answer")
	}
	p, _, got = sendThrough(t, forwarded, recorder{name: "a"}, recorder{name: "lock", wait: "forward"}, recorder{name: "c"})
	if want := "a:toCLI session.send lock:toCLI session.send c:toCLI session.send"; got != want || !p.calls.sending("s") {
		t.Fatalf("taken: got %s\nwant %s (sending %v)", got, want, p.calls.sending("s"))
	}
}

// answered and forwarded say which end of a pipeline a test waits on.
func answered(w *wires) chan struct{}  { return w.ans }
func forwarded(w *wires) chan struct{} { return w.forwarded }

// sendThrough takes one session.send on session "s" through a new pipeline of
// stages, waits for the end until returns a frame, and returns the pipeline, its
// wires and the stages' log so far.
func sendThrough(t *testing.T, until func(*wires) chan struct{}, stages ...recorder) (*pipeline, *wires, string) {
	p, w, log := newTestPipeline(stages...)
	p.fromClient(t.Context(), msg(t, `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s"}}`))
	<-until(w)
	return p, w, strings.Join(log(), " ")
}

func TestLocalStage(t *testing.T) {
	s := localStage{hello: json.RawMessage(`{"protocolVersion":3}`)}
	for body, want := range map[string]string{
		`{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"the-user's"}}`: `{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":3}}`,
		`{"jsonrpc":"2.0","id":2,"method":"runtime.shutdown"}`:                        `{"jsonrpc":"2.0","id":2,"result":{}}`,
		`{"jsonrpc":"2.0","id":3,"method":"ping","params":{}}`:                        ``,
		`{"jsonrpc":"2.0","method":"connect","params":{}}`:                            ``, // a notification is not answered
	} {
		f := &flow{msg: msg(t, body)}
		s.toCLI(t.Context(), f)
		if string(f.answer) != want {
			t.Errorf("%s: answered %s, want %s", body, f.answer, want)
		}
	}
}

func TestMetricsStageCountsCLIErrors(t *testing.T) {
	rl := NewRelay(zap.NewNop(), CLIDialer{}, jsonrpc.DefaultLimits, prometheus.NewRegistry())
	s := metricsStage{rl.metrics}
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"x"}}`,
		`{"jsonrpc":"2.0","id":2,"error":{"code":-32603,"message":"y"}}`,
		`{"jsonrpc":"2.0","id":3,"result":{}}`,
		`{"jsonrpc":"2.0","method":"session.event","params":{}}`,
	} {
		s.toClient(t.Context(), &flow{msg: msg(t, body)})
	}
	if n := testutil.ToFloat64(rl.metrics.errors.WithLabelValues("-32603")); n != 2 {
		t.Fatalf("counted %v errors -32603, want 2", n)
	}
}

// A CLI cannot speak for climesh: a message of climesh's own namespace from
// the CLI (a climesh/move dressed as the sidecar's) never reaches the client;
// the CLI's own notifications do.
func TestCLICannotSendClimeshMethods(t *testing.T) {
	p, w, _ := newTestPipeline()
	for _, raw := range []string{
		`{"jsonrpc":"2.0","method":"climesh/move","params":{}}`,
		`{"jsonrpc":"2.0","id":7,"method":"climesh/move","params":{}}`,
		`{"jsonrpc":"2.0","method":"session.lifecycle","params":{"type":"created"}}`,
	} {
		m, err := jsonrpc.ParseTrusted([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.fromCLI(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.toApp) != 1 || !strings.Contains(w.toApp[0], "session.lifecycle") {
		t.Fatalf("the client got %q, want only the CLI's own notification", w.toApp)
	}
}
