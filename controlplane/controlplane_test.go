package controlplane

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/xds"
)

func staticConfig(t *testing.T, instances string) *config.Config {
	t.Helper()
	c, err := config.Load([]byte(`
listeners: [{name: edge, port: 10000, routes: [{pool: p}]}]
pools: [{name: p, static: [` + instances + `]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeStaticAndReload: a static fleet is ready at once; a reload with
// another fleet is published; the HTTP endpoints answer.
func TestServeStaticAndReload(t *testing.T) {
	s := New(staticConfig(t, `{id: a, address: 127.0.0.1, port: 7001}`), zap.NewNop())
	xdsLis, _ := net.Listen("tcp", "127.0.0.1:0")
	httpLis, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, xdsLis, httpLis) }()
	base := "http://" + httpLis.Addr().String()
	waitFor(t, func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })

	_, fleet := get(t, base+"/debug/fleet")
	if !strings.Contains(fleet, `"id": "a"`) {
		t.Fatalf("/debug/fleet: %s", fleet)
	}
	_, before, _ := s.Publisher().Snapshot("edge")
	s.Reload(staticConfig(t, `{id: a, address: 127.0.0.1, port: 7001}, {id: b, address: 127.0.0.1, port: 7002}`))
	waitFor(t, func() bool { _, v, _ := s.Publisher().Snapshot("edge"); return v.Endpoints != before.Endpoints })
	_, xds := get(t, base+"/debug/xds?group=edge")
	if !strings.Contains(xds, "7002") {
		t.Fatalf("/debug/xds after the reload lacks the new instance: %.500s", xds)
	}
	if code, metrics := get(t, base+"/metrics"); code != 200 || !strings.Contains(metrics, `climesh_controlplane_updates_total{result="ok"}`) {
		t.Fatalf("/metrics: %d", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve returned %v on shutdown", err)
	}
}

// TestDebugXDSRedactsSecrets: /debug/xds shows that the edge credential is
// published, never its value.
func TestDebugXDSRedactsSecrets(t *testing.T) {
	const cred = "a-known-edge-credential-4f1c9e2b"
	file := filepath.Join(t.TempDir(), "edge-credential")
	if err := os.WriteFile(file, []byte(cred+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load([]byte(`
identity: {edge_credential_file: ` + file + `}
listeners: [{name: edge, port: 10000, routes: [{pool: p}]}]
pools: [{name: p, static: [{id: a, address: 127.0.0.1, port: 7001}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ResolveFiles(); err != nil {
		t.Fatal(err)
	}
	s := New(c, zap.NewNop())
	xdsLis, _ := net.Listen("tcp", "127.0.0.1:0")
	httpLis, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(t.Context(), xdsLis, httpLis)
	base := "http://" + httpLis.Addr().String()
	waitFor(t, func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })
	res, _, _ := s.Publisher().Snapshot("edge")
	if len(res.Secrets) != 1 {
		t.Fatalf("published secrets: %v", res.Secrets)
	}
	_, body := get(t, base+"/debug/xds")
	if strings.Contains(body, cred) {
		t.Fatalf("/debug/xds shows the edge credential:\n%s", body)
	}
	if !strings.Contains(body, "climesh/edge-credential") || !strings.Contains(body, xds.Redacted) {
		t.Fatalf("/debug/xds does not show the secret, redacted: %.2000s", body)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServeRefusesPlaceholderKeys: the xds-server does not start on the identity
// keys file as shipped, and says which field and file.
func TestServeRefusesPlaceholderKeys(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "identity-keys.json")
	shipped := `{"active": "k1", "keys": {"k1": "UkVQTEFDRS13aXRoLTMyLXJhbmRvbS1ieXRlcy0hISE="}}`
	if err := os.WriteFile(keys, []byte(shipped), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load([]byte(`
identity: {trust_client_headers: true}
policy: {source: ../policies/rego, identity_keys_file: ` + keys + `}
listeners: [{name: edge, port: 10000, routes: [{pool: p}]}]
pools: [{name: p, static: [{id: a, address: 127.0.0.1, port: 7001}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	xdsLis, _ := net.Listen("tcp", "127.0.0.1:0")
	httpLis, _ := net.Listen("tcp", "127.0.0.1:0")
	err = New(c, zap.NewNop()).Serve(t.Context(), xdsLis, httpLis)
	if want := "policy.identity_keys_file: identity keys " + keys + ": keys.k1: a placeholder"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Serve = %v; want %q", err, want)
	}
}
