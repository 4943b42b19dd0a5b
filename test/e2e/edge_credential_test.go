package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/test/harness"
)

// TestEdgeCredentialBySDS: Envoy receives the edge credential as an SDS secret
// and adds it to every tunnel in place of any copy the client sent; neither
// Envoy's config_dump nor the xds-server's /debug/xds shows it.
func TestEdgeCredentialBySDS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: needs Envoy and the xds-server binary (run without -short)")
	}
	const cred = "known-edge-credential-7d1e0c55a9"
	dir := t.TempDir()
	credFile := filepath.Join(dir, "edge-credential")
	if err := os.WriteFile(credFile, []byte(cred+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The upstream greets with every value of the header it received.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		got := strings.Join(r.Header.Values(protocol.HeaderEdgeCredential), ",")
		c.Write(r.Context(), websocket.MessageText, []byte(got))
		c.Close(websocket.StatusNormalClosure, "")
	}))
	t.Cleanup(up.Close)
	_, upPort, _ := net.SplitHostPort(up.Listener.Addr().String())
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	x, err := harness.StartXDSServer(ctx, dir, fmt.Sprintf(`identity:
  trust_client_headers: true # no JWT issuer here
  edge_credential_file: %s
listeners:
  - {name: edge, port: %d, routes: [{pool: shared}]}
pools:
  - name: shared
    static: [{id: up, address: 127.0.0.1, port: %s}]
`, credFile, port, upPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dumpOnFailure(t, x.Proc); x.Close() })
	envoy, err := harness.StartEnvoy(ctx, dir, x.XDSAddr, harness.EnvoyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dumpOnFailure(t, envoy.Proc); envoy.Close() })

	url := fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", port)
	header := http.Header{"X-Climesh-User": {"alice"}, "X-Climesh-Edge-Credential": {"forged-by-the-client"}}
	var seen string
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = harness.Poll(wctx, 100*time.Millisecond, func() error {
		status, got, err := upgrade(ctx, url, header)
		if status != http.StatusSwitchingProtocols {
			return fmt.Errorf("status %d: %v", status, err)
		}
		seen = got
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != cred {
		t.Fatalf("the upstream got %s %q, want exactly the edge credential", protocol.HeaderEdgeCredential, seen)
	}

	dump, err := envoy.Admin("/config_dump?include_eds")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(dump, cred) {
		t.Fatal("Envoy's /config_dump shows the edge credential in clear")
	}
	if !strings.Contains(dump, "dynamic_active_secrets") || !strings.Contains(dump, "climesh/edge-credential") {
		t.Fatalf("Envoy's /config_dump has no SDS secret climesh/edge-credential:\n%s", grepLines(dump, "secret"))
	}
	_, debug, err := x.Get("/debug/xds")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(debug, cred) {
		t.Fatal("the xds-server's /debug/xds shows the edge credential in clear")
	}
}
