package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const base = `
listeners:
  - name: edge
    port: 10000
    routes:
      - pool: shared
pools:
  - name: shared
    consul_service: copilot
`

func TestLoadDefaults(t *testing.T) {
	c, err := Load([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := c.Pool("shared")
	checks := map[string]struct{ got, want any }{
		"policy":        {p.LB.Policy, RingHash},
		"hash key":      {p.LB.HashKey, HashUser},
		"ring entries":  {p.LB.RingEntriesPerHost, uint64(DefaultRingEntries)},
		"min ring":      {p.LB.MinRingSize, uint64(0)},
		"panic":         {*p.LB.PanicThresholdPercent, 0.0},
		"connect":       {p.ConnectTimeout, DefaultConnectTimeout},
		"path":          {c.Listeners[0].Path, DefaultListenerPath},
		"address":       {c.Listeners[0].Address, DefaultListenerAddress},
		"node group":    {c.Server.DefaultNodeGroup, DefaultNodeGroup},
		"user header":   {c.Identity.HeaderFor(HashUser), DefaultUserHeader},
		"coalesce":      {c.Server.Coalesce.MaxDelay, DefaultCoalesceMaxDelay},
		"keepalive":     {c.Server.Keepalive.Timeout, DefaultKeepaliveTimeout},
		"consul":        {c.Consul.Address, DefaultConsulAddress},
		"outlier unset": {p.OutlierDetection.On(), false},
	}
	for name, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", name, c.got, c.want)
		}
	}
}

func TestLoadRemoteJWKSDefaults(t *testing.T) {
	c, err := Load([]byte(base + `jwt:
  providers:
    - {name: a, issuer: i, remote_jwks: {uri: "https://idp.example/jwks"}}
    - {name: b, issuer: i, remote_jwks: {uri: "https://idp.example/jwks", trusted_ca_file: /etc/idp-ca.pem}}
    - {name: c, issuer: i, remote_jwks: {uri: "http://localhost:8080/jwks"}}
`))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{DefaultTrustedCAFile, "/etc/idp-ca.pem", ""} {
		if got := c.JWT.Providers[i].RemoteJWKS.TrustedCAFile; got != want {
			t.Errorf("providers[%d].remote_jwks.trusted_ca_file = %q, want %q", i, got, want)
		}
	}
}

func TestLoadEmbeddedDefault(t *testing.T) {
	c, err := Load(DefaultYAML())
	if err != nil {
		t.Fatalf("embedded default does not load: %v", err)
	}
	if p, ok := c.Pool("demo"); !ok || len(p.Static) != 3 {
		t.Fatalf("embedded default has no static demo pool of three: %+v", c.Pools)
	}
	// The production shape: verified callers, the shipped policy, identity
	// assertions and the edge credential; no header a client could set is trusted.
	checks := map[string]struct{ got, want any }{
		"trust_client_headers": {c.Identity.TrustClientHeaders, false},
		"jwt providers":        {len(c.JWT.Providers), 1},
		"policy.source":        {c.Policy.Source, "builtin"},
		"identity keys":        {c.Policy.IdentityKeysFile != "", true},
		"edge credential":      {c.Identity.EdgeCredentialFile != "", true},
	}
	for name, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("embedded default %s: got %v, want %v", name, ch.got, ch.want)
		}
	}
}

func TestLoadOutlierDefaults(t *testing.T) {
	c, err := Load([]byte(base + "    outlier_detection: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := c.Pools[0].OutlierDetection
	if !o.On() || o.Consecutive5xx != DefaultConsecutive5xx || o.Interval != 10*time.Second {
		t.Fatalf("outlier defaults not applied: %+v", o)
	}
}

func TestLoadErrors(t *testing.T) {
	cases := map[string]struct {
		yaml string
		kind error
		want string // substring of the error naming field and value
	}{
		"malformed yaml":       {"listeners: [", ErrInvalid, "yaml"},
		"empty":                {"", ErrInvalid, "empty document"},
		"unknown top field":    {base + "bogus: 1\n", ErrInvalid, "field bogus not found"},
		"unknown nested field": {base + "    lb: {polcy: maglev}\n", ErrInvalid, "field polcy not found"},
		"wrong type":           {base + "    connect_timeout: soon\n", ErrInvalid, "soon"},
		"unknown policy":       {base + "    lb: {policy: random}\n", ErrUnknownValue, `pools[0].lb.policy: unknown value "random"`},
		"unknown hash key":     {base + "    lb: {hash_key: usr}\n", ErrUnknownValue, `pools[0].lb.hash_key: unknown value "usr" (want user|session|tenant)`},
		"ring too large":       {base + "    lb: {max_ring_size: 9000000}\n", ErrOutOfRange, `pools[0].lb.max_ring_size: out of range "9000000"`},
		"ring min over max":    {base + "    lb: {min_ring_size: 4096, max_ring_size: 1024}\n", ErrOutOfRange, "pools[0].lb.min_ring_size"},
		"maglev not prime":     {base + "    lb: {policy: maglev, table_size: 65536}\n", ErrOutOfRange, `pools[0].lb.table_size: out of range "65536"`},
		"entries and min ring": {base + "    lb: {ring_entries_per_host: 100, min_ring_size: 1024}\n", ErrConflict, "pools[0].lb.ring_entries_per_host"},
		"ring size on maglev":  {base + "    lb: {policy: maglev, min_ring_size: 10}\n", ErrConflict, "pools[0].lb.min_ring_size"},
		"key on round robin":   {base + "    lb: {policy: round_robin, hash_key: user}\n", ErrConflict, "pools[0].lb.hash_key"},
		"balance too small":    {base + "    lb: {hash_balance_factor: 50}\n", ErrOutOfRange, `hash_balance_factor: out of range "50"`},
		"panic over 100":       {base + "    lb: {panic_threshold_percent: 150}\n", ErrOutOfRange, "panic_threshold_percent"},
		"ejection over 100":    {base + "    outlier_detection: {max_ejection_percent: 101}\n", ErrOutOfRange, "outlier_detection.max_ejection_percent"},
		"no source": {strings.Replace(base, "    consul_service: copilot\n", "", 1), ErrRequired,
			`pools[0]: required "shared" (a pool needs a source: consul_service or static)`},
		"both sources":   {base + "    static: [{id: a, address: 127.0.0.1, port: 1}]\n", ErrConflict, "pools[0].static"},
		"duplicate pool": {base + "  - name: shared\n    consul_service: other\n", ErrDuplicate, `pools[1].name: duplicate "shared"`},
		"duplicate listener": {strings.Replace(base, "pools:", "  - name: edge\n    port: 10001\n    routes: [{pool: shared}]\npools:", 1),
			ErrDuplicate, `listeners[1].name: duplicate "edge"`},
		"same port": {strings.Replace(base, "pools:", "  - name: edge2\n    port: 10000\n    routes: [{pool: shared}]\npools:", 1),
			ErrDuplicate, "listeners[1].port"},
		"port out of range": {strings.Replace(base, "10000", "70000", 1), ErrOutOfRange, `listeners[0].port: out of range "70000"`},
		"unknown pool ref":  {strings.Replace(base, "- pool: shared", "- pool: nope", 1), ErrUnknownRef, `listeners[0].routes[0].pool: unknown reference "nope"`},
		"catch-all not last": {strings.Replace(base, "      - pool: shared\n", "      - pool: shared\n      - pool: shared\n        when: {header: x-a}\n", 1),
			ErrRequired, "listeners[0].routes[0].when"},
		"bad header":               {base + "identity: {user_header: X-User}\n", ErrMalformed, `identity.user_header: malformed "X-User"`},
		"same header twice":        {base + "identity: {user_header: x-a, tenant_header: x-a}\n", ErrDuplicate, "x-a"},
		"pin header is the user's": {base + "identity: {pin_header: x-climesh-user}\n", ErrDuplicate, `identity.user_header: duplicate "x-climesh-user" (also used by identity.pin_header)`},
		"bad pin header":           {base + "identity: {pin_header: Pin}\n", ErrMalformed, `identity.pin_header: malformed "Pin"`},
		"static bad address": {strings.Replace(base, "consul_service: copilot", "static: [{id: a, address: nowhere, port: 1}]", 1),
			ErrMalformed, `pools[0].static[0].address: malformed "nowhere"`},
		"static bad health": {strings.Replace(base, "consul_service: copilot", "static: [{id: a, address: 127.0.0.1, port: 1, health: sick}]", 1),
			ErrUnknownValue, `pools[0].static[0].health: unknown value "sick"`},
		"static duplicate id": {strings.Replace(base, "consul_service: copilot", "static: [{id: a, address: 127.0.0.1, port: 1}, {id: a, address: 127.0.0.1, port: 2}]", 1),
			ErrDuplicate, `pools[0].static[1].id: duplicate "a"`},
		"coalesce inverted":    {base + "server: {coalesce: {quiet: 1s, max_delay: 10ms}}\n", ErrOutOfRange, "server.coalesce.max_delay"},
		"keepalive too often":  {base + "server: {keepalive: {time: 100ms}}\n", ErrOutOfRange, "server.keepalive.time"},
		"push window tiny":     {base + "server: {push_window_bytes: 1000}\n", ErrOutOfRange, "server.push_window_bytes"},
		"keepalive no timeout": {base + "server: {keepalive: {timeout: -1s}}\n", ErrOutOfRange, "server.keepalive.timeout"},
		"bad xds address":      {base + "server: {xds_address: localhost}\n", ErrMalformed, `server.xds_address: malformed "localhost"`},
		"two documents":        {base + "---\n" + base, ErrInvalid, "more than one YAML document"},
		"tls without key":      {base + "server: {tls: {cert_file: /c}}\n", ErrRequired, "server.tls.key_file: required"},
		"tls without ext_authz tls": {base + "identity: {trust_client_headers: true}\nserver: {tls: {cert_file: /c, key_file: /k}}\npolicy: {source: /p, identity_keys_file: /k}\n",
			ErrRequired, "policy.ext_authz_tls: required"},
		"bundle service without key": {base + "identity: {trust_client_headers: true}\npolicy: {source: 'https://b.example.com/climesh.tar.gz', identity_keys_file: /k}\n",
			ErrRequired, "policy.bundle_public_key_file: required"},
		"bundle service over http": {base + "identity: {trust_client_headers: true}\npolicy: {source: 'http://b.example.com/climesh.tar.gz', bundle_public_key_file: /pub, identity_keys_file: /k}\n",
			ErrMalformed, "loopback only"},
		"bundle service not a bundle": {base + "identity: {trust_client_headers: true}\npolicy: {source: 'https://b.example.com/latest', bundle_public_key_file: /pub, identity_keys_file: /k}\n",
			ErrMalformed, "policy.source"},
		"bundle key without service": {base + "identity: {trust_client_headers: true}\npolicy: {source: /p, bundle_public_key_file: /pub, identity_keys_file: /k}\n",
			ErrConflict, "policy.bundle_public_key_file"},
		"decision logs two sinks": {base + "identity: {trust_client_headers: true}\npolicy: {source: /p, identity_keys_file: /k, decision_logs: {console: true, file: /l}}\n",
			ErrConflict, "policy.decision_logs"},
		"decision logs plain http": {base + "identity: {trust_client_headers: true}\npolicy: {source: /p, identity_keys_file: /k, decision_logs: {url: 'http://logs.example.com/logs'}}\n",
			ErrMalformed, "policy.decision_logs.url"},
		"bundle algorithm unknown": {base + "identity: {trust_client_headers: true}\npolicy: {source: 'https://b.example.com/climesh.tar.gz', bundle_public_key_file: /pub, bundle_signing_algorithm: HS256, identity_keys_file: /k}\n",
			ErrUnknownValue, "policy.bundle_signing_algorithm"},
		"ext_authz tls without server tls": {base + "identity: {trust_client_headers: true}\npolicy: {source: /p, identity_keys_file: /k, ext_authz_tls: {trusted_ca_file: /ca}}\n",
			ErrConflict, "policy.ext_authz_tls: conflicting fields (needs server.tls"},
		"ext_authz tls without ca": {base + "identity: {trust_client_headers: true}\nserver: {tls: {cert_file: /c, key_file: /k}}\npolicy: {source: /p, identity_keys_file: /k, ext_authz_tls: {cert_file: /ec, key_file: /ek}}\n",
			ErrRequired, "policy.ext_authz_tls.trusted_ca_file: required"},
		"mtls without envoy's certificate": {base + "identity: {trust_client_headers: true}\nserver: {tls: {cert_file: /c, key_file: /k, client_ca_file: /cca}}\npolicy: {source: /p, identity_keys_file: /k, ext_authz_tls: {trusted_ca_file: /ca}}\n",
			ErrRequired, "policy.ext_authz_tls.cert_file: required"},
		"jwks in clear": {base + "jwt: {providers: [{name: p, issuer: i, remote_jwks: {uri: \"http://idp.example/jwks\"}}]}\n",
			ErrMalformed, `jwt.providers[0].remote_jwks.uri: malformed "http://idp.example/jwks" (want https`},
		"ca for http jwks": {base + "jwt: {providers: [{name: p, issuer: i, remote_jwks: {uri: \"http://127.0.0.1:8080/jwks\", trusted_ca_file: /ca.pem}}]}\n",
			ErrConflict, `jwt.providers[0].remote_jwks.trusted_ca_file`},
		"data without policy": {base + "policy: {data_file: data.json}\n", ErrConflict, `policy.data_file: conflicting fields "data.json"`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Load([]byte(tc.yaml))
			if err == nil {
				t.Fatal("Load accepted bad input")
			}
			if !errors.Is(err, tc.kind) || !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q is not %v", err, tc.kind)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestExampleConfigLoads(t *testing.T) {
	data, err := os.ReadFile("../examples/climesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Load(data); err != nil {
		t.Fatalf("examples/climesh.yaml: %v", err)
	}
}

// TestResolveFilesRefuses: the files the config names are read at start and on
// every reload; a placeholder, a short secret or an empty key set is refused
// with the field and the file.
func TestResolveFilesRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodJWKS := write("jwks.json", `{"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]}`)
	cases := map[string]struct {
		yaml string
		kind error
		want string
	}{
		"placeholder edge credential": {"identity: {edge_credential_file: " + write("cred-placeholder", "REPLACE-with-another-long-random-secret\n") + "}\n",
			ErrMalformed, `identity.edge_credential_file: malformed "` + dir + `/cred-placeholder" (is a placeholder (it contains "REPLACE-")`},
		"short edge credential": {"identity: {edge_credential_file: " + write("cred-short", "0123456789\n") + "}\n",
			ErrOutOfRange, "identity.edge_credential_file: out of range \"" + dir + "/cred-short\" (is too short: 10 characters, want at least 16)"},
		"empty edge credential": {"identity: {edge_credential_file: " + write("cred-empty", "\n") + "}\n",
			ErrOutOfRange, "(is empty)"},
		"shipped jwks": {"jwt: {providers: [{name: p, issuer: i, local_jwks_file: " + write("jwks-empty.json", `{"keys": []}`) + "}]}\n",
			ErrMalformed, `jwt.providers[0].local_jwks_file: malformed "` + dir + `/jwks-empty.json" (holds no keys`},
		"placeholder jwks": {"jwt: {providers: [{name: p, issuer: i, local_jwks_file: " + write("jwks-replace.json", `{"keys": [{"n": "REPLACE-me"}]}`) + "}]}\n",
			ErrMalformed, "is a placeholder"},
		"jwks not json": {"jwt: {providers: [{name: p, issuer: i, local_jwks_file: " + write("jwks.pem", "-----BEGIN PUBLIC KEY-----") + "}]}\n",
			ErrMalformed, "is not a JWKS"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := Load([]byte(base + tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			err = c.ResolveFiles()
			if !errors.Is(err, tc.kind) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ResolveFiles = %v; want %v containing %q", err, tc.kind, tc.want)
			}
		})
	}
	c, err := Load([]byte(base + "identity: {edge_credential_file: " + write("cred", "  a-real-secret-8c1f0e9d7b\n") + "}\njwt: {providers: [{name: p, issuer: i, local_jwks_file: " + goodJWKS + "}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ResolveFiles(); err != nil {
		t.Fatal(err)
	}
	if c.Identity.EdgeCredential != "a-real-secret-8c1f0e9d7b" || c.JWT.Providers[0].LocalJWKS == "" {
		t.Fatalf("resolved %q, %q", c.Identity.EdgeCredential, c.JWT.Providers[0].LocalJWKS)
	}
	// While it rotates the file lists two: Envoy sends the first, both are checked.
	c.Identity.EdgeCredentialFile = write("cred-rotating", "the-first-one-0123456789\nthe-second-one-0123456789\n")
	if err := c.ResolveFiles(); err != nil || c.Identity.EdgeCredential != "the-first-one-0123456789" {
		t.Fatalf("a rotating credential file: %q, %v; want its first line", c.Identity.EdgeCredential, err)
	}
	c.Identity.EdgeCredentialFile = write("cred-rotating-bad", "the-first-one-0123456789\nREPLACE-me-0123456789\n")
	if err := c.ResolveFiles(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a placeholder on the second line: %v, want it refused", err)
	}
}
