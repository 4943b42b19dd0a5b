package datapath

import (
	"bytes"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/tunnel"
	"github.com/climesh/climesh/tunnel/tunneltest"
)

// Transcript golden tests: the data path as frames in → frames out.
//
// testdata/transcripts/<name>.transcript is a script of frames arriving at a Relay,
// from the client over a real tunnel and from a scripted CLI (a TCP listener the
// relay dials, which answers the sidecar's own connect and otherwise sends only
// what the script says). <name>.golden is each step followed by the frames that
// came out to each side. testdata/transcripts/README.md describes the format;
// go test ./sidecar/datapath -run TestTranscripts -update rewrites the goldens.

var updateTranscripts = flag.Bool("update", false, "rewrite sidecar/testdata/transcripts/*.golden from today's behaviour")

const transcriptDir = "testdata/transcripts"

// transcriptWait bounds every wait: generous, for a loaded 2-core machine. No
// step sleeps; a wait that runs out fails the test.
const transcriptWait = 10 * time.Second

// scriptedHello is the scripted CLI's answer to the sidecar's connect.
const scriptedHello = `{"ok":true,"protocolVersion":3,"version":"scripted-cli"}`

func TestTranscripts(t *testing.T) {
	scripts, err := filepath.Glob(filepath.Join(transcriptDir, "*.transcript"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no transcripts in %s: %v", transcriptDir, err)
	}
	engine := shippedPolicy(t) // shared: an Engine serves every tunnel of a sidecar
	want := map[string]bool{}
	for _, path := range scripts {
		tr, err := parseTranscript(path)
		if err != nil {
			t.Fatal(err)
		}
		golden := strings.TrimSuffix(path, ".transcript") + ".golden"
		want[golden] = true
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			got := runTranscript(t, tr, engine)
			if *updateTranscripts {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./sidecar/datapath -run TestTranscripts -update)", err)
			}
			if string(exp) != got {
				t.Errorf("%s differs from today's frames (review the diff, then go test ./sidecar/datapath -run TestTranscripts -update):\n%s",
					golden, unifiedDiff(golden, "got", string(exp), got))
			}
		})
	}
	goldens, _ := filepath.Glob(filepath.Join(transcriptDir, "*.golden"))
	for _, g := range goldens {
		if !want[g] {
			if *updateTranscripts {
				os.Remove(g)
				continue
			}
			t.Errorf("%s is stale: no transcript makes it (-update deletes it)", g)
		}
	}
}

const (
	clientStep     stepKind = iota // client> F: the client sends F, then a barrier
	clientWaitStep                 // client~> F: the client sends F, then waits for a frame at the CLI (the relay is waiting for the CLI: no barrier can pass)
	cliStep                        // cli> F: the scripted CLI sends F, then a barrier
	reconnectStep                  // reconnect: close the tunnel if open, open a new one (the relay dials the CLI again)
)

// runTranscript plays tr against a fresh relay and returns the golden text.
func runTranscript(t *testing.T, tr *transcript, engine *policy.Engine) string {
	cli := startScriptedCLI(t)
	url := tunneltest.Serve(t, transcriptRelay(t, tr, engine, cli.addr))
	claims := tr.caller
	claims.Expires = time.Now().Add(time.Hour).Unix()
	token, err := transcriptKeys.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	r := &transcriptRun{t: t, url: url, header: http.Header{},
		cli: cli, lastIDs: map[string]string{}, norm: newNormaliser()}
	r.header.Set("x-climesh-identity", token) // the wire name: the edge's signed identity assertion
	r.open()
	t.Cleanup(func() {
		if r.client != nil {
			r.client.c.Close("")
		}
	})

	var out strings.Builder
	fmt.Fprintf(&out, "%s\n# Golden of %s.transcript: after each step, what the scripted CLI received (→ cli) and what\n"+
		"# reached the client (→ client), each side in order of arrival (sorted where the step awaits\n"+
		"# frames written concurrently). Regenerate: go test ./sidecar/datapath -run TestTranscripts -update\n",
		cmp.Or(tr.title, "# "+tr.name), tr.name)
	for _, st := range tr.steps {
		o := r.step(st)
		fmt.Fprintf(&out, "\n%s\n", st.text)
		if st.awaitText != "" {
			fmt.Fprintf(&out, "%s\n", st.awaitText)
		}
		for _, f := range o.toCLI {
			fmt.Fprintf(&out, "  → cli: %s\n", f)
		}
		for _, f := range o.toClient {
			fmt.Fprintf(&out, "  → client: %s\n", f)
		}
		if len(o.toCLI)+len(o.toClient) == 0 {
			out.WriteString("  (nothing)\n")
		}
	}
	return out.String()
}

var transcriptKeys = &identity.Keys{Active: "k1", Keys: map[string][]byte{"k1": bytes.Repeat([]byte("k"), 32)}}

// transcriptRelay is the relay under test, as a sidecar's flags would build it:
// the only place that knows how (the refactor to a typed config changes it here).
func transcriptRelay(t *testing.T, tr *transcript, engine *policy.Engine, cliAddr string) http.Handler {
	rl := NewRelay(zap.NewNop(), CLIDialer{Addr: cliAddr, Token: "cli-token", Limits: jsonrpc.DefaultLimits, Timeout: transcriptWait},
		jsonrpc.DefaultLimits, prometheus.NewRegistry())
	rl.Keys = transcriptKeys
	if tr.policy {
		rl.Policy = &Policy{Engine: engine, Registry: memoryRegistry(t, tr.records...), Instance: "sidecar-0", Pool: tr.pool, Mode: tr.mode}
	} else if len(tr.records) > 0 {
		t.Fatal("records need policy=shipped (no registry without a policy)")
	}
	if tr.capacity > 0 {
		rl.SetCapacity(tr.capacity)
	}
	return rl
}

// transcriptRun is one transcript in progress: the open tunnel and its CLI connection.
type transcriptRun struct {
	t       *testing.T
	url     string
	header  http.Header
	cli     *scriptedCLI
	conn    *scriptedConn   // the CLI connection of the current tunnel
	client  *scriptedClient // the current tunnel
	closed  bool            // the current tunnel has closed
	barrier int
	lastID  string            // id of the last request the CLI received (barriers aside)
	lastIDs map[string]string // method -> id of the last such request the CLI received
	norm    *normaliser
}

type stepOutput struct{ toCLI, toClient []string }

// open dials a tunnel and takes the CLI connection the relay opens for it.
func (r *transcriptRun) open() {
	r.t.Helper()
	c, err := tunnel.Dial(r.t.Context(), r.url, r.header, 1<<20)
	if err != nil {
		r.t.Fatal(err)
	}
	r.client, r.closed = newScriptedClient(c), false
	select {
	case r.conn = <-r.cli.conns:
	case <-time.After(transcriptWait):
		r.t.Fatalf("the relay did not dial the scripted CLI within %v", transcriptWait)
	}
}

func (r *transcriptRun) step(st *transcriptStep) stepOutput {
	r.t.Helper()
	var out stepOutput
	switch st.kind {
	case reconnectStep:
		if !r.closed {
			r.client.c.Close("")
			r.closeBoth(st, &out)
		}
		r.open()
		return out
	case clientStep, clientWaitStep:
		if r.closed {
			r.t.Fatalf("line %d: the tunnel closed at an earlier step (reconnect first)", st.line)
		}
		if err := r.client.c.Write(r.t.Context(), []byte(r.subst(st, st.frame))); err != nil {
			r.t.Fatalf("line %d: client write: %v", st.line, err)
		}
	case cliStep:
		if r.closed {
			r.t.Fatalf("line %d: the tunnel closed at an earlier step (reconnect first)", st.line)
		}
		if err := r.conn.write([]byte(r.subst(st, st.frame))); err != nil {
			r.t.Fatalf("line %d: scripted CLI write: %v", st.line, err)
		}
	}
	if st.kind == clientWaitStep {
		r.awaitCLI(st, &out, max(1, st.awaitCLI))
	} else {
		r.sync(st, &out)
		r.awaitCLI(st, &out, st.awaitCLI)
	}
	r.awaitClient(st, &out, st.awaitClient)
	if st.awaitCLI > 1 {
		slices.Sort(out.toCLI) // written by concurrent goroutines: in no defined order
	}
	if st.awaitClient > 1 {
		slices.Sort(out.toClient)
	}
	return out
}

// sync waits until every frame the step made the relay's two loops write has
// arrived. The barrier is a status.get with id "barrier-N" from the client: the
// relay handles client frames in order, so it forwards the barrier after what the
// step's client frame caused; the scripted CLI reads in order and answers the
// barrier after every frame before it (and after the step's own frame, which it
// sent first); the relay handles CLI frames in order and forwards the answer after
// what they caused. When the answer reaches the client, both sides hold all of
// it. (A local answer, runtime.shutdown, would prove the frames written to the
// CLI's socket, not read by the scripted CLI.) Barriers are not recorded.
func (r *transcriptRun) sync(st *transcriptStep, out *stepOutput) {
	r.t.Helper()
	r.barrier++
	id := fmt.Sprintf(`"barrier-%d"`, r.barrier)
	// A write to a tunnel the relay is closing may fail: the close is what the
	// step then records.
	r.client.c.Write(r.t.Context(), []byte(`{"jsonrpc":"2.0","id":`+id+`,"method":"status.get","params":{}}`))
	deadline := time.After(transcriptWait)
	for {
		select {
		case f, ok := <-r.client.frames:
			if !ok {
				r.t.Fatalf("line %d: client reader ended without a close", st.line)
			}
			if barrierAnswer(f) == id {
				r.drainCLI(out)
				return
			}
			out.toClient = append(out.toClient, r.norm.apply(f))
			if strings.HasPrefix(f, "<closed") {
				r.closed = true
				r.closeBoth(st, out)
				return
			}
		case <-deadline:
			r.t.Fatalf("line %d: barrier %s not answered within %v; so far → cli %q → client %q", st.line, id, transcriptWait, out.toCLI, out.toClient)
		}
	}
}

// barrierAnswer is the id of a barrier's answer (`"barrier-N"`), or "" for any
// other frame. Read, not matched byte for byte: the answer's bytes are the relay's.
func barrierAnswer(f string) string {
	var m struct {
		ID     json.RawMessage `json:"id"`
		Method *string         `json:"method"`
	}
	if json.Unmarshal([]byte(f), &m) != nil || m.Method != nil || !strings.HasPrefix(string(m.ID), `"barrier-`) {
		return ""
	}
	return string(m.ID)
}

// closeBoth records the end of the tunnel: the client's close (if not yet seen)
// and the relay closing its CLI connection.
func (r *transcriptRun) closeBoth(st *transcriptStep, out *stepOutput) {
	r.t.Helper()
	deadline := time.After(transcriptWait)
	for !r.closed {
		select {
		case f := <-r.client.frames:
			if !strings.HasPrefix(f, "<closed") && barrierAnswer(f) == "" {
				out.toClient = append(out.toClient, r.norm.apply(f))
			}
			r.closed = strings.HasPrefix(f, "<closed")
		case <-deadline:
			r.t.Fatalf("line %d: the tunnel did not close within %v; so far → cli %q → client %q", st.line, transcriptWait, out.toCLI, out.toClient)
		}
	}
	if !r.takeCLI(out, deadline) {
		r.t.Fatalf("line %d: the relay kept its CLI connection open %v after the tunnel closed", st.line, transcriptWait)
	}
}

// drainCLI takes what the scripted CLI has received so far.
func (r *transcriptRun) drainCLI(out *stepOutput) { r.takeCLI(out, nil) }

// takeCLI records what the scripted CLI receives until its connection closes,
// or, with until nil, until nothing more is waiting; false: until fired first.
func (r *transcriptRun) takeCLI(out *stepOutput, until <-chan time.Time) bool {
	for {
		var f string
		var ok bool
		if until == nil {
			select {
			case f, ok = <-r.conn.frames:
			default:
				return true
			}
		} else {
			select {
			case f, ok = <-r.conn.frames:
			case <-until:
				return false
			}
		}
		if !ok {
			return true
		}
		r.recordCLI(f, out)
	}
}

// awaitCLI waits until the step has n frames at the CLI (frames a goroutine of
// the relay writes, which no barrier orders).
func (r *transcriptRun) awaitCLI(st *transcriptStep, out *stepOutput, n int) {
	r.t.Helper()
	deadline := time.After(transcriptWait)
	for len(out.toCLI) < n {
		select {
		case f, ok := <-r.conn.frames:
			if !ok {
				r.t.Fatalf("line %d: CLI connection gone while awaiting %d frames; got %q", st.line, n, out.toCLI)
			}
			r.recordCLI(f, out)
		case <-deadline:
			r.t.Fatalf("line %d: %d of %d frames at the CLI within %v: %q", st.line, len(out.toCLI), n, transcriptWait, out.toCLI)
		}
	}
	r.drainCLI(out)
}

func (r *transcriptRun) awaitClient(st *transcriptStep, out *stepOutput, n int) {
	r.t.Helper()
	deadline := time.After(transcriptWait)
	for len(out.toClient) < n {
		select {
		case f := <-r.client.frames:
			out.toClient = append(out.toClient, r.norm.apply(f))
		case <-deadline:
			r.t.Fatalf("line %d: %d of %d frames at the client within %v: %q", st.line, len(out.toClient), n, transcriptWait, out.toClient)
		}
	}
}

func (r *transcriptRun) recordCLI(f string, out *stepOutput) {
	if m, err := jsonrpc.ParseTrusted([]byte(f)); err == nil && m.Kind == jsonrpc.Request {
		r.lastID, r.lastIDs[m.Method] = m.IDKey(), m.IDKey()
	}
	out.toCLI = append(out.toCLI, r.norm.apply(f))
}

var (
	lastMethodRef = regexp.MustCompile(`\$LAST\(([^)]+)\)`)
	placeholder   = regexp.MustCompile(`<session-\d+>`)
)

// subst fills a script frame: $LAST(method) is the id of the last such request
// the CLI received, $LAST that of the last request; <session-N> the session id
// the sidecar generated that the goldens show as <session-N>.
func (r *transcriptRun) subst(st *transcriptStep, frame string) string {
	r.t.Helper()
	fail := func(format string, args ...any) {
		r.t.Fatalf("line %d: %s", st.line, fmt.Sprintf(format, args...))
	}
	frame = lastMethodRef.ReplaceAllStringFunc(frame, func(ref string) string {
		method := lastMethodRef.FindStringSubmatch(ref)[1]
		id, ok := r.lastIDs[method]
		if !ok {
			fail("%s: the CLI has received no %s", ref, method)
		}
		return id
	})
	if strings.Contains(frame, "$LAST") {
		if r.lastID == "" {
			fail("$LAST: the CLI has received no request")
		}
		frame = strings.ReplaceAll(frame, "$LAST", r.lastID)
	}
	return placeholder.ReplaceAllStringFunc(frame, func(p string) string {
		id, ok := r.norm.real[p]
		if !ok {
			fail("%s: no such session id seen yet", p)
		}
		return id
	})
}
