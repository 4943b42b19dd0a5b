package policy

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func shippedEngine(t testing.TB) *Engine {
	t.Helper()
	e, err := NewEngine(context.Background(), "../policies/rego", []string{MessageQuery, EdgeQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestDecideMessageShippedPolicy(t *testing.T) {
	e := shippedEngine(t)
	const noSession = "access denied: no such session for this caller"
	rec := map[string]any{"owner": "alice", "tenant": "acme", "members": []any{}}
	// req is a request of (tenant acme, user) in the shared pool "copilot".
	req := func(user, method, sid string, rec map[string]any, params string) MessageInput {
		in := MessageInput{User: user, Tenant: "acme", Pool: "copilot", Mode: "shared", Kind: "request",
			Method: method, SessionID: sid, Record: rec}
		if params != "" {
			in.Params = []byte(params)
		}
		return in
	}
	globex := req("alice", "session.send", "s1", rec, `{"sessionId": "s1", "prompt": "hi"}`)
	globex.Tenant = "globex"
	notification := req("alice", "session.send", "s1", rec, `{"sessionId": "s1", "prompt": "hi"}`)
	notification.Kind = "notification"
	admin := req("root", "account.logout", "", nil, "")
	admin.Roles = []string{"admin"}
	cases := map[string]struct {
		in    MessageInput
		allow bool
		why   string
	}{
		"owner sends":             {req("alice", "session.send", "s1", rec, `{"sessionId": "s1", "prompt": "hi"}`), true, "allowed"},
		"other user resumes":      {req("bob", "session.resume", "s1", rec, `{"sessionId": "s1"}`), false, noSession},
		"unknown session":         {req("bob", "session.resume", "ghost", nil, `{"sessionId": "ghost"}`), false, noSession},
		"same name, other tenant": {globex, false, noSession},
		"notification":            {notification, false, "access denied: notifications are not accepted"},
		"ping":                    {req("bob", "ping", "", nil, ""), true, "allowed"},
		"server-wide":             {req("bob", "account.logout", "", nil, ""), false, `access denied: method "account.logout" is not allowed here`},
		"admin server-wide":       {admin, true, "allowed"},
		"chat create":             {req("bob", "session.create", "n1", nil, `{"sessionId": "n1", "model": "gpt-5", "streaming": true}`), true, "allowed"},
		"host option refused":     {req("bob", "session.create", "n1", nil, `{"sessionId": "n1", "workingDirectory": "/"}`), false, `access denied: session option "workingDirectory" is not allowed here`},
		"path attachment":         {req("alice", "session.send", "s1", rec, `{"sessionId": "s1", "attachments": [{"type": "file", "path": "/etc/passwd"}]}`), false, `access denied: session option "attachments" is not allowed here`},
		"unreadable params":       {req("alice", "session.send", "s1", rec, `{"sessionId": `), false, "access denied: unreadable params"},
	}
	for name, tc := range cases {
		d := e.DecideMessage(t.Context(), tc.in)
		if d.Allow != tc.allow || d.Reason != tc.why {
			t.Errorf("%s: %+v, want allow=%v %q", name, d, tc.allow, tc.why)
		}
		// The shipped data opens none of the CLI's built-in tools.
		if len(d.BuiltinTools) != 0 || d.AllTools() {
			t.Errorf("%s: built-in tools %v from the shipped data", name, d.BuiltinTools)
		}
	}
}

// TestDecideMessageBuiltinTools: the pool's and the tenant's builtin_tools reach
// the Decision, sorted; ["*"] is all of them; a refusal carries none.
func TestDecideMessageBuiltinTools(t *testing.T) {
	dir := t.TempDir()
	rego, err := os.ReadFile("../policies/rego/session.rego")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "session.rego"), rego, 0o644)
	os.WriteFile(filepath.Join(dir, "data.json"), []byte(`{"climesh": {
		"pools": {"dev": {"builtin_tools": ["view"]}, "isolated": {"builtin_tools": ["*"]}},
		"tenants": {"acme": {"builtin_tools": ["grep"]}}}}`), 0o644)
	e, err := NewEngine(t.Context(), dir, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	create := func(tenant, pool string) MessageInput {
		return MessageInput{User: "sam", Tenant: tenant, Pool: pool, Kind: "request",
			Method: "session.create", SessionID: "n1", Params: []byte(`{"sessionId": "n1"}`)}
	}
	for _, tc := range []struct {
		tenant, pool string
		want         []string
		all          bool
	}{
		{"acme", "dev", []string{"grep", "view"}, false},
		{"globex", "dev", []string{"view"}, false},
		{"globex", "copilot", nil, false},
		{"solo", "isolated", []string{"*"}, true},
	} {
		d := e.DecideMessage(t.Context(), create(tc.tenant, tc.pool))
		if !d.Allow || !slices.Equal(d.BuiltinTools, tc.want) || d.AllTools() != tc.all {
			t.Errorf("%s in %s: %+v, want tools %v (all: %v)", tc.tenant, tc.pool, d, tc.want, tc.all)
		}
	}
	refused := create("solo", "isolated")
	refused.Kind = "notification"
	if d := e.DecideMessage(t.Context(), refused); d.Allow || d.BuiltinTools != nil || d.AllTools() {
		t.Errorf("a refusal carried built-in tools: %+v", d)
	}
}

const allowAll = "package climesh.session\n\ndecision := {\"allow\": true, \"reason\": \"v1\"}\n"

func TestHotReloadAndBrokenPolicy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.rego")
	os.WriteFile(path, []byte(allowAll), 0o644)
	core, logs := observer.New(zap.InfoLevel)
	reg := prometheus.NewRegistry()
	e, err := NewEngine(t.Context(), dir, []string{MessageQuery}, zap.New(core), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go e.Watch(ctx, 10*time.Millisecond)
	in := MessageInput{User: "u", Method: "ping"}
	if d := e.DecideMessage(t.Context(), in); !d.Allow || d.Reason != "v1" {
		t.Fatalf("%+v", d)
	}
	// A change is picked up without restart. (Written whole, by rename: a watcher
	// that reads a file while os.WriteFile has emptied it sees an empty module.)
	replaceFile(t, path, strings.ReplaceAll(allowAll, `true, "reason": "v1"`, `false, "reason": "v2"`))
	waitUntil(t, func() bool { return e.DecideMessage(t.Context(), in).Reason == "v2" })

	// A broken file is refused with file:line; v2 keeps deciding.
	replaceFile(t, path, "package climesh.session\n\ndecision := {\n")
	waitUntil(t, func() bool { return testutil.ToFloat64(e.metrics.reloads.WithLabelValues("error")) >= 1 })
	if d := e.DecideMessage(t.Context(), in); d.Reason != "v2" {
		t.Fatalf("broken policy replaced the good one: %+v", d)
	}
	found := false
	for _, l := range logs.FilterMessage("policy refused; the previous one keeps serving").All() {
		for _, v := range l.ContextMap() {
			if s, ok := v.(string); ok && strings.Contains(s, "p.rego:4") {
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("no log naming p.rego:4 (the line of the error): %v", logs.All())
	}
}

// replaceFile gives path its new content at once (a write elsewhere, then a rename).
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestEvaluationErrorsDeny(t *testing.T) {
	dir := t.TempDir()
	// A conflict at evaluation time (two values for one complete rule) is an error.
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package climesh.session\n\ndecision := {\"allow\": true} if input.a\ndecision := {\"allow\": false} if input.b\n"), 0o644)
	e, err := NewEngine(t.Context(), dir, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e2 := e.DecideMessage(t.Context(), MessageInput{User: "u", Method: "ping"}) // undefined
	if e2.Allow {
		t.Fatal("undefined decision allowed")
	}
	// Wrong shape: allow missing.
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package climesh.session\n\ndecision := {\"ok\": true}\n"), 0o644)
	if err := e.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := e.DecideMessage(t.Context(), MessageInput{User: "u", Method: "ping"}); d.Allow {
		t.Fatal("malformed decision allowed")
	}
	if n := testutil.ToFloat64(e.metrics.evalErrors.WithLabelValues(MessageQuery)); n != 2 {
		t.Fatalf("counted %v errors, want 2", n)
	}
}

func TestBundle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bundle.tar.gz")
	writeBundle(path)
	e, err := NewEngine(t.Context(), path, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if d := e.DecideMessage(t.Context(), MessageInput{User: "u", Method: "ping"}); !d.Allow {
		t.Fatalf("bundle decision %+v", d)
	}
}

// writeBundle writes an OPA bundle of allowAll and a data file to path.
func writeBundle(path string) {
	f, _ := os.Create(path)
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	for name, body := range map[string]string{"/p.rego": allowAll, "/data.json": `{"x": 1}`} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
	}
	tw.Close()
	gz.Close()
	f.Close()
}

func TestFirstLoadMustSucceed(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package x\n\nnot valid rego\n"), 0o644)
	if _, err := NewEngine(t.Context(), dir, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry()); err == nil {
		t.Fatal("a broken policy loaded")
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// benchSend is a send to another user's session, which the shipped policy refuses.
var benchSend = MessageInput{User: "bob", Tenant: "acme", Pool: "copilot", Mode: "shared", Kind: "request",
	Method: "session.send", SessionID: "s1", Params: []byte(`{"sessionId": "s1", "prompt": "hi"}`),
	Record: map[string]any{"owner": "alice", "tenant": "acme", "members": []any{"carol"}}}

func BenchmarkDecideMessage(b *testing.B) {
	e := shippedEngine(b)
	b.ReportAllocs()
	for b.Loop() {
		if e.DecideMessage(b.Context(), benchSend).Allow {
			b.Fatal("allowed")
		}
	}
}

// BenchmarkDecideMessageTrivialPolicy is BenchmarkDecideMessage's input and call
// with a one-rule policy (allowAll): the floor of a decision — building the input,
// OPA's evaluation, reading the result — whatever the policy says.
func BenchmarkDecideMessageTrivialPolicy(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.rego"), []byte(allowAll), 0o644); err != nil {
		b.Fatal(err)
	}
	e, err := NewEngine(b.Context(), dir, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !e.DecideMessage(b.Context(), benchSend).Allow {
			b.Fatal("refused")
		}
	}
}
