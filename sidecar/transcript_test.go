package sidecar

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/tunnel"
)

// Transcript golden tests: the data path as frames in → frames out.
//
// testdata/transcripts/<name>.transcript is a script of frames arriving at a Relay,
// from the client over a real tunnel and from a scripted CLI (a TCP listener the
// relay dials, which answers the sidecar's own connect and otherwise sends only
// what the script says). <name>.golden is each step followed by the frames that
// came out to each side. testdata/transcripts/README.md describes the format;
// go test ./sidecar -run TestTranscripts -update rewrites the goldens.

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
				t.Fatalf("%v (run go test ./sidecar -run TestTranscripts -update)", err)
			}
			if string(exp) != got {
				t.Errorf("%s differs from today's frames (review the diff, then go test ./sidecar -run TestTranscripts -update):\n%s",
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

// A transcript is one script: the relay's options and its steps.
type transcript struct {
	name, title string
	policy      bool // the shipped Rego, a registry.Memory and the guard; false: no engine
	caller      identity.Claims
	capacity    int
	pool, mode  string
	records     []*registry.Record
	steps       []*transcriptStep
}

type stepKind int

const (
	clientStep     stepKind = iota // client> F: the client sends F, then a barrier
	clientWaitStep                 // client~> F: the client sends F, then waits for a frame at the CLI (the relay is waiting for the CLI: no barrier can pass)
	cliStep                        // cli> F: the scripted CLI sends F, then a barrier
	reconnectStep                  // reconnect: close the tunnel if open, open a new one (the relay dials the CLI again)
)

type transcriptStep struct {
	line        int
	text        string // as written, echoed in the golden
	kind        stepKind
	frame       string
	awaitText   string // "await cli=N client=M": the step's goroutine-written frames
	awaitCLI    int
	awaitClient int
}

func parseTranscript(path string) (*transcript, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	tr := &transcript{
		name: strings.TrimSuffix(filepath.Base(path), ".transcript"), policy: true,
		caller: identity.Claims{User: "alice", Tenant: "acme"}, pool: "copilot", mode: "shared",
	}
	fail := func(n int, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", path, n, fmt.Sprintf(format, args...))
	}
	for i, line := range strings.Split(string(raw), "\n") {
		n := i + 1
		line = strings.TrimRight(line, " \t\r")
		switch {
		case line == "":
		case strings.HasPrefix(line, "# options:"):
			for _, kv := range strings.Fields(strings.TrimPrefix(line, "# options:")) {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "policy":
					if v != "shipped" && v != "none" {
						return nil, fail(n, "policy=%q: want shipped or none", v)
					}
					tr.policy = v == "shipped"
				case "user":
					tr.caller.User = v
				case "tenant":
					tr.caller.Tenant = v
				case "roles":
					tr.caller.Roles = strings.Split(v, ",")
				case "capacity":
					if tr.capacity, err = strconv.Atoi(v); err != nil || tr.capacity < 0 {
						return nil, fail(n, "capacity=%q: want a count", v)
					}
				case "pool":
					tr.pool = v
				case "mode":
					tr.mode = v
				default:
					return nil, fail(n, "unknown option %q", k)
				}
			}
		case strings.HasPrefix(line, "# record:"):
			fields := strings.Fields(strings.TrimPrefix(line, "# record:"))
			if len(fields) == 0 {
				return nil, fail(n, "record: want an id")
			}
			rec := &registry.Record{ID: fields[0], Mode: "shared", Members: []string{}, Pool: tr.pool}
			for _, kv := range fields[1:] {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "owner":
					rec.Owner = v
				case "tenant":
					rec.Tenant = v
				case "mode":
					rec.Mode = v
				case "members":
					rec.Members = strings.Split(v, ",")
				default:
					return nil, fail(n, "record: unknown field %q", k)
				}
			}
			tr.records = append(tr.records, rec)
		case strings.HasPrefix(line, "#"):
			if tr.title == "" && len(tr.steps) == 0 {
				tr.title = line
			}
		case line == "reconnect":
			tr.steps = append(tr.steps, &transcriptStep{line: n, text: line, kind: reconnectStep})
		case strings.HasPrefix(line, "await "):
			if len(tr.steps) == 0 {
				return nil, fail(n, "await before any step")
			}
			st := tr.steps[len(tr.steps)-1]
			st.awaitText = line
			for _, kv := range strings.Fields(strings.TrimPrefix(line, "await ")) {
				k, v, _ := strings.Cut(kv, "=")
				c, err := strconv.Atoi(v)
				if err != nil || c < 1 {
					return nil, fail(n, "await %s: want a count", kv)
				}
				switch k {
				case "cli":
					st.awaitCLI = c
				case "client":
					st.awaitClient = c
				default:
					return nil, fail(n, "await: unknown side %q (want cli or client)", k)
				}
			}
		default:
			prefix, frame, ok := strings.Cut(line, "> ")
			kinds := map[string]stepKind{"client": clientStep, "client~": clientWaitStep, "cli": cliStep}
			kind, known := kinds[prefix]
			if !ok || !known || frame == "" {
				return nil, fail(n, "want client> FRAME, client~> FRAME, cli> FRAME, await ..., reconnect or a # comment: %q", line)
			}
			tr.steps = append(tr.steps, &transcriptStep{line: n, text: line, kind: kind, frame: frame})
		}
	}
	if len(tr.steps) == 0 {
		return nil, fmt.Errorf("%s: no steps", path)
	}
	return tr, nil
}

// runTranscript plays tr against a fresh relay and returns the golden text.
func runTranscript(t *testing.T, tr *transcript, engine *policy.Engine) string {
	cli := startScriptedCLI(t)
	srv := httptest.NewServer(transcriptRelay(t, tr, engine, cli.addr))
	t.Cleanup(srv.Close)
	claims := tr.caller
	claims.Expires = time.Now().Add(time.Hour).Unix()
	token, err := transcriptKeys.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	r := &transcriptRun{t: t, url: "ws" + strings.TrimPrefix(srv.URL, "http"), header: http.Header{},
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
		"# frames written concurrently). Regenerate: go test ./sidecar -run TestTranscripts -update\n",
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
	rl.Keys, rl.Pool, rl.Mode, rl.Instance = transcriptKeys, tr.pool, tr.mode, "sidecar-0"
	if tr.policy {
		reg := &registry.Memory{}
		for _, rec := range tr.records {
			if _, err := reg.Create(t.Context(), rec); err != nil {
				t.Fatal(err)
			}
		}
		rl.Engine, rl.Registry = engine, reg
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
	for {
		select {
		case f, ok := <-r.conn.frames:
			if !ok {
				return
			}
			r.recordCLI(f, out)
		case <-deadline:
			r.t.Fatalf("line %d: the relay kept its CLI connection open %v after the tunnel closed", st.line, transcriptWait)
		}
	}
}

// drainCLI takes what the scripted CLI has received so far.
func (r *transcriptRun) drainCLI(out *stepOutput) {
	for {
		select {
		case f, ok := <-r.conn.frames:
			if !ok {
				return
			}
			r.recordCLI(f, out)
		default:
			return
		}
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

// normaliser replaces the session ids the sidecar generates (random UUIDs) with
// <session-N>, numbered by first appearance.
type normaliser struct {
	names map[string]string // real -> placeholder
	real  map[string]string // placeholder -> real
}

var generatedSessionID = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}`)

func newNormaliser() *normaliser {
	return &normaliser{names: map[string]string{}, real: map[string]string{}}
}

func (n *normaliser) apply(frame string) string {
	frame = generatedSessionID.ReplaceAllStringFunc(frame, func(id string) string {
		name, ok := n.names[id]
		if !ok {
			name = fmt.Sprintf("<session-%d>", len(n.names)+1)
			n.names[id], n.real[name] = name, id
		}
		return name
	})
	return strings.ReplaceAll(frame, "\n", `\n`) // one frame, one line
}

// scriptedCLI is the CLI the relay dials: one scriptedConn per tunnel.
type scriptedCLI struct {
	addr  string
	conns chan *scriptedConn
}

// scriptedConn answers the sidecar's connect (the first frame) and the barriers
// (every status.get: transcripts do not send it), and queues every other frame
// it receives, then "<closed>" when the relay closes it.
type scriptedConn struct {
	c      net.Conn
	wmu    sync.Mutex
	frames chan string
}

func startScriptedCLI(t *testing.T) *scriptedCLI {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedCLI{addr: l.Addr().String(), conns: make(chan *scriptedConn, 8)}
	var mu sync.Mutex
	var accepted []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range accepted {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
			sc := &scriptedConn{c: c, frames: make(chan string, 256)}
			go sc.serve()
			s.conns <- sc
		}
	}()
	return s
}

func (sc *scriptedConn) write(body []byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	_, err := sc.c.Write(jsonrpc.Frame(body))
	return err
}

func (sc *scriptedConn) serve() {
	defer close(sc.frames)
	r := jsonrpc.NewReader(sc.c, jsonrpc.DefaultLimits)
	for first := true; ; first = false {
		body, err := r.Read()
		if err != nil {
			sc.frames <- "<closed>"
			return
		}
		m, perr := jsonrpc.ParseTrusted(body)
		if perr == nil && m.Kind == jsonrpc.Request && first && m.Method == "connect" {
			b, _ := jsonrpc.ResultResponse(m.ID, json.RawMessage(scriptedHello))
			sc.write(b)
			continue
		}
		if perr == nil && m.Kind == jsonrpc.Request && m.Method == "status.get" { // a barrier, whatever id the relay gave it
			sc.write([]byte(`{"jsonrpc":"2.0","id":` + m.IDKey() + `,"result":{}}`))
			continue
		}
		sc.frames <- string(body)
	}
}

// scriptedClient reads its tunnel into frames, then "<closed ...>" with the close
// status and reason.
type scriptedClient struct {
	c      *tunnel.Conn
	frames chan string
}

func newScriptedClient(c *tunnel.Conn) *scriptedClient {
	sc := &scriptedClient{c: c, frames: make(chan string, 256)}
	go func() {
		for {
			b, err := c.Read(context.Background())
			if err != nil {
				if code, reason, ok := tunnel.CloseReason(err); ok {
					sc.frames <- fmt.Sprintf("<closed %d %s: %q>", int(code), code, reason)
				} else {
					sc.frames <- "<closed without a close frame>"
				}
				return
			}
			sc.frames <- string(b)
		}
	}()
	return sc
}

// unifiedDiff is a unified diff of two texts, three lines of context.
func unifiedDiff(aName, bName, a, b string) string {
	al, bl := strings.SplitAfter(a, "\n"), strings.SplitAfter(b, "\n")
	n, m := len(al), len(bl)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if al[i] == bl[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		kind   byte // ' ', '-', '+'
		text   string
		ai, bi int // lines before this one in a and b
	}
	var ops []op
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && al[i] == bl[j]:
			ops = append(ops, op{' ', al[i], i, j})
			i, j = i+1, j+1
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', al[i], i, j})
			i++
		default:
			ops = append(ops, op{'+', bl[j], i, j})
			j++
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", aName, bName)
	const context = 3
	for k := 0; k < len(ops); {
		if ops[k].kind == ' ' {
			k++
			continue
		}
		start, end := max(0, k-context), k
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*context {
				end = min(len(ops), end+context)
				break
			}
			end = run
		}
		var as, bs int
		for _, o := range ops[start:end] {
			if o.kind != '+' {
				as++
			}
			if o.kind != '-' {
				bs++
			}
		}
		fmt.Fprintf(&out, "@@ -%d,%d +%d,%d @@\n", ops[start].ai+1, as, ops[start].bi+1, bs)
		for _, o := range ops[start:end] {
			out.WriteByte(o.kind)
			out.WriteString(strings.TrimSuffix(o.text, "\n"))
			out.WriteByte('\n')
		}
		k = end
	}
	return out.String()
}
