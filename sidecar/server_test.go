package sidecar

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/config/field"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// serverConfig attaches to a CLI that is never dialled (no tunnel, no Consul),
// with the tunnels on a free fixed port and the admin listener on port 0.
func serverConfig(t *testing.T) Config {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := DefaultConfig()
	c.Listen, c.AdminListen, c.CLIAddress, c.CLIToken = addr, "127.0.0.1:0", "127.0.0.1:1", "cli-token"
	return c
}

func get(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServerRunsAndDrains: New binds, Run serves the admin calls and returns
// once POST /drain has drained it.
func TestServerRunsAndDrains(t *testing.T) {
	cfg := serverConfig(t)
	s, err := New(t.Context(), cfg, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(t.Context()) }()
	admin := "http://" + s.AdminAddr().String()
	if code, body := get(t, "GET", admin+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("GET /healthz = %d %q", code, body)
	}
	if _, body := get(t, "GET", admin+"/metrics"); !strings.Contains(body, "climesh_sidecar_tunnels") {
		t.Errorf("GET /metrics lacks climesh_sidecar_tunnels:\n%.300s", body)
	}
	if code, _ := get(t, "POST", admin+"/sweep"); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
		t.Errorf("POST /sweep = %d without a sweeper; want no such call", code)
	}
	if code, body := get(t, "POST", admin+"/drain"); code != 200 || body != "draining\n" {
		t.Errorf("POST /drain = %d %q", code, body)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after POST /drain")
	}
	if c, err := net.DialTimeout("tcp", cfg.Listen, time.Second); err == nil {
		c.Close()
		t.Errorf("--listen %s still accepts after the drain", cfg.Listen)
	}
}

// TestNewRefuses: New validates, and reads the credential files; on a refusal
// nothing stays bound.
func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	short, empty := write("short", "0123456789\n"), write("empty", "\n")
	// As shipped in deploy/kubernetes/base/secrets.yaml.
	placeholder := write("placeholder", "REPLACE-with-another-long-random-secret\n")
	placeholderKeys := write("placeholder-keys", `{"active": "k1", "keys": {"k1": "UkVQTEFDRS13aXRoLTMyLXJhbmRvbS1ieXRlcy0hISE="}}`)
	taken := func(t *testing.T) string { // a port in use until the test ends
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l.Addr().String()
	}
	cases := map[string]struct {
		edit func(*testing.T, *Config)
		want string
	}{
		"invalid config":         {func(_ *testing.T, c *Config) { c.Mode = ModeCollab }, "--mode"},
		"short admin credential": {func(_ *testing.T, c *Config) { c.AdminCredentialFile = short }, "--admin-credential-file " + short + " is too short: 10 characters, want at least 16"},
		"short edge credential":  {func(_ *testing.T, c *Config) { c.EdgeCredentialFile = short }, "--edge-credential-file " + short + " is too short"},
		"placeholder edge credential": {func(_ *testing.T, c *Config) { c.EdgeCredentialFile = placeholder },
			"--edge-credential-file " + placeholder + ` is a placeholder (it contains "REPLACE-")`},
		"placeholder identity keys": {func(_ *testing.T, c *Config) { c.IdentityKeys = placeholderKeys },
			"--identity-keys: identity keys " + placeholderKeys + ": keys.k1: a placeholder"},
		"missing admin credential": {func(_ *testing.T, c *Config) { c.AdminCredentialFile = filepath.Join(dir, "none") }, "--admin-credential-file"},
		"empty edge credential":    {func(_ *testing.T, c *Config) { c.EdgeCredentialFile = empty }, "--edge-credential-file " + empty + " is empty"},
		"missing identity keys":    {func(_ *testing.T, c *Config) { c.IdentityKeys = filepath.Join(dir, "none") }, "--identity-keys"},
		"tunnel port taken":        {func(t *testing.T, c *Config) { c.Listen = taken(t) }, "--listen"},
		// --listen is bound by then: New must let it go.
		"admin port taken": {func(t *testing.T, c *Config) { c.AdminListen = taken(t) }, "--admin-listen"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := serverConfig(t)
			tc.edit(t, &cfg)
			_, err := New(t.Context(), cfg, zap.NewNop(), prometheus.NewRegistry())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v; want an error naming %q", err, tc.want)
			}
			if tc.want == "--listen" {
				return
			}
			l, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				t.Fatalf("--listen %s still bound after New failed: %v", cfg.Listen, err)
			}
			l.Close()
		})
	}
	var fe *field.Error
	c := serverConfig(t)
	c.LockTTL = time.Second
	if _, err := New(t.Context(), c, zap.NewNop(), prometheus.NewRegistry()); !errors.As(err, &fe) {
		t.Errorf("New with an invalid config = %v; want Validate's field.Error", err)
	}
}

// TestAdminCredentialGuardsProfilesAndDrain: with an admin credential, the
// profiles and the drain want it; /metrics and /healthz stay open.
func TestAdminCredentialGuardsProfilesAndDrain(t *testing.T) {
	cfg := serverConfig(t)
	cfg.AdminCredentialFile = filepath.Join(t.TempDir(), "admin")
	if err := os.WriteFile(cfg.AdminCredentialFile, []byte("an-admin-secret-of-length\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(t.Context(), cfg, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	admin := "http://" + s.AdminAddr().String()
	for _, c := range []struct{ method, path string }{{"GET", "/debug/pprof/"}, {"GET", "/debug/pprof/profile?seconds=1"}, {"POST", "/drain"}} {
		if code, _ := get(t, c.method, admin+c.path); code != http.StatusUnauthorized {
			t.Errorf("%s %s without the credential = %d, want 401", c.method, c.path, code)
		}
	}
	if code, _ := get(t, "GET", admin+"/healthz"); code != 200 {
		t.Errorf("GET /healthz = %d, want 200 without a credential", code)
	}
}
