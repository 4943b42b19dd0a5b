package sidecar

import (
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/config/field"
	"github.com/climesh/climesh/config/field/fieldtest"
)

// todaysFlags are climesh-sidecar's flags as cmd/climesh-sidecar/main.go defined
// them before Config (flag.VisitAll of that main.go): name, default, help.
var todaysFlags = [][3]string{
	{"admin-credential-file", "", "`file` with a secret the admin calls must carry (Authorization: Bearer ...); GET /metrics and /healthz stay open"},
	{"admin-listen", "127.0.0.1:7101", "`address` for /metrics, /healthz and the admin calls POST /drain and POST /sweep; a non-loopback address needs --admin-credential-file"},
	{"advertise", "", "`address` registered in Consul (default: the --listen host)"},
	{"capacity", "50", "most sessions the CLI holds in memory; past it the least recently used idle one is released with session.destroy and resumed on demand (0: no cap; published in Consul meta)"},
	{"check-ttl", "6s", "Consul TTL check: critical if no passing ping for this long"},
	{"cli-address", "", "attach to a running CLI at `host:port` (token from $COPILOT_CONNECTION_TOKEN)"},
	{"cli-command", "", "run the CLI as a child: the copilot `executable`"},
	{"cli-home", "", "COPILOT_HOME for --cli-command (default: a new temp dir)"},
	{"consul", "", "Consul HTTP `address`; empty: do not register"},
	{"consul-node", "", "catalog registration: the instance's catalog `node` (default: climesh-<instance id>)"},
	{"consul-registration", "agent", "`how` to register: agent (the node's client agent, a TTL check of --check-ttl) or catalog (the servers' catalog API, no client agent; liveness is a key held by a session of --liveness-ttl)"},
	{"drain-timeout", "2m0s", "on SIGTERM or POST /drain: longest wait for running turns before tunnels are closed"},
	{"edge-credential-file", "", "`file` with the secret Envoy adds to tunnels (identity.edge_credential_file); tunnels without it are refused"},
	{"identity-keys", "", "`file` with the keys that verify the edge's identity assertion (policy.identity_keys_file)"},
	{"instance-id", "", "Consul service `id` (default: pool-port)"},
	{"keepalive", "30s", "ping each client this often so idle timers do not cut a long turn; a client that does not answer within 3x this (at least 10s) is dropped (0: off)"},
	{"liveness-ttl", "10s", "catalog registration: TTL of the Consul session that holds the instance's liveness key; a dead sidecar leaves routing within 2x this (Consul refuses a TTL under its session_ttl_min, 10s by default)"},
	{"listen", "127.0.0.1:7001", "`address` for tunnels (/v1/rpc) and nothing else"},
	{"lock-delay", "1s", "collab: Consul lock-delay after a holder's session is invalidated"},
	{"lock-ttl", "10s", "collab: Consul session TTL of a turn lock (a crashed holder frees it within this)"},
	{"lock-wait-max", "5m0s", "collab: longest wait a caller may ask for (x-climesh-lock-wait)"},
	{"log-level", "info", "log `level`"},
	{"max-frame-bytes", "8388608", "largest JSON-RPC message accepted"},
	{"max-pending", "1024", "most requests one tunnel may have awaiting the CLI's answer"},
	{"max-tunnel-sessions", "4096", "most sessions one tunnel's decisions remember (records, visibility); past it they are decided again"},
	{"max-tunnels-per-user", "32", "most tunnels one (tenant, user) may hold open on this sidecar (0: no limit)"},
	{"max-users", "20", "isolated: most CLIs at once; past it the least recently used idle one is stopped, or the tunnel refused"},
	{"mode", "shared", "`mode`: shared (pattern 2), collab (pattern 3: shared sessions, one turn at a time) or isolated (pattern 1: one CLI per user)"},
	{"path", "/v1/rpc", "tunnel `path`"},
	{"ping-failures", "2", "pings in a row that must fail before a passing instance is reported failing (readiness and the Consul check), so that one slow answer under load does not take it out of routing; a CLI that exits fails at once"},
	{"ping-interval", "2s", "how often the CLI is pinged for the Consul check"},
	{"policy", "", "Rego `dir` or bundle for per-message decisions (deny by default), the word builtin (the policies/rego this binary was built with), or a bundle service's URL (polled every --policy-watch; needs --policy-bundle-key); needs --identity-keys"},
	{"policy-bundle-key", "", "PEM public key `file` that verifies a bundle service's bundles (an unsigned or tampered bundle is refused; the last good one keeps deciding)"},
	{"decision-log", "", "`file` (- for stdout) that gets every per-message decision in OPA's decision log format, masked by --policy's system.log.mask; a refusal then carries its decision_id"},
	{"decision-log-url", "", "or a decision log service `URL` (POSTs of gzipped JSON arrays, as OPA's logs plugin sends; https, http on loopback only)"},
	{"policy-bundle-alg", "RS256", "signing `algorithm` of --policy-bundle-key (RS256, as opa build signs, or RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512)"},
	{"policy-data", "", "JSON or YAML data `file` merged into --policy's data (it may add values, not replace them), e.g. your pools' provider_base_urls beside --policy builtin; watched like --policy"},
	{"policy-watch", "1s", "how often --policy is checked for changes"},
	{"pool", "copilot", "Consul service `name` (the climesh pool)"},
	{"session-ttl", "30m0s", "sessions idle longer than this are deleted (disk and registry) by the pool's sweeper"},
	{"sweep-interval", "1m0s", "how often the pool's sweeper runs (one sidecar at a time, elected in Consul; 0: only POST /sweep)"},
	{"user-env", "", "isolated: comma-separated `names` of the sidecar's environment variables each CLI also gets (a proxy, a CA bundle); nothing else of the sidecar's environment is passed"},
	{"user-idle", "10m0s", "isolated: stop a user's CLI after this long without a tunnel"},
	{"user-secrets", "", "isolated: `dir` of <tenant>/<user>.env files (KEY=VALUE: GitHub token, provider key); never logged"},
	{"user-uids", "", "isolated: `range` FIRST-LAST of UIDs, one per (tenant, user); each CLI runs under its own UID and GID with a home only it can read (the sidecar must run as root); empty: users are separated by directory permissions only"},
	{"users-root", "", "isolated: `dir` holding each user's COPILOT_HOME (<dir>/<tenant>/<user>/home, mode 0700)"},
	{"turn-timeout", "30m0s", "a turn (session.send to its session.idle or session.error) running longer is aborted: the CLI is sent session.abort, the client a session.error saying so, and a collab session's lock is released (0: never)"},
	{"consul-timeout", "2s", "longest wait for any Consul call (session records, turn locks, registration, checks); past it a client's call is answered -32010 naming what is unavailable"},
	{"rebalance", "false", "the pool's sessions live on storage every instance shares: when the pool's ring changes (read from Consul, as the xds-server reads it), ask each tunnel whose key now has another home to move there between turns (climesh-connect reconnects and resumes its sessions; a running turn is never cut). Leave off for sticky-only pools, whose sessions live on their instance"},
	{"rebalance-rate", "5", "--rebalance: most moves this instance starts per `second`, so that a scale-out is not a reconnect storm"},
	{"rebalance-settle", "5s", "--rebalance: how long the pool's ring must stay the same before moves start, so that a flapping health check moves nobody back and forth"},
	{"lb-policy", "ring_hash", "--rebalance: the pool's lb.policy, ring_hash or maglev: how Envoy places keys"},
	{"maglev-table-size", "65537", "--rebalance: the pool's lb.table_size (maglev)"},
	{"hash-key", "user", "--rebalance: the pool's lb.hash_key (user, tenant or session): what the ring places"},
	{"ring-entries-per-host", "256", "--rebalance: the pool's lb.ring_entries_per_host (0: --ring-min-size decides); must match the xds-server's config"},
	{"ring-min-size", "0", "--rebalance: the pool's lb.min_ring_size, when --ring-entries-per-host is 0"},
	{"ring-max-size", "8388608", "--rebalance: the pool's lb.max_ring_size"},
	{"stale-records", "5m0s", "while Consul does not answer, a session record this sidecar read within this long still decides (existing users go on); a session never read here is refused until Consul answers (0: refuse all)"},
}

// TestFlagSetIsTodays: the same flags, defaults and help as before Config.
func TestFlagSetIsTodays(t *testing.T) {
	c := DefaultConfig()
	var got [][3]string
	c.FlagSet().VisitAll(func(f *flag.Flag) { got = append(got, [3]string{f.Name, f.DefValue, f.Usage}) })
	for _, f := range todaysFlags {
		if !slices.Contains(got, f) {
			t.Errorf("flag %q (default %q) changed or is missing", f[0], f[1])
		}
	}
	for _, f := range got {
		if !slices.Contains(todaysFlags, f) {
			t.Errorf("flag %q (default %q, help %q) is not today's", f[0], f[1], f[2])
		}
	}
}

// TestLoadEveryFlag sets every flag away from its default: each lands in its field.
func TestLoadEveryFlag(t *testing.T) {
	args := []string{
		"--listen", "0.0.0.0:7002", "--admin-listen", "0.0.0.0:7102", "--admin-credential-file", "/a",
		"--max-pending", "7", "--max-tunnel-sessions", "8", "--max-tunnels-per-user", "9", "--path", "/p",
		"--pool", "collab", "--instance-id", "i-1", "--consul", "c:8500", "--advertise", "10.0.0.1",
		"--cli-address", "127.0.0.1:4321", "--cli-command", "copilot", "--cli-home", "/h", "--capacity", "3",
		"--ping-interval", "1s", "--ping-failures", "3", "--check-ttl", "4s", "--keepalive", "5s", "--drain-timeout", "6s",
		"--session-ttl", "7m", "--sweep-interval", "8m", "--edge-credential-file", "/e", "--identity-keys", "/k",
		"--policy", "/pol", "--policy-data", "/pd", "--policy-watch", "9s", "--log-level", "debug", "--mode", "collab",
		"--users-root", "/u", "--user-secrets", "/s", "--user-uids", "1000-1999", "--user-env", "A,B",
		"--max-users", "11", "--user-idle", "12s", "--lock-ttl", "13s", "--lock-delay", "14s",
		"--lock-wait-max", "15s", "--max-frame-bytes", "16",
		"--consul-registration", "catalog", "--consul-node", "n-1", "--liveness-ttl", "17s",
		"--consul-timeout", "18s", "--stale-records", "19s", "--turn-timeout", "20s",
		"--policy-bundle-key", "/bk", "--policy-bundle-alg", "ES256", "--decision-log", "/dl", "--decision-log-url", "https://l/logs",
		"--rebalance", "--rebalance-rate", "2.5", "--rebalance-settle", "24s", "--hash-key", "tenant", "--lb-policy", "maglev", "--maglev-table-size", "25", "--ring-entries-per-host", "21", "--ring-min-size", "22", "--ring-max-size", "23",
	}
	want := Config{
		Listen: "0.0.0.0:7002", AdminListen: "0.0.0.0:7102", AdminCredentialFile: "/a", Path: "/p",
		Pool: "collab", InstanceID: "i-1", Consul: "c:8500", Advertise: "10.0.0.1",
		ConsulRegistration: RegistrationCatalog, ConsulNode: "n-1", LivenessTTL: 17 * time.Second,
		CLIAddress: "127.0.0.1:4321", CLIToken: "tok", CLICommand: "copilot", CLIHome: "/h",
		Mode: ModeCollab, Capacity: 3, MaxPending: 7, MaxTunnelSessions: 8, MaxTunnelsPerUser: 9, MaxFrameBytes: 16,
		PingInterval: time.Second, PingFailures: 3, CheckTTL: 4 * time.Second, Keepalive: 5 * time.Second, DrainTimeout: 6 * time.Second,
		SessionTTL: 7 * time.Minute, SweepInterval: 8 * time.Minute,
		EdgeCredentialFile: "/e", IdentityKeys: "/k", Policy: "/pol", PolicyData: "/pd", PolicyWatch: 9 * time.Second,
		UsersRoot: "/u", UserSecrets: "/s", UserUIDs: "1000-1999", UserEnv: "A,B", MaxUsers: 11, UserIdle: 12 * time.Second,
		LockTTL: 13 * time.Second, LockDelay: 14 * time.Second, LockWaitMax: 15 * time.Second, LogLevel: "debug",
		ConsulTimeout: 18 * time.Second, StaleRecords: 19 * time.Second, TurnTimeout: 20 * time.Second,
		PolicyBundleKey: "/bk", PolicyBundleAlg: "ES256", DecisionLog: "/dl", DecisionLogURL: "https://l/logs",
		Rebalance: true, RebalanceRate: 2.5, RebalanceSettle: 24 * time.Second, HashKey: "tenant", LBPolicy: "maglev", MaglevTableSize: 25, RingEntriesPerHost: 21, RingMinSize: 22, RingMaxSize: 23,
	}
	var fs []string
	c := DefaultConfig()
	c.FlagSet().VisitAll(func(f *flag.Flag) { fs = append(fs, "--"+f.Name) })
	for _, name := range fs {
		if !slices.Contains(args, name) {
			t.Errorf("%s: not set by this test", name)
		}
	}
	got, err := Load(args, fieldtest.Env(map[string]string{TokenEnv: "tok"}))
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Load =\n %+v\nwant\n %+v", got, want)
	}
}

func TestLoadEnvironment(t *testing.T) {
	cases := map[string]struct {
		args []string
		env  map[string]string
		want func(*Config)
	}{
		"defaults":                    {},
		"token from the environment":  {env: map[string]string{TokenEnv: "s3cret"}, want: func(c *Config) { c.CLIToken = "s3cret" }},
		"empty token counts as unset": {env: map[string]string{TokenEnv: ""}},
		"no other variable is read": {
			env: map[string]string{"CLIMESH_LISTEN": "0.0.0.0:1", "LISTEN": "x", "COPILOT_HOME": "/h", "CONSUL_HTTP_ADDR": "c:8500"}},
		"flags and the token together": {
			args: []string{"--cli-address=127.0.0.1:4321"}, env: map[string]string{TokenEnv: "s3cret"},
			want: func(c *Config) { c.CLIAddress, c.CLIToken = "127.0.0.1:4321", "s3cret" }},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var asked []string
			env := func(k string) (string, bool) { asked = append(asked, k); return fieldtest.Env(tc.env)(k) }
			got, err := Load(tc.args, env)
			if err != nil {
				t.Fatal(err)
			}
			want := DefaultConfig()
			if tc.want != nil {
				tc.want(&want)
			}
			if got != want {
				t.Errorf("Load =\n %+v\nwant\n %+v", got, want)
			}
			if !slices.Equal(asked, []string{TokenEnv}) {
				t.Errorf("Load read %q; want only %s", asked, TokenEnv)
			}
		})
	}
}

func TestLoadRefusesArgs(t *testing.T) {
	fieldtest.LoadRefuses(t, func(args []string) error { _, err := Load(args, fieldtest.Env(nil)); return err }, map[string]fieldtest.Refusal{
		"unknown flag":           {Args: []string{"--lisen", ":1"}, Want: "-lisen"},
		"bad duration flag":      {Args: []string{"--lock-ttl", "10"}, Want: "-lock-ttl"},
		"bad integer flag":       {Args: []string{"--capacity", "fifty"}, Want: "-capacity"},
		"flag without its value": {Args: []string{"--mode"}, Want: "-mode"},
		"positional argument":    {Args: []string{"copilot"}, Want: `"copilot"`},
		"flag after positional":  {Args: []string{"--mode", "shared", "extra", "--listen", ":1"}, Want: `"extra"`},
		"the token as a flag":    {Args: []string{"--token", "x"}, Want: "-token"},
	})
}

// TestValidateCollabNeedsConsulAndPolicy: the case the issue names; it used to
// start and serialise nothing.
func TestValidateCollabNeedsConsulAndPolicy(t *testing.T) {
	c := DefaultConfig()
	c.CLICommand, c.Mode = "copilot", ModeCollab
	err := c.Validate()
	var fe *field.Error
	if !errors.As(err, &fe) || fe.Name != "--mode" || !errors.Is(err, field.ErrRequired) {
		t.Fatalf("Validate = %v; want a required-setting error naming --mode", err)
	}
	for _, name := range []string{"--consul", "--policy"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("Validate = %q; it does not name %s", err, name)
		}
	}
}

// TestValidateJoinsEveryError: one run names every flag at fault.
func TestValidateJoinsEveryError(t *testing.T) {
	c := DefaultConfig()
	c.Mode, c.LockTTL, c.Capacity, c.Listen, c.LogLevel, c.CLIToken = "pair", time.Second, -1, "127.0.0.1:0", "loud", "s3cret"
	err := c.Validate()
	for _, name := range []string{"--cli-address/--cli-command", "--mode", "--lock-ttl", "--capacity", "--listen", "--log-level"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Validate = %v; nothing names %s", err, name)
		}
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Validate shows the token: %v", err)
	}
}

// TestDerived: the instance id and the advertised address default from --listen.
func TestDerived(t *testing.T) {
	c := DefaultConfig()
	c.Listen = "10.1.2.3:7005"
	if got := c.Instance(); got != "copilot-7005" {
		t.Errorf("Instance = %q, want copilot-7005", got)
	}
	if got := c.AdvertiseAddress(); got != "10.1.2.3" {
		t.Errorf("AdvertiseAddress = %q, want 10.1.2.3", got)
	}
	c.InstanceID, c.Advertise = "pod-0", "pod-0.svc"
	if c.Instance() != "pod-0" || c.AdvertiseAddress() != "pod-0.svc" {
		t.Errorf("Instance, AdvertiseAddress = %q, %q; want the flags", c.Instance(), c.AdvertiseAddress())
	}
}

// TestWhatTheRepositoryPassesValidates: every command line the e2e harness
// (test/harness/mesh.go, pool.go, sidecar.go), tools/demo, bench/ and the
// Kubernetes manifest give a sidecar still loads and validates.
func TestWhatTheRepositoryPassesValidates(t *testing.T) {
	// harness.StartSidecar's own flags, then SidecarOptions.
	start := []string{"--listen", "127.0.0.1:7301", "--admin-listen", "127.0.0.1:7302", "--pool", "copilot", "--instance-id", "copilot-0",
		"--ping-interval", "500ms", "--check-ttl", "3s"}
	consul := []string{"--consul", "127.0.0.1:8500"}
	child := []string{"--cli-command", "/bin/copilot", "--cli-home", "/tmp/home"}
	attach := []string{"--cli-address", "127.0.0.1:4321"}
	mesh := []string{"--edge-credential-file", "/cred", "--identity-keys", "/keys", "--policy", "/policy", "--policy-watch", "100ms", "--keepalive", "5s"}
	join := func(parts ...[]string) []string { return slices.Concat(parts...) }
	cases := map[string][]string{
		"mesh, child CLI":    join(start, consul, child, mesh),
		"mesh, attached CLI": join(start, consul, attach, mesh),
		"collab":             join(start, consul, child, mesh, []string{"--mode", "collab", "--lock-ttl", "10s", "--lock-delay", "1s", "--log-level", "debug"}),
		"bounded":            join(start, consul, child, mesh, []string{"--capacity", "5"}),
		"hostile":            join(start, consul, attach, mesh, []string{"--log-level", "debug"}),
		"isolated": join(start, consul, []string{"--cli-command", "/bin/copilot"}, mesh, []string{"--mode", "isolated", "--users-root", "/users",
			"--user-idle", "2s", "--max-users", "5", "--user-uids", "200000-200999", "--user-secrets", "/secrets"}),
		"pool with extras": join(start, consul, child, mesh, []string{"--drain-timeout", "30s", "--log-level", "debug"}),
		"bench/capacity":   join(start, child, []string{"--capacity", "0"}),
		"tools/demo":       join(start, child),
		"deploy/kubernetes": {"--listen=0.0.0.0:7001", "--admin-listen=0.0.0.0:7101", "--admin-credential-file=/etc/climesh/admin/credential",
			"--advertise=10.0.0.7", "--instance-id=copilot-0", "--pool=copilot", "--consul=10.0.0.1:8500", "--cli-address=127.0.0.1:4321",
			"--mode=shared", "--capacity=50", "--policy=/etc/climesh/policy", "--identity-keys=/etc/climesh/identity/identity-keys.json",
			"--edge-credential-file=/etc/climesh/edge/credential", "--drain-timeout=2m", "--session-ttl=30m"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := Load(args, fieldtest.Env(map[string]string{TokenEnv: "cli-token"}))
			if err == nil {
				err = c.Validate()
			}
			if err != nil {
				t.Fatalf("%q: %v", args, err)
			}
		})
	}
}

// TestValidate: each rule with a good and a bad case. The base runs a child CLI in
// shared mode with no Consul and no policy; cases add what they need.
func TestValidate(t *testing.T) {
	attach := func(c *Config) { c.CLICommand, c.CLIAddress, c.CLIToken = "", "127.0.0.1:4321", "s3cret" }
	mesh := func(c *Config) { c.Consul, c.Policy, c.IdentityKeys = "127.0.0.1:8500", "/policy", "/keys" }
	isolated := func(c *Config) { c.Mode, c.UsersRoot, c.IdentityKeys = ModeIsolated, "/users", "/keys" }
	and := func(edits ...func(*Config)) func(*Config) {
		return func(c *Config) {
			for _, e := range edits {
				e(c)
			}
		}
	}
	cases := map[string]fieldtest.Case[Config]{
		"base": {},

		// The CLI: exactly one of --cli-address and --cli-command; an address needs its token.
		"attached CLI":                    {Edit: attach},
		"no CLI":                          {Edit: func(c *Config) { c.CLICommand = "" }, Name: "--cli-address/--cli-command", Kind: field.ErrRequired},
		"both CLIs":                       {Edit: func(c *Config) { c.CLIAddress, c.CLIToken = "127.0.0.1:4321", "s3cret" }, Name: "--cli-address/--cli-command", Kind: field.ErrConflict},
		"attached without a token":        {Edit: and(attach, func(c *Config) { c.CLIToken = "" }), Name: TokenEnv, Kind: field.ErrRequired},
		"attached with the shipped token": {Edit: and(attach, func(c *Config) { c.CLIToken = "REPLACE-with-a-long-random-token" }), Name: TokenEnv, Kind: field.ErrMalformed},
		"attached to no port":             {Edit: and(attach, func(c *Config) { c.CLIAddress = "127.0.0.1" }), Name: "--cli-address", Kind: field.ErrMalformed},
		"child with a home":               {Edit: func(c *Config) { c.CLIHome = "/home" }},
		"home without a child":            {Edit: and(attach, func(c *Config) { c.CLIHome = "/home" }), Name: "--cli-home", Kind: field.ErrConflict},
		"home in isolated mode":           {Edit: and(isolated, func(c *Config) { c.CLIHome = "/home" }), Name: "--cli-home", Kind: field.ErrConflict},

		// Modes.
		"unknown mode":            {Edit: func(c *Config) { c.Mode = "exclusive" }, Name: "--mode", Kind: field.ErrMalformed},
		"collab":                  {Edit: and(mesh, func(c *Config) { c.Mode = ModeCollab })},
		"collab without consul":   {Edit: and(mesh, func(c *Config) { c.Mode, c.Consul = ModeCollab, "" }), Name: "--mode", Kind: field.ErrRequired},
		"collab without a policy": {Edit: and(mesh, func(c *Config) { c.Mode, c.Policy = ModeCollab, "" }), Name: "--mode", Kind: field.ErrRequired},
		"isolated":                {Edit: isolated},
		"isolated with everything": {Edit: and(isolated, mesh, func(c *Config) {
			c.UserUIDs, c.UserEnv, c.UserSecrets = "200000-200999", "HTTPS_PROXY,SSL_CERT_FILE", "/secrets"
		})},
		"isolated without a root":   {Edit: and(isolated, func(c *Config) { c.UsersRoot = "" }), Name: "--mode", Kind: field.ErrRequired},
		"isolated without keys":     {Edit: and(isolated, func(c *Config) { c.IdentityKeys = "" }), Name: "--mode", Kind: field.ErrRequired},
		"isolated on an address":    {Edit: and(isolated, attach), Name: "--mode", Kind: field.ErrRequired},
		"isolated, no users":        {Edit: and(isolated, func(c *Config) { c.MaxUsers = 0 }), Name: "--max-users", Kind: field.ErrOutOfRange},
		"isolated, bad UID range":   {Edit: and(isolated, func(c *Config) { c.UserUIDs = "0-999" }), Name: "--user-uids", Kind: field.ErrMalformed},
		"isolated, reversed range":  {Edit: and(isolated, func(c *Config) { c.UserUIDs = "2000-1000" }), Name: "--user-uids", Kind: field.ErrMalformed},
		"isolated, spaced env":      {Edit: and(isolated, func(c *Config) { c.UserEnv = "HTTPS_PROXY, SSL_CERT_FILE" }), Name: "--user-env", Kind: field.ErrMalformed},
		"isolated, empty env name":  {Edit: and(isolated, func(c *Config) { c.UserEnv = "A,,B" }), Name: "--user-env", Kind: field.ErrMalformed},
		"users root, shared mode":   {Edit: func(c *Config) { c.UsersRoot = "/users" }, Name: "--users-root", Kind: field.ErrConflict},
		"user secrets, collab mode": {Edit: and(mesh, func(c *Config) { c.Mode, c.UserSecrets = ModeCollab, "/s" }), Name: "--user-secrets", Kind: field.ErrConflict},
		"user uids, shared mode":    {Edit: func(c *Config) { c.UserUIDs = "200000-200999" }, Name: "--user-uids", Kind: field.ErrConflict},
		"user env, shared mode":     {Edit: func(c *Config) { c.UserEnv = "HTTPS_PROXY" }, Name: "--user-env", Kind: field.ErrConflict},

		// Rebalancing reads the pool's ring from Consul, as Envoy is configured.
		"rebalance":                      {Edit: and(mesh, func(c *Config) { c.Rebalance, c.CLIHome = true, "/shared/home" })},
		"rebalance on a temporary home":  {Edit: and(mesh, func(c *Config) { c.Rebalance = true }), Name: "--rebalance", Kind: field.ErrConflict},
		"rebalance on an attached CLI":   {Edit: and(mesh, attach, func(c *Config) { c.Rebalance = true })},
		"rebalance without consul":       {Edit: and(attach, func(c *Config) { c.Rebalance = true }), Name: "--rebalance", Kind: field.ErrRequired},
		"rebalance at no rate":           {Edit: and(mesh, attach, func(c *Config) { c.Rebalance, c.RebalanceRate = true, 0 }), Name: "--rebalance-rate", Kind: field.ErrOutOfRange},
		"rebalance at a storm's rate":    {Edit: and(mesh, attach, func(c *Config) { c.Rebalance, c.RebalanceRate = true, 5000 }), Name: "--rebalance-rate", Kind: field.ErrOutOfRange},
		"rebalance settling for a day":   {Edit: and(mesh, attach, func(c *Config) { c.Rebalance, c.RebalanceSettle = true, 24*time.Hour }), Name: "--rebalance-settle", Kind: field.ErrOutOfRange},
		"maglev":                         {Edit: and(mesh, attach, func(c *Config) { c.Rebalance, c.LBPolicy, c.MaglevTableSize = true, "maglev", 65537 })},
		"maglev, table not prime":        {Edit: func(c *Config) { c.LBPolicy, c.MaglevTableSize = "maglev", 65536 }, Name: "--maglev-table-size", Kind: field.ErrOutOfRange},
		"policy that does not hash":      {Edit: func(c *Config) { c.LBPolicy = "round_robin" }, Name: "--lb-policy", Kind: field.ErrMalformed},
		"unknown hash key":               {Edit: func(c *Config) { c.HashKey = "email" }, Name: "--hash-key", Kind: field.ErrMalformed},
		"ring of no size":                {Edit: and(mesh, attach, func(c *Config) { c.Rebalance, c.RingEntriesPerHost = true, 0 }), Name: "--ring-min-size", Kind: field.ErrRequired},
		"ring of a minimum size":         {Edit: and(mesh, attach, func(c *Config) { c.Rebalance, c.RingEntriesPerHost, c.RingMinSize = true, 0, 1024 })},
		"ring larger than Envoy's limit": {Edit: and(mesh, attach, func(c *Config) { c.Rebalance, c.RingMaxSize = true, 1<<24 }), Name: "--ring-max-size", Kind: field.ErrOutOfRange},

		// The policy needs keys; the sweeper needs a policy and Consul.
		"policy with keys":              {Edit: mesh},
		"policy without keys":           {Edit: and(mesh, func(c *Config) { c.IdentityKeys = "" }), Name: "--policy", Kind: field.ErrRequired},
		"builtin policy and data":       {Edit: and(mesh, func(c *Config) { c.Policy, c.PolicyData = "builtin", "/data.json" })},
		"policy data, no policy":        {Edit: func(c *Config) { c.PolicyData = "/data.json" }, Name: "--policy-data", Kind: field.ErrConflict},
		"sweeper settings":              {Edit: and(mesh, func(c *Config) { c.SessionTTL, c.SweepInterval = 10*time.Minute, 5*time.Minute })},
		"session ttl, no consul":        {Edit: func(c *Config) { c.Policy, c.IdentityKeys, c.SessionTTL = "/policy", "/keys", 10*time.Minute }, Name: "--session-ttl", Kind: field.ErrConflict},
		"sweep interval, no policy":     {Edit: func(c *Config) { c.Consul, c.SweepInterval = "127.0.0.1:8500", 5*time.Minute }, Name: "--sweep-interval", Kind: field.ErrConflict},
		"no sweeping, no sweeper":       {Edit: func(c *Config) { c.SweepInterval = 0 }},
		"session ttl, isolated":         {Edit: and(isolated, mesh, func(c *Config) { c.SessionTTL = time.Hour }), Name: "--session-ttl", Kind: field.ErrConflict},
		"sweeper with zero session ttl": {Edit: and(mesh, func(c *Config) { c.SessionTTL = 0 }), Name: "--session-ttl", Kind: field.ErrOutOfRange},
		"sweeper with negative interval": {
			Edit: and(mesh, func(c *Config) { c.SweepInterval = -time.Second }), Name: "--sweep-interval", Kind: field.ErrOutOfRange},

		// Addresses and the path.
		"listen on every interface": {Edit: func(c *Config) { c.Listen = ":7001" }},
		"listen on port 0":          {Edit: func(c *Config) { c.Listen = "127.0.0.1:0" }, Name: "--listen", Kind: field.ErrMalformed},
		"listen without a port":     {Edit: func(c *Config) { c.Listen = "127.0.0.1" }, Name: "--listen", Kind: field.ErrMalformed},
		"listen port too large":     {Edit: func(c *Config) { c.Listen = "127.0.0.1:70000" }, Name: "--listen", Kind: field.ErrMalformed},
		"admin on localhost":        {Edit: func(c *Config) { c.AdminListen = "localhost:7101" }},
		"admin on ::1, port 0":      {Edit: func(c *Config) { c.AdminListen = "[::1]:0" }},
		"admin public, credential":  {Edit: func(c *Config) { c.AdminListen, c.AdminCredentialFile = "0.0.0.0:7101", "/admin" }},
		"admin public":              {Edit: func(c *Config) { c.AdminListen = "0.0.0.0:7101" }, Name: "--admin-listen", Kind: field.ErrRequired},
		"admin on every interface":  {Edit: func(c *Config) { c.AdminListen = ":7101" }, Name: "--admin-listen", Kind: field.ErrRequired},
		"admin without a port":      {Edit: func(c *Config) { c.AdminListen = "127.0.0.1" }, Name: "--admin-listen", Kind: field.ErrMalformed},
		"admin on the tunnel port":  {Edit: func(c *Config) { c.AdminListen = c.Listen }, Name: "--admin-listen", Kind: field.ErrConflict},
		"another path":              {Edit: func(c *Config) { c.Path = "/climesh/v2/rpc" }},
		"relative path":             {Edit: func(c *Config) { c.Path = "v1/rpc" }, Name: "--path", Kind: field.ErrMalformed},
		"path with a wildcard":      {Edit: func(c *Config) { c.Path = "/v1/{x}" }, Name: "--path", Kind: field.ErrMalformed},
		"path with a method":        {Edit: func(c *Config) { c.Path = "GET /v1/rpc" }, Name: "--path", Kind: field.ErrMalformed},
		"no pool":                   {Edit: func(c *Config) { c.Pool = "" }, Name: "--pool", Kind: field.ErrRequired},

		// Numeric bounds.
		"no capacity cap":           {Edit: func(c *Config) { c.Capacity, c.MaxTunnelsPerUser = 0, 0 }},
		"negative capacity":         {Edit: func(c *Config) { c.Capacity = -1 }, Name: "--capacity", Kind: field.ErrOutOfRange},
		"no pending":                {Edit: func(c *Config) { c.MaxPending = 0 }, Name: "--max-pending", Kind: field.ErrOutOfRange},
		"no tunnel sessions":        {Edit: func(c *Config) { c.MaxTunnelSessions = 0 }, Name: "--max-tunnel-sessions", Kind: field.ErrOutOfRange},
		"negative tunnels per user": {Edit: func(c *Config) { c.MaxTunnelsPerUser = -1 }, Name: "--max-tunnels-per-user", Kind: field.ErrOutOfRange},
		"no frame":                  {Edit: func(c *Config) { c.MaxFrameBytes = 0 }, Name: "--max-frame-bytes", Kind: field.ErrOutOfRange},

		// Durations.
		"fast check":                  {Edit: func(c *Config) { c.PingInterval, c.CheckTTL = 500*time.Millisecond, 3*time.Second }},
		"no ping":                     {Edit: func(c *Config) { c.PingInterval = 0 }, Name: "--ping-interval", Kind: field.ErrOutOfRange},
		"check ttl = ping":            {Edit: func(c *Config) { c.CheckTTL = c.PingInterval }, Name: "--check-ttl", Kind: field.ErrOutOfRange},
		"zero timers":                 {Edit: func(c *Config) { c.Keepalive, c.DrainTimeout, c.UserIdle, c.LockWaitMax = 0, 0, 0, 0 }},
		"negative keepalive":          {Edit: func(c *Config) { c.Keepalive = -time.Second }, Name: "--keepalive", Kind: field.ErrOutOfRange},
		"negative drain timeout":      {Edit: func(c *Config) { c.DrainTimeout = -time.Second }, Name: "--drain-timeout", Kind: field.ErrOutOfRange},
		"no policy watch":             {Edit: and(mesh, func(c *Config) { c.PolicyWatch = 0 }), Name: "--policy-watch", Kind: field.ErrOutOfRange},
		"negative user idle":          {Edit: and(isolated, func(c *Config) { c.UserIdle = -time.Second }), Name: "--user-idle", Kind: field.ErrOutOfRange},
		"lock ttl bounds":             {Edit: and(mesh, func(c *Config) { c.Mode, c.LockTTL, c.LockDelay = ModeCollab, 24*time.Hour, 60*time.Second })},
		"lock ttl under 10s":          {Edit: func(c *Config) { c.LockTTL = 9 * time.Second }, Name: "--lock-ttl", Kind: field.ErrOutOfRange},
		"lock ttl over 24h":           {Edit: func(c *Config) { c.LockTTL = 25 * time.Hour }, Name: "--lock-ttl", Kind: field.ErrOutOfRange},
		"no lock delay":               {Edit: func(c *Config) { c.LockDelay = 0 }},
		"lock delay over 60s":         {Edit: func(c *Config) { c.LockDelay = 61 * time.Second }, Name: "--lock-delay", Kind: field.ErrOutOfRange},
		"negative lock delay":         {Edit: func(c *Config) { c.LockDelay = -time.Second }, Name: "--lock-delay", Kind: field.ErrOutOfRange},
		"consul timeout tiny":         {Edit: func(c *Config) { c.ConsulTimeout = time.Millisecond }, Name: "--consul-timeout", Kind: field.ErrOutOfRange},
		"bundle service without key":  {Edit: func(c *Config) { c.Policy, c.IdentityKeys = "https://b.example.com/c.tar.gz", "/k" }, Name: "--policy-bundle-key", Kind: field.ErrRequired},
		"bundle key without service":  {Edit: func(c *Config) { c.PolicyBundleKey = "/bk" }, Name: "--policy-bundle-key", Kind: field.ErrConflict},
		"bundle alg unknown":          {Edit: func(c *Config) { c.PolicyBundleAlg = "HS256" }, Name: "--policy-bundle-alg", Kind: field.ErrMalformed},
		"decision log without policy": {Edit: func(c *Config) { c.DecisionLog = "-" }, Name: "--decision-log", Kind: field.ErrConflict},
		"decision log url plain http": {Edit: func(c *Config) { c.Policy, c.IdentityKeys, c.DecisionLogURL = "/p", "/k", "http://logs.example.com/x" }, Name: "--decision-log-url", Kind: field.ErrMalformed},
		"turn timeout tiny":           {Edit: func(c *Config) { c.TurnTimeout = time.Millisecond }, Name: "--turn-timeout", Kind: field.ErrOutOfRange},
		"stale records negative":      {Edit: func(c *Config) { c.StaleRecords = -time.Second }, Name: "--stale-records", Kind: field.ErrOutOfRange},
		"catalog registration": {Edit: and(mesh, func(c *Config) {
			c.ConsulRegistration, c.ConsulNode, c.LivenessTTL = RegistrationCatalog, "n-1", 3*time.Second
		})},
		"unknown registration":   {Edit: func(c *Config) { c.ConsulRegistration = "dataplane" }, Name: "--consul-registration", Kind: field.ErrMalformed},
		"catalog without consul": {Edit: func(c *Config) { c.ConsulRegistration = RegistrationCatalog }, Name: "--consul-registration", Kind: field.ErrRequired},
		"node with an agent":     {Edit: and(mesh, func(c *Config) { c.ConsulNode = "n-1" }), Name: "--consul-node", Kind: field.ErrConflict},
		"liveness with an agent": {Edit: and(mesh, func(c *Config) { c.LivenessTTL = time.Minute }), Name: "--liveness-ttl", Kind: field.ErrConflict},
		"liveness under 1s":      {Edit: and(mesh, func(c *Config) { c.ConsulRegistration, c.LivenessTTL = RegistrationCatalog, 500*time.Millisecond }), Name: "--liveness-ttl", Kind: field.ErrOutOfRange},
		"negative lock wait max": {Edit: func(c *Config) { c.LockWaitMax = -time.Second }, Name: "--lock-wait-max", Kind: field.ErrOutOfRange},

		// The log level.
		"debug log":   {Edit: func(c *Config) { c.LogLevel = "debug" }},
		"unknown log": {Edit: func(c *Config) { c.LogLevel = "verbose" }, Name: "--log-level", Kind: field.ErrMalformed},
	}
	base := func() Config {
		c := DefaultConfig()
		c.CLICommand = "copilot"
		return c
	}
	fieldtest.ValidateCases(t, base, func(c Config) string { return c.CLIToken }, cases)
}
