package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/policies"
)

// createWith is alice's session.create in pool "demo" naming a model endpoint.
func createWith(baseURL string) MessageInput {
	return MessageInput{User: "alice", Tenant: "demo", Pool: "demo", Mode: "shared", Kind: "request", Method: "session.create",
		SessionID: "s1", Params: []byte(`{"sessionId": "s1", "model": "m", "provider": {"type": "openai", "baseUrl": "` + baseURL + `"}}`)}
}

// TestBuiltinDecidesAsShipped: the built-in source decides as policies/rego on
// disk does, at the edge and per message; ownership included.
func TestBuiltinDecidesAsShipped(t *testing.T) {
	builtin, err := NewEngine(t.Context(), Builtin, []string{MessageQuery, EdgeQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	disk := shippedEngine(t)
	rec := map[string]any{"owner": "alice", "tenant": "demo", "members": []any{}}
	inputs := map[string]MessageInput{
		"owner sends":      {User: "alice", Tenant: "demo", Pool: "demo", Kind: "request", Method: "session.send", SessionID: "s1", Record: rec, Params: []byte(`{"sessionId": "s1", "prompt": "hi"}`)},
		"other user reads": {User: "bob", Tenant: "demo", Pool: "demo", Kind: "request", Method: "session.resume", SessionID: "s1", Record: rec, Params: []byte(`{"sessionId": "s1"}`)},
		"unknown session":  {User: "bob", Tenant: "demo", Pool: "demo", Kind: "request", Method: "session.getMessages", SessionID: "s2", Params: []byte(`{"sessionId": "s2"}`)},
		"server-wide":      {User: "bob", Tenant: "demo", Pool: "demo", Kind: "request", Method: "account.logout"},
		"loopback model":   createWith("http://127.0.0.1:9/v1"),
	}
	allowed := 0
	for name, in := range inputs {
		b, d := builtin.DecideMessage(t.Context(), in), disk.DecideMessage(t.Context(), in)
		if b.Allow != d.Allow || b.Reason != d.Reason {
			t.Errorf("%s: builtin %+v, policies/rego %+v", name, b, d)
		}
		if b.Allow {
			allowed++
		}
	}
	if allowed != 1 {
		t.Errorf("%d of the inputs allowed, want 1 (the owner's send)", allowed)
	}
	edge := map[string]any{"identity": map[string]any{"user": "bob", "tenant": "demo"},
		"attributes": map[string]any{"contextExtensions": map[string]any{"pool": "demo"}}}
	b, err := builtin.Eval(t.Context(), EdgeQuery, edge)
	if err != nil {
		t.Fatal(err)
	}
	if allow, _ := b.(map[string]any)["allowed"].(bool); !allow {
		t.Errorf("builtin edge policy refused a verified user of pool demo: %v", b)
	}
}

// TestBuiltinFingerprintIsStable: every process built from one tree reports one
// fingerprint for the built-in policies (names are relative, not temp paths).
func TestBuiltinFingerprintIsStable(t *testing.T) {
	a, err := FingerprintFS(policies.Rego())
	if err != nil {
		t.Fatal(err)
	}
	copyDir := t.TempDir()
	if err := os.CopyFS(copyDir, policies.Rego()); err != nil {
		t.Fatal(err)
	}
	b, err := FingerprintFS(os.DirFS(copyDir))
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatalf("the same files fingerprint %s embedded and %s copied", a[:12], b[:12])
	}
	os.WriteFile(filepath.Join(copyDir, "data.json"), []byte(`{}`), 0o644)
	if c, _ := FingerprintFS(os.DirFS(copyDir)); c == a {
		t.Fatal("a changed data.json kept the fingerprint")
	}
}

// TestWithData: a data file adds to the source's data (here: the model endpoint
// the demo's sessions name), is reloaded when it changes, and may not replace a
// value the source sets.
func TestWithData(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "demo-data.json")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(data, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"climesh": {"pools": {"demo": {"provider_base_urls": ["http://127.0.0.1:9/v1"]}}}}`)
	e, err := NewEngine(t.Context(), Builtin, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry(), WithData(data))
	if err != nil {
		t.Fatal(err)
	}
	if d := e.DecideMessage(t.Context(), createWith("http://127.0.0.1:9/v1")); !d.Allow {
		t.Fatalf("the listed model endpoint was refused: %+v", d)
	}
	if d := e.DecideMessage(t.Context(), createWith("http://127.0.0.1:10/v1")); d.Allow {
		t.Fatalf("an unlisted model endpoint was allowed: %+v", d)
	}
	// The shipped data still holds: pool demo admits every tenant.
	if d := e.DecideMessage(t.Context(), MessageInput{User: "bob", Tenant: "demo", Pool: "demo", Kind: "request", Method: "session.resume", SessionID: "s1",
		Record: map[string]any{"owner": "alice", "tenant": "demo"}, Params: []byte(`{"sessionId": "s1"}`)}); d.Allow {
		t.Fatalf("bob resumed alice's session with a data file added: %+v", d)
	}

	write(`{"climesh": {"pools": {"demo": {"provider_base_urls": ["http://127.0.0.1:10/v1"]}}}}`)
	if err := e.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := e.DecideMessage(t.Context(), createWith("http://127.0.0.1:9/v1")); d.Allow {
		t.Fatalf("the endpoint removed from the data file is still allowed: %+v", d)
	}

	cases := map[string]struct{ body, want string }{
		"replaces a value": {`{"climesh": {"pools": {"demo": {"tenants": ["acme"]}}}}`, "climesh.pools.demo.tenants is set by the policy source too"},
		"not JSON":         {`{"climesh": `, "demo-data.json"},
	}
	for name, tc := range cases {
		write(tc.body)
		_, err := NewEngine(t.Context(), Builtin, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry(), WithData(data))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), data) {
			t.Errorf("%s: %v, want an error naming %s and %q", name, err, data, tc.want)
		}
	}
	missing := filepath.Join(dir, "missing.json")
	if _, err := NewEngine(t.Context(), Builtin, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry(), WithData(missing)); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("a missing data file: %v, want an error naming it", err)
	}
}
