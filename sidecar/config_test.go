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

// envOf is a fake environment for Load.
func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

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
	{"drain-timeout", "2m0s", "on SIGTERM or POST /drain: longest wait for running turns before tunnels are closed"},
	{"edge-credential-file", "", "`file` with the secret Envoy adds to tunnels (identity.edge_credential_file); tunnels without it are refused"},
	{"identity-keys", "", "`file` with the keys that verify the edge's identity assertion (policy.identity_keys_file)"},
	{"instance-id", "", "Consul service `id` (default: pool-port)"},
	{"keepalive", "30s", "ping each client this often so idle timers do not cut a long turn; a client that does not answer within 3x this (at least 10s) is dropped (0: off)"},
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
	{"ping-interval", "2s", "how often the CLI is pinged for the Consul check"},
	{"policy", "", "Rego `dir` or bundle for per-message decisions (deny by default); needs --identity-keys"},
	{"policy-watch", "1s", "how often --policy is checked for changes"},
	{"pool", "copilot", "Consul service `name` (the climesh pool)"},
	{"session-ttl", "30m0s", "sessions idle longer than this are deleted (disk and registry) by the pool's sweeper"},
	{"sweep-interval", "1m0s", "how often the pool's sweeper runs (one sidecar at a time, elected in Consul; 0: only POST /sweep)"},
	{"user-env", "", "isolated: comma-separated `names` of the sidecar's environment variables each CLI also gets (a proxy, a CA bundle); nothing else of the sidecar's environment is passed"},
	{"user-idle", "10m0s", "isolated: stop a user's CLI after this long without a tunnel"},
	{"user-secrets", "", "isolated: `dir` of <tenant>/<user>.env files (KEY=VALUE: GitHub token, provider key); never logged"},
	{"user-uids", "", "isolated: `range` FIRST-LAST of UIDs, one per (tenant, user); each CLI runs under its own UID and GID with a home only it can read (the sidecar must run as root); empty: users are separated by directory permissions only"},
	{"users-root", "", "isolated: `dir` holding each user's COPILOT_HOME (<dir>/<tenant>/<user>/home, mode 0700)"},
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
		"--ping-interval", "1s", "--check-ttl", "4s", "--keepalive", "5s", "--drain-timeout", "6s",
		"--session-ttl", "7m", "--sweep-interval", "8m", "--edge-credential-file", "/e", "--identity-keys", "/k",
		"--policy", "/pol", "--policy-watch", "9s", "--log-level", "debug", "--mode", "collab",
		"--users-root", "/u", "--user-secrets", "/s", "--user-uids", "1000-1999", "--user-env", "A,B",
		"--max-users", "11", "--user-idle", "12s", "--lock-ttl", "13s", "--lock-delay", "14s",
		"--lock-wait-max", "15s", "--max-frame-bytes", "16",
	}
	want := Config{
		Listen: "0.0.0.0:7002", AdminListen: "0.0.0.0:7102", AdminCredentialFile: "/a", Path: "/p",
		Pool: "collab", InstanceID: "i-1", Consul: "c:8500", Advertise: "10.0.0.1",
		CLIAddress: "127.0.0.1:4321", CLIToken: "tok", CLICommand: "copilot", CLIHome: "/h",
		Mode: ModeCollab, Capacity: 3, MaxPending: 7, MaxTunnelSessions: 8, MaxTunnelsPerUser: 9, MaxFrameBytes: 16,
		PingInterval: time.Second, CheckTTL: 4 * time.Second, Keepalive: 5 * time.Second, DrainTimeout: 6 * time.Second,
		SessionTTL: 7 * time.Minute, SweepInterval: 8 * time.Minute,
		EdgeCredentialFile: "/e", IdentityKeys: "/k", Policy: "/pol", PolicyWatch: 9 * time.Second,
		UsersRoot: "/u", UserSecrets: "/s", UserUIDs: "1000-1999", UserEnv: "A,B", MaxUsers: 11, UserIdle: 12 * time.Second,
		LockTTL: 13 * time.Second, LockDelay: 14 * time.Second, LockWaitMax: 15 * time.Second, LogLevel: "debug",
	}
	var fs []string
	c := DefaultConfig()
	c.FlagSet().VisitAll(func(f *flag.Flag) { fs = append(fs, "--"+f.Name) })
	for _, name := range fs {
		if !slices.Contains(args, name) {
			t.Errorf("%s: not set by this test", name)
		}
	}
	got, err := Load(args, envOf(map[string]string{TokenEnv: "tok"}))
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
			env := func(k string) (string, bool) { asked = append(asked, k); return envOf(tc.env)(k) }
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
	fieldtest.LoadRefuses(t, func(args []string) error { _, err := Load(args, envOf(nil)); return err }, map[string]fieldtest.Refusal{
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
			c, err := Load(args, envOf(map[string]string{TokenEnv: "cli-token"}))
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
	cases := map[string]struct {
		edit func(*Config)
		name string // flag named by the only error; "" for a valid config
		kind error
	}{
		"base": {},

		// The CLI: exactly one of --cli-address and --cli-command; an address needs its token.
		"attached CLI":                    {edit: attach},
		"no CLI":                          {edit: func(c *Config) { c.CLICommand = "" }, name: "--cli-address/--cli-command", kind: field.ErrRequired},
		"both CLIs":                       {edit: func(c *Config) { c.CLIAddress, c.CLIToken = "127.0.0.1:4321", "s3cret" }, name: "--cli-address/--cli-command", kind: field.ErrConflict},
		"attached without a token":        {edit: and(attach, func(c *Config) { c.CLIToken = "" }), name: TokenEnv, kind: field.ErrRequired},
		"attached with the shipped token": {edit: and(attach, func(c *Config) { c.CLIToken = "REPLACE-with-a-long-random-token" }), name: TokenEnv, kind: field.ErrMalformed},
		"attached to no port":             {edit: and(attach, func(c *Config) { c.CLIAddress = "127.0.0.1" }), name: "--cli-address", kind: field.ErrMalformed},
		"child with a home":               {edit: func(c *Config) { c.CLIHome = "/home" }},
		"home without a child":            {edit: and(attach, func(c *Config) { c.CLIHome = "/home" }), name: "--cli-home", kind: field.ErrConflict},
		"home in isolated mode":           {edit: and(isolated, func(c *Config) { c.CLIHome = "/home" }), name: "--cli-home", kind: field.ErrConflict},

		// Modes.
		"unknown mode":            {edit: func(c *Config) { c.Mode = "exclusive" }, name: "--mode", kind: field.ErrMalformed},
		"collab":                  {edit: and(mesh, func(c *Config) { c.Mode = ModeCollab })},
		"collab without consul":   {edit: and(mesh, func(c *Config) { c.Mode, c.Consul = ModeCollab, "" }), name: "--mode", kind: field.ErrRequired},
		"collab without a policy": {edit: and(mesh, func(c *Config) { c.Mode, c.Policy = ModeCollab, "" }), name: "--mode", kind: field.ErrRequired},
		"isolated":                {edit: isolated},
		"isolated with everything": {edit: and(isolated, mesh, func(c *Config) {
			c.UserUIDs, c.UserEnv, c.UserSecrets = "200000-200999", "HTTPS_PROXY,SSL_CERT_FILE", "/secrets"
		})},
		"isolated without a root":   {edit: and(isolated, func(c *Config) { c.UsersRoot = "" }), name: "--mode", kind: field.ErrRequired},
		"isolated without keys":     {edit: and(isolated, func(c *Config) { c.IdentityKeys = "" }), name: "--mode", kind: field.ErrRequired},
		"isolated on an address":    {edit: and(isolated, attach), name: "--mode", kind: field.ErrRequired},
		"isolated, no users":        {edit: and(isolated, func(c *Config) { c.MaxUsers = 0 }), name: "--max-users", kind: field.ErrOutOfRange},
		"isolated, bad UID range":   {edit: and(isolated, func(c *Config) { c.UserUIDs = "0-999" }), name: "--user-uids", kind: field.ErrMalformed},
		"isolated, reversed range":  {edit: and(isolated, func(c *Config) { c.UserUIDs = "2000-1000" }), name: "--user-uids", kind: field.ErrMalformed},
		"isolated, spaced env":      {edit: and(isolated, func(c *Config) { c.UserEnv = "HTTPS_PROXY, SSL_CERT_FILE" }), name: "--user-env", kind: field.ErrMalformed},
		"isolated, empty env name":  {edit: and(isolated, func(c *Config) { c.UserEnv = "A,,B" }), name: "--user-env", kind: field.ErrMalformed},
		"users root, shared mode":   {edit: func(c *Config) { c.UsersRoot = "/users" }, name: "--users-root", kind: field.ErrConflict},
		"user secrets, collab mode": {edit: and(mesh, func(c *Config) { c.Mode, c.UserSecrets = ModeCollab, "/s" }), name: "--user-secrets", kind: field.ErrConflict},
		"user uids, shared mode":    {edit: func(c *Config) { c.UserUIDs = "200000-200999" }, name: "--user-uids", kind: field.ErrConflict},
		"user env, shared mode":     {edit: func(c *Config) { c.UserEnv = "HTTPS_PROXY" }, name: "--user-env", kind: field.ErrConflict},

		// The policy needs keys; the sweeper needs a policy and Consul.
		"policy with keys":              {edit: mesh},
		"policy without keys":           {edit: and(mesh, func(c *Config) { c.IdentityKeys = "" }), name: "--policy", kind: field.ErrRequired},
		"sweeper settings":              {edit: and(mesh, func(c *Config) { c.SessionTTL, c.SweepInterval = 10*time.Minute, 5*time.Minute })},
		"session ttl, no consul":        {edit: func(c *Config) { c.Policy, c.IdentityKeys, c.SessionTTL = "/policy", "/keys", 10*time.Minute }, name: "--session-ttl", kind: field.ErrConflict},
		"sweep interval, no policy":     {edit: func(c *Config) { c.Consul, c.SweepInterval = "127.0.0.1:8500", 5*time.Minute }, name: "--sweep-interval", kind: field.ErrConflict},
		"no sweeping, no sweeper":       {edit: func(c *Config) { c.SweepInterval = 0 }},
		"session ttl, isolated":         {edit: and(isolated, mesh, func(c *Config) { c.SessionTTL = time.Hour }), name: "--session-ttl", kind: field.ErrConflict},
		"sweeper with zero session ttl": {edit: and(mesh, func(c *Config) { c.SessionTTL = 0 }), name: "--session-ttl", kind: field.ErrOutOfRange},
		"sweeper with negative interval": {
			edit: and(mesh, func(c *Config) { c.SweepInterval = -time.Second }), name: "--sweep-interval", kind: field.ErrOutOfRange},

		// Addresses and the path.
		"listen on every interface": {edit: func(c *Config) { c.Listen = ":7001" }},
		"listen on port 0":          {edit: func(c *Config) { c.Listen = "127.0.0.1:0" }, name: "--listen", kind: field.ErrMalformed},
		"listen without a port":     {edit: func(c *Config) { c.Listen = "127.0.0.1" }, name: "--listen", kind: field.ErrMalformed},
		"listen port too large":     {edit: func(c *Config) { c.Listen = "127.0.0.1:70000" }, name: "--listen", kind: field.ErrMalformed},
		"admin on localhost":        {edit: func(c *Config) { c.AdminListen = "localhost:7101" }},
		"admin on ::1, port 0":      {edit: func(c *Config) { c.AdminListen = "[::1]:0" }},
		"admin public, credential":  {edit: func(c *Config) { c.AdminListen, c.AdminCredentialFile = "0.0.0.0:7101", "/admin" }},
		"admin public":              {edit: func(c *Config) { c.AdminListen = "0.0.0.0:7101" }, name: "--admin-listen", kind: field.ErrRequired},
		"admin on every interface":  {edit: func(c *Config) { c.AdminListen = ":7101" }, name: "--admin-listen", kind: field.ErrRequired},
		"admin without a port":      {edit: func(c *Config) { c.AdminListen = "127.0.0.1" }, name: "--admin-listen", kind: field.ErrMalformed},
		"admin on the tunnel port":  {edit: func(c *Config) { c.AdminListen = c.Listen }, name: "--admin-listen", kind: field.ErrConflict},
		"another path":              {edit: func(c *Config) { c.Path = "/climesh/v2/rpc" }},
		"relative path":             {edit: func(c *Config) { c.Path = "v1/rpc" }, name: "--path", kind: field.ErrMalformed},
		"path with a wildcard":      {edit: func(c *Config) { c.Path = "/v1/{x}" }, name: "--path", kind: field.ErrMalformed},
		"path with a method":        {edit: func(c *Config) { c.Path = "GET /v1/rpc" }, name: "--path", kind: field.ErrMalformed},
		"no pool":                   {edit: func(c *Config) { c.Pool = "" }, name: "--pool", kind: field.ErrRequired},

		// Numeric bounds.
		"no capacity cap":           {edit: func(c *Config) { c.Capacity, c.MaxTunnelsPerUser = 0, 0 }},
		"negative capacity":         {edit: func(c *Config) { c.Capacity = -1 }, name: "--capacity", kind: field.ErrOutOfRange},
		"no pending":                {edit: func(c *Config) { c.MaxPending = 0 }, name: "--max-pending", kind: field.ErrOutOfRange},
		"no tunnel sessions":        {edit: func(c *Config) { c.MaxTunnelSessions = 0 }, name: "--max-tunnel-sessions", kind: field.ErrOutOfRange},
		"negative tunnels per user": {edit: func(c *Config) { c.MaxTunnelsPerUser = -1 }, name: "--max-tunnels-per-user", kind: field.ErrOutOfRange},
		"no frame":                  {edit: func(c *Config) { c.MaxFrameBytes = 0 }, name: "--max-frame-bytes", kind: field.ErrOutOfRange},

		// Durations.
		"fast check":             {edit: func(c *Config) { c.PingInterval, c.CheckTTL = 500*time.Millisecond, 3*time.Second }},
		"no ping":                {edit: func(c *Config) { c.PingInterval = 0 }, name: "--ping-interval", kind: field.ErrOutOfRange},
		"check ttl = ping":       {edit: func(c *Config) { c.CheckTTL = c.PingInterval }, name: "--check-ttl", kind: field.ErrOutOfRange},
		"zero timers":            {edit: func(c *Config) { c.Keepalive, c.DrainTimeout, c.UserIdle, c.LockWaitMax = 0, 0, 0, 0 }},
		"negative keepalive":     {edit: func(c *Config) { c.Keepalive = -time.Second }, name: "--keepalive", kind: field.ErrOutOfRange},
		"negative drain timeout": {edit: func(c *Config) { c.DrainTimeout = -time.Second }, name: "--drain-timeout", kind: field.ErrOutOfRange},
		"no policy watch":        {edit: and(mesh, func(c *Config) { c.PolicyWatch = 0 }), name: "--policy-watch", kind: field.ErrOutOfRange},
		"negative user idle":     {edit: and(isolated, func(c *Config) { c.UserIdle = -time.Second }), name: "--user-idle", kind: field.ErrOutOfRange},
		"lock ttl bounds":        {edit: and(mesh, func(c *Config) { c.Mode, c.LockTTL, c.LockDelay = ModeCollab, 24*time.Hour, 60*time.Second })},
		"lock ttl under 10s":     {edit: func(c *Config) { c.LockTTL = 9 * time.Second }, name: "--lock-ttl", kind: field.ErrOutOfRange},
		"lock ttl over 24h":      {edit: func(c *Config) { c.LockTTL = 25 * time.Hour }, name: "--lock-ttl", kind: field.ErrOutOfRange},
		"no lock delay":          {edit: func(c *Config) { c.LockDelay = 0 }},
		"lock delay over 60s":    {edit: func(c *Config) { c.LockDelay = 61 * time.Second }, name: "--lock-delay", kind: field.ErrOutOfRange},
		"negative lock delay":    {edit: func(c *Config) { c.LockDelay = -time.Second }, name: "--lock-delay", kind: field.ErrOutOfRange},
		"negative lock wait max": {edit: func(c *Config) { c.LockWaitMax = -time.Second }, name: "--lock-wait-max", kind: field.ErrOutOfRange},

		// The log level.
		"debug log":   {edit: func(c *Config) { c.LogLevel = "debug" }},
		"unknown log": {edit: func(c *Config) { c.LogLevel = "verbose" }, name: "--log-level", kind: field.ErrMalformed},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := DefaultConfig()
			c.CLICommand = "copilot"
			if tc.edit != nil {
				tc.edit(&c)
			}
			err := c.Validate()
			if tc.name == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if problem := field.Single(err, tc.name, tc.kind, c.CLIToken); problem != "" {
				t.Error(problem)
			}
		})
	}
}
