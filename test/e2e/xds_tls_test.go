package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/test/harness"
)

// TestXDSOverMutualTLS: with server.tls and a client CA, the xds-server's gRPC
// port (ADS and ext_authz) speaks only mutual TLS. An Envoy bootstrapped like
// Envoy Gateway's (the xds cluster verifies the server, presents its client
// certificate) gets its config, and its ext_authz cluster — from xDS, with the
// files policy.ext_authz_tls names — admits a tunnel over TLS too. An Envoy
// without a client certificate, or without TLS, gets nothing.
func TestXDSOverMutualTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: needs Envoy and the xds-server binary (run without -short)")
	}
	dir := t.TempDir()
	ca, err := harness.NewCA(dir, "xds-ca")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.Issue(dir, "xds-server", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(dir, "envoy", "envoy.climesh.test")
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := harness.NewIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	keysFile := filepath.Join(dir, "identity-keys.json")
	if err := os.WriteFile(keysFile, fmt.Appendf(nil, `{"active": "k1", "keys": {"k1": %q}}`, base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	root, err := harness.Root()
	if err != nil {
		t.Fatal(err)
	}
	echo, err := harness.StartEcho("cli-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(echo.Close)
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	x, err := harness.StartXDSServerWith(ctx, dir, fmt.Sprintf(`jwt:
  providers:
    - {name: test, issuer: %q, audiences: [%s], local_jwks_file: %s}
policy:
  source: %s
  identity_keys_file: %s
  ext_authz_tls: {trusted_ca_file: %s, cert_file: %s, key_file: %s}
listeners:
  - {name: edge, port: %d, routes: [{pool: copilot}]}
pools:
  - name: copilot
    static: [{id: cli-1, address: 127.0.0.1, port: %d}]
`, issuer.Issuer, issuer.Audience, issuer.JWKSPath, filepath.Join(root, "policies", "rego"), keysFile,
		ca.PEMPath, client.CertFile, client.KeyFile, port, echo.Port),
		fmt.Sprintf("  tls: {cert_file: %s, key_file: %s, client_ca_file: %s}\n", server.CertFile, server.KeyFile, ca.PEMPath))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dumpOnFailure(t, x.Proc); x.Close() })
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := x.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}

	t.Run("envoy with its client certificate", func(t *testing.T) {
		envoy, err := harness.StartEnvoy(ctx, dir, x.XDSAddr, harness.EnvoyOptions{NodeID: "envoy-mtls",
			TLS: &harness.EnvoyTLS{TrustedCAFile: ca.PEMPath, CertFile: client.CertFile, KeyFile: client.KeyFile}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dumpOnFailure(t, envoy.Proc); envoy.Close() })
		url := fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", port)
		header := http.Header{"Authorization": {"Bearer " + issuer.Token("alice", "acme", nil, time.Hour)}}
		var status int
		var served string
		err = harness.Poll(wctx, 100*time.Millisecond, func() error {
			status, served, err = upgrade(ctx, url, header)
			if status == 0 {
				return fmt.Errorf("no HTTP answer: %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusSwitchingProtocols || served != "cli-1" {
			t.Fatalf("tunnel: status %d, served by %q; want cli-1 (ext_authz over TLS admitting it)", status, served)
		}
		for _, stat := range []string{"cluster.xds.ssl.handshake", "cluster.climesh/ext_authz.ssl.handshake"} {
			if n, err := envoy.Stat(stat); err != nil || n < 1 {
				t.Errorf("%s = %d, %v: want a TLS handshake", stat, n, err)
			}
		}
	})

	refused := map[string]*harness.EnvoyTLS{
		"envoy without a client certificate": {TrustedCAFile: ca.PEMPath},
		"envoy without TLS":                  nil,
	}
	for name, tlsOpts := range refused {
		t.Run(name, func(t *testing.T) {
			node := "envoy-" + strings.ReplaceAll(name, " ", "-")
			envoy, err := harness.StartEnvoy(ctx, dir, x.XDSAddr, harness.EnvoyOptions{NodeID: node, TLS: tlsOpts, Unready: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dumpOnFailure(t, envoy.Proc); envoy.Close() })
			// Wait for Envoy to have tried: a connection to the xds cluster that
			// ended without a stream.
			var last string
			err = harness.Poll(wctx, 100*time.Millisecond, func() error {
				last, _ = envoy.Admin("/stats?filter=^cluster\\.xds\\.(upstream_cx_(total|destroy.*|connect_fail)|ssl\\.(handshake|connection_error))$|^control_plane\\.connected_state$")
				if n, _ := envoy.Stat("control_plane.connected_state"); n == 1 {
					return nil // refused it was not: said below
				}
				n, err := envoy.Stat("cluster.xds.upstream_cx_destroy")
				if err != nil || n < 1 {
					return fmt.Errorf("no connection to the xds-server ended yet")
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%v\n%s", err, last)
			}
			if n, _ := envoy.Stat("control_plane.connected_state"); n != 0 {
				t.Fatalf("control_plane.connected_state = %d: Envoy has a stream to the xds-server", n)
			}
			_, debug, err := x.Get("/debug/xds")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(debug, node) {
				t.Fatalf("the xds-server saw node %s:\n%s", node, grepLines(debug, node))
			}
			if listeners, _ := envoy.Admin("/listeners"); strings.TrimSpace(listeners) != "" {
				t.Fatalf("Envoy got listeners: %s", listeners)
			}
		})
	}
}
