package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/climesh/climesh/test/harness"
)

// TestJWKSOverVerifiedTLS: Envoy fetches a remote JWKS only from a server whose
// certificate it verifies — against the system bundle by default, or the
// provider's trusted_ca_file — and that names the URI's host. Otherwise the fetch
// fails and every token is refused (401), whatever it says.
func TestJWKSOverVerifiedTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: needs Envoy and the xds-server binary (run without -short)")
	}
	dir := t.TempDir()
	ca, err := harness.NewCA(dir, "jwks-ca")
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := harness.NewIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := os.ReadFile(issuer.JWKSPath)
	if err != nil {
		t.Fatal(err)
	}
	echo, err := harness.StartEcho("cli-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(echo.Close)

	cases := map[string]struct {
		certHost string // what the JWKS server's certificate names
		trustCA  bool   // trusted_ca_file: the CA; else the system bundle
		accepted bool
		failedBy string // the Envoy TLS stat that counts the refusal
	}{
		"certificate nothing trusts": {certHost: "localhost", trustCA: false, failedBy: "ssl.fail_verify_error"},
		"trusted CA, right host":     {certHost: "localhost", trustCA: true, accepted: true},
		"trusted CA, another host":   {certHost: "other.test", trustCA: true, failedBy: "ssl.fail_verify_san"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			sub := t.TempDir()
			leaf, err := ca.Issue(sub, "jwks", tc.certHost)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Write(jwks)
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}
			srv.StartTLS()
			t.Cleanup(srv.Close)
			port, err := harness.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			trust := ""
			if tc.trustCA {
				trust = ", trusted_ca_file: " + ca.PEMPath
			}
			_, jwksPort, _ := net.SplitHostPort(srv.Listener.Addr().String())
			config := fmt.Sprintf(`jwt:
  providers:
    - name: idp
      issuer: %s
      audiences: [%s]
      remote_jwks: {uri: "https://localhost:%s/jwks.json"%s}
listeners:
  - {name: edge, port: %d, routes: [{pool: shared}]}
pools:
  - name: shared
    static: [{id: cli-1, address: 127.0.0.1, port: %d}]
`, issuer.Issuer, issuer.Audience, jwksPort, trust, port, echo.Port)
			ctx := t.Context()
			x, err := harness.StartXDSServer(ctx, sub, config)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dumpOnFailure(t, x.Proc); x.Close() })
			envoy, err := harness.StartEnvoy(ctx, sub, x.XDSAddr, harness.EnvoyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dumpOnFailure(t, envoy.Proc); envoy.Close() })

			url := fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", port)
			header := http.Header{"Authorization": {"Bearer " + issuer.Token("alice", "acme", nil, time.Hour)}}
			var status int
			var served string
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			// Poll until Envoy answers at all (its listener arrives over ADS).
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
			if tc.accepted {
				if status != http.StatusSwitchingProtocols || served != "cli-1" {
					t.Fatalf("a valid token with a trusted JWKS server: status %d, served by %q, want the tunnel to cli-1", status, served)
				}
				return
			}
			if status != http.StatusUnauthorized {
				t.Fatalf("JWKS server with a certificate Envoy must not trust: status %d (served by %q), want 401", status, served)
			}
			n, err := envoy.Stat("cluster.jwks/idp." + tc.failedBy)
			if err != nil {
				t.Fatal(err)
			}
			if n < 1 {
				t.Fatalf("refused, but cluster.jwks/idp.%s = %d: not for the certificate", tc.failedBy, n)
			}
		})
	}
}

// upgrade opens a WebSocket through Envoy: the HTTP status of the upgrade, and on
// success the greeting of the instance that answered.
func upgrade(ctx context.Context, url string, header http.Header) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		if resp != nil {
			return resp.StatusCode, "", err
		}
		return 0, "", err
	}
	defer c.CloseNow()
	_, msg, err := c.Read(ctx)
	if err != nil {
		return http.StatusSwitchingProtocols, "", err
	}
	c.Close(websocket.StatusNormalClosure, "")
	return http.StatusSwitchingProtocols, string(msg), nil
}
