package sidecar

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/config/field"
	"github.com/climesh/climesh/config/secret"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"

	"github.com/climesh/climesh/sidecar/datapath"
)

// The modes a sidecar runs in (--mode).
const (
	ModeShared   = "shared"   // pattern 2: one CLI, each caller's own sessions
	ModeCollab   = "collab"   // pattern 3: shared sessions, one turn at a time
	ModeIsolated = "isolated" // pattern 1: one CLI per verified user
)

// Consul's bounds on a session: its TTL is 10s to 24h, its lock-delay at most 60s.
const (
	MinLockTTL   = 10 * time.Second
	MaxLockTTL   = 24 * time.Hour
	MaxLockDelay = 60 * time.Second
)

// How the instance is registered in Consul (--consul-registration).
const (
	RegistrationAgent   = "agent"   // through the node's client agent, with a TTL check
	RegistrationCatalog = "catalog" // through the servers' catalog API: no client agent (consul-k8s's default)
)

// TokenEnv is the environment variable holding the token of the CLI that
// --cli-address names. It has no flag: a flag would show it in ps.
const TokenEnv = "COPILOT_CONNECTION_TOKEN"

// Config is climesh-sidecar's whole configuration: every flag and environment
// variable, in one typed value. Load fills it, Validate checks it, New builds the
// sidecar from it.
type Config struct {
	Listen              string // --listen: tunnels, host:port with a fixed port
	AdminListen         string // --admin-listen: /metrics, /healthz, POST /drain, POST /sweep
	AdminCredentialFile string // --admin-credential-file: the admin calls' bearer secret
	Path                string // --path: the tunnel path

	Pool       string // --pool: Consul service name
	InstanceID string // --instance-id: Consul service id (empty: <pool>-<port>, see Instance)
	Consul     string // --consul: Consul HTTP address (empty: no registration, no lock, no sweeper)
	Advertise  string // --advertise: address registered in Consul (empty: the --listen host)

	ConsulRegistration string        // --consul-registration: agent or catalog
	ConsulNode         string        // --consul-node: catalog: the instance's node (empty: climesh-<instance>)
	LivenessTTL        time.Duration // --liveness-ttl: catalog: TTL of the session holding the liveness key

	CLIAddress string // --cli-address: attach to a running CLI
	CLIToken   string // $COPILOT_CONNECTION_TOKEN: that CLI's token
	CLICommand string // --cli-command: run the CLI (isolated: each user's) as a child
	CLIHome    string // --cli-home: the child's COPILOT_HOME (empty: a new temp dir)

	Mode              string // --mode: shared, collab or isolated
	Capacity          int    // --capacity: sessions the CLI holds in memory (0: no cap)
	MaxPending        int    // --max-pending: requests per tunnel awaiting the CLI
	MaxTunnelSessions int    // --max-tunnel-sessions: sessions per tunnel's decisions
	MaxTunnelsPerUser int    // --max-tunnels-per-user: 0: no limit
	MaxFrameBytes     int    // --max-frame-bytes: largest JSON-RPC message

	PingInterval  time.Duration // --ping-interval: the CLI's health ping
	PingFailures  int           // --ping-failures: failed pings in a row before the instance fails
	CheckTTL      time.Duration // --check-ttl: the Consul TTL check
	Keepalive     time.Duration // --keepalive: WebSocket pings to clients (0: off)
	DrainTimeout  time.Duration // --drain-timeout: longest wait for running turns
	SessionTTL    time.Duration // --session-ttl: the sweeper deletes sessions idle longer
	SweepInterval time.Duration // --sweep-interval: 0: only POST /sweep

	EdgeCredentialFile string        // --edge-credential-file: the secret Envoy adds to tunnels
	IdentityKeys       string        // --identity-keys: keys verifying the edge's identity assertion
	Policy             string        // --policy: Rego dir, bundle or builtin for per-message decisions
	PolicyData         string        // --policy-data: a data file merged into --policy's data
	PolicyWatch        time.Duration // --policy-watch: how often --policy is checked for changes
	PolicyBundleKey    string        // --policy-bundle-key: the PEM public key a bundle service's bundles are signed with
	PolicyBundleAlg    string        // --policy-bundle-alg: its algorithm
	DecisionLog        string        // --decision-log: a file (or - for stdout) for every per-message decision
	DecisionLogURL     string        // --decision-log-url: or a decision log service

	UsersRoot   string        // --users-root: isolated: per-user homes
	UserSecrets string        // --user-secrets: isolated: per-user .env files
	UserUIDs    string        // --user-uids: isolated: FIRST-LAST (ParseUIDRange)
	UserEnv     string        // --user-env: isolated: comma-separated variable names
	MaxUsers    int           // --max-users: isolated: most CLIs at once
	UserIdle    time.Duration // --user-idle: isolated: stop a CLI idle this long

	TurnTimeout   time.Duration // --turn-timeout: a turn running longer is aborted (0: never)
	ConsulTimeout time.Duration // --consul-timeout: the longest any Consul call of the sidecar waits
	StaleRecords  time.Duration // --stale-records: how long a session record read before answers while Consul does not

	LockTTL     time.Duration // --lock-ttl: the turn lock's (and the sweeper's) Consul session TTL
	LockDelay   time.Duration // --lock-delay: its Consul lock-delay
	LockWaitMax time.Duration // --lock-wait-max: collab: longest x-climesh-lock-wait

	// Rebalancing (package rebalance): sessions on storage every instance
	// shares, so a tunnel may move to its key's home between turns.
	Rebalance          bool          // --rebalance
	RebalanceRate      float64       // --rebalance-rate: moves started per second, at most
	RebalanceSettle    time.Duration // --rebalance-settle: how long the ring must stay the same before moves start
	HashKey            string        // --hash-key: the pool's lb.hash_key (user, tenant, session)
	LBPolicy           string        // --lb-policy: the pool's lb.policy (ring_hash or maglev)
	MaglevTableSize    uint64        // --maglev-table-size: the pool's lb.table_size
	RingEntriesPerHost uint64        // --ring-entries-per-host: the pool's lb.ring_entries_per_host
	RingMinSize        uint64        // --ring-min-size: the pool's lb.min_ring_size (when entries per host is 0)
	RingMaxSize        uint64        // --ring-max-size: the pool's lb.max_ring_size

	LogLevel string // --log-level: a zap level
}

// DefaultConfig is the Config with no flag and no environment variable.
func DefaultConfig() Config {
	return Config{
		Listen: "127.0.0.1:7001", AdminListen: "127.0.0.1:7101", Path: "/v1/rpc", Pool: "copilot",
		Mode: ModeShared, Capacity: 50, MaxPending: datapath.DefaultBounds.Pending, MaxTunnelSessions: datapath.DefaultBounds.Sessions,
		MaxTunnelsPerUser: 32, MaxFrameBytes: jsonrpc.DefaultLimits.MaxFrameBytes,
		ConsulRegistration: RegistrationAgent, LivenessTTL: 10 * time.Second,
		PingInterval: 2 * time.Second, PingFailures: 2, CheckTTL: 6 * time.Second, Keepalive: 30 * time.Second, DrainTimeout: 2 * time.Minute,
		SessionTTL: 30 * time.Minute, SweepInterval: time.Minute, PolicyWatch: time.Second,
		MaxUsers: 20, UserIdle: 10 * time.Minute,
		LockTTL: 10 * time.Second, LockDelay: time.Second, LockWaitMax: 5 * time.Minute,
		PolicyBundleAlg: "RS256",
		ConsulTimeout:   2 * time.Second, StaleRecords: 5 * time.Minute, TurnTimeout: 30 * time.Minute,
		RebalanceRate: 5, RebalanceSettle: 5 * time.Second, HashKey: string(config.DefaultHashKey),
		LBPolicy: string(config.RingHash), MaglevTableSize: config.DefaultMaglevTable,
		RingEntriesPerHost: config.DefaultRingEntries, RingMaxSize: config.DefaultMaxRingSize,
		LogLevel: "info",
	}
}

// FlagSet returns climesh-sidecar's flags bound to c's fields, each defaulting to
// c's current value (use it on DefaultConfig() to list the flags). Its output is
// discarded: Load returns errors, and callers print the usage themselves.
func (c *Config) FlagSet() *flag.FlagSet {
	fs := field.NewFlagSet("climesh-sidecar")
	fs.StringVar(&c.Listen, "listen", c.Listen, "`address` for tunnels (/v1/rpc) and nothing else")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "`address` for /metrics, /healthz and the admin calls POST /drain and POST /sweep; a non-loopback address needs --admin-credential-file")
	fs.StringVar(&c.AdminCredentialFile, "admin-credential-file", c.AdminCredentialFile, "`file` with a secret the admin calls must carry (Authorization: Bearer ...); GET /metrics and /healthz stay open")
	fs.IntVar(&c.MaxPending, "max-pending", c.MaxPending, "most requests one tunnel may have awaiting the CLI's answer")
	fs.IntVar(&c.MaxTunnelSessions, "max-tunnel-sessions", c.MaxTunnelSessions, "most sessions one tunnel's decisions remember (records, visibility); past it they are decided again")
	fs.IntVar(&c.MaxTunnelsPerUser, "max-tunnels-per-user", c.MaxTunnelsPerUser, "most tunnels one (tenant, user) may hold open on this sidecar (0: no limit)")
	fs.StringVar(&c.Path, "path", c.Path, "tunnel `path`")
	fs.StringVar(&c.Pool, "pool", c.Pool, "Consul service `name` (the climesh pool)")
	fs.StringVar(&c.InstanceID, "instance-id", c.InstanceID, "Consul service `id` (default: pool-port)")
	fs.StringVar(&c.Consul, "consul", c.Consul, "Consul HTTP `address`; empty: do not register")
	fs.StringVar(&c.Advertise, "advertise", c.Advertise, "`address` registered in Consul (default: the --listen host)")
	fs.StringVar(&c.ConsulRegistration, "consul-registration", c.ConsulRegistration, "`how` to register: agent (the node's client agent, a TTL check of --check-ttl) or catalog (the servers' catalog API, no client agent; liveness is a key held by a session of --liveness-ttl)")
	fs.StringVar(&c.ConsulNode, "consul-node", c.ConsulNode, "catalog registration: the instance's catalog `node` (default: climesh-<instance id>)")
	fs.DurationVar(&c.LivenessTTL, "liveness-ttl", c.LivenessTTL, "catalog registration: TTL of the Consul session that holds the instance's liveness key; a dead sidecar leaves routing within 2x this (Consul refuses a TTL under its session_ttl_min, 10s by default)")
	fs.StringVar(&c.CLIAddress, "cli-address", c.CLIAddress, "attach to a running CLI at `host:port` (token from $COPILOT_CONNECTION_TOKEN)")
	fs.StringVar(&c.CLICommand, "cli-command", c.CLICommand, "run the CLI as a child: the copilot `executable`")
	fs.StringVar(&c.CLIHome, "cli-home", c.CLIHome, "COPILOT_HOME for --cli-command (default: a new temp dir)")
	fs.IntVar(&c.Capacity, "capacity", c.Capacity, "most sessions the CLI holds in memory; past it the least recently used idle one is released with session.destroy and resumed on demand (0: no cap; published in Consul meta)")
	fs.DurationVar(&c.PingInterval, "ping-interval", c.PingInterval, "how often the CLI is pinged for the Consul check")
	fs.IntVar(&c.PingFailures, "ping-failures", c.PingFailures, "pings in a row that must fail before a passing instance is reported failing (readiness and the Consul check), so that one slow answer under load does not take it out of routing; a CLI that exits fails at once")
	fs.DurationVar(&c.CheckTTL, "check-ttl", c.CheckTTL, "Consul TTL check: critical if no passing ping for this long")
	fs.DurationVar(&c.Keepalive, "keepalive", c.Keepalive, "ping each client this often so idle timers do not cut a long turn; a client that does not answer within 3x this (at least 10s) is dropped (0: off)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "on SIGTERM or POST /drain: longest wait for running turns before tunnels are closed")
	fs.DurationVar(&c.SessionTTL, "session-ttl", c.SessionTTL, "sessions idle longer than this are deleted (disk and registry) by the pool's sweeper")
	fs.DurationVar(&c.SweepInterval, "sweep-interval", c.SweepInterval, "how often the pool's sweeper runs (one sidecar at a time, elected in Consul; 0: only POST /sweep)")
	fs.StringVar(&c.EdgeCredentialFile, "edge-credential-file", c.EdgeCredentialFile, "`file` with the secret Envoy adds to tunnels (identity.edge_credential_file); tunnels without it are refused")
	fs.StringVar(&c.IdentityKeys, "identity-keys", c.IdentityKeys, "`file` with the keys that verify the edge's identity assertion (policy.identity_keys_file)")
	fs.StringVar(&c.Policy, "policy", c.Policy, "Rego `dir` or bundle for per-message decisions (deny by default), the word builtin (the policies/rego this binary was built with), or a bundle service's URL (polled every --policy-watch; needs --policy-bundle-key); needs --identity-keys")
	fs.StringVar(&c.PolicyBundleKey, "policy-bundle-key", c.PolicyBundleKey, "PEM public key `file` that verifies a bundle service's bundles (an unsigned or tampered bundle is refused; the last good one keeps deciding)")
	fs.StringVar(&c.DecisionLog, "decision-log", c.DecisionLog, "`file` (- for stdout) that gets every per-message decision in OPA's decision log format, masked by --policy's system.log.mask; a refusal then carries its decision_id")
	fs.StringVar(&c.DecisionLogURL, "decision-log-url", c.DecisionLogURL, "or a decision log service `URL` (POSTs of gzipped JSON arrays, as OPA's logs plugin sends; https, http on loopback only)")
	fs.StringVar(&c.PolicyBundleAlg, "policy-bundle-alg", c.PolicyBundleAlg, "signing `algorithm` of --policy-bundle-key (RS256, as opa build signs, or RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512)")
	fs.StringVar(&c.PolicyData, "policy-data", c.PolicyData, "JSON or YAML data `file` merged into --policy's data (it may add values, not replace them), e.g. your pools' provider_base_urls beside --policy builtin; watched like --policy")
	fs.DurationVar(&c.PolicyWatch, "policy-watch", c.PolicyWatch, "how often --policy is checked for changes")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log `level`")
	fs.StringVar(&c.Mode, "mode", c.Mode, "`mode`: shared (pattern 2), collab (pattern 3: shared sessions, one turn at a time) or isolated (pattern 1: one CLI per user)")
	fs.StringVar(&c.UsersRoot, "users-root", c.UsersRoot, "isolated: `dir` holding each user's COPILOT_HOME (<dir>/<tenant>/<user>/home, mode 0700)")
	fs.StringVar(&c.UserSecrets, "user-secrets", c.UserSecrets, "isolated: `dir` of <tenant>/<user>.env files (KEY=VALUE: GitHub token, provider key); never logged")
	fs.StringVar(&c.UserUIDs, "user-uids", c.UserUIDs, "isolated: `range` FIRST-LAST of UIDs, one per (tenant, user); each CLI runs under its own UID and GID with a home only it can read (the sidecar must run as root); empty: users are separated by directory permissions only")
	fs.StringVar(&c.UserEnv, "user-env", c.UserEnv, "isolated: comma-separated `names` of the sidecar's environment variables each CLI also gets (a proxy, a CA bundle); nothing else of the sidecar's environment is passed")
	fs.IntVar(&c.MaxUsers, "max-users", c.MaxUsers, "isolated: most CLIs at once; past it the least recently used idle one is stopped, or the tunnel refused")
	fs.DurationVar(&c.UserIdle, "user-idle", c.UserIdle, "isolated: stop a user's CLI after this long without a tunnel")
	fs.DurationVar(&c.TurnTimeout, "turn-timeout", c.TurnTimeout, "a turn (session.send to its session.idle or session.error) running longer is aborted: the CLI is sent session.abort, the client a session.error saying so, and a collab session's lock is released (0: never)")
	fs.DurationVar(&c.ConsulTimeout, "consul-timeout", c.ConsulTimeout, "longest wait for any Consul call (session records, turn locks, registration, checks); past it a client's call is answered -32010 naming what is unavailable")
	fs.DurationVar(&c.StaleRecords, "stale-records", c.StaleRecords, "while Consul does not answer, a session record this sidecar read within this long still decides (existing users go on); a session never read here is refused until Consul answers (0: refuse all)")
	fs.DurationVar(&c.LockTTL, "lock-ttl", c.LockTTL, "collab: Consul session TTL of a turn lock (a crashed holder frees it within this)")
	fs.DurationVar(&c.LockDelay, "lock-delay", c.LockDelay, "collab: Consul lock-delay after a holder's session is invalidated")
	fs.DurationVar(&c.LockWaitMax, "lock-wait-max", c.LockWaitMax, "collab: longest wait a caller may ask for (x-climesh-lock-wait)")
	fs.IntVar(&c.MaxFrameBytes, "max-frame-bytes", c.MaxFrameBytes, "largest JSON-RPC message accepted")
	fs.BoolVar(&c.Rebalance, "rebalance", c.Rebalance, "the pool's sessions live on storage every instance shares: when the pool's ring changes (read from Consul, as the xds-server reads it), ask each tunnel whose key now has another home to move there between turns (climesh-connect reconnects and resumes its sessions; a running turn is never cut). Leave off for sticky-only pools, whose sessions live on their instance")
	fs.Float64Var(&c.RebalanceRate, "rebalance-rate", c.RebalanceRate, "--rebalance: most moves this instance starts per `second`, so that a scale-out is not a reconnect storm")
	fs.DurationVar(&c.RebalanceSettle, "rebalance-settle", c.RebalanceSettle, "--rebalance: how long the pool's ring must stay the same before moves start, so that a flapping health check moves nobody back and forth")
	fs.StringVar(&c.HashKey, "hash-key", c.HashKey, "--rebalance: the pool's lb.hash_key (user, tenant or session): what the ring places")
	fs.StringVar(&c.LBPolicy, "lb-policy", c.LBPolicy, "--rebalance: the pool's lb.policy, ring_hash or maglev: how Envoy places keys")
	fs.Uint64Var(&c.MaglevTableSize, "maglev-table-size", c.MaglevTableSize, "--rebalance: the pool's lb.table_size (maglev)")
	fs.Uint64Var(&c.RingEntriesPerHost, "ring-entries-per-host", c.RingEntriesPerHost, "--rebalance: the pool's lb.ring_entries_per_host (0: --ring-min-size decides); must match the xds-server's config")
	fs.Uint64Var(&c.RingMinSize, "ring-min-size", c.RingMinSize, "--rebalance: the pool's lb.min_ring_size, when --ring-entries-per-host is 0")
	fs.Uint64Var(&c.RingMaxSize, "ring-max-size", c.RingMaxSize, "--rebalance: the pool's lb.max_ring_size")
	return fs
}

// Load reads the command line (args, without the program name) and the
// environment (env is os.LookupEnv in main) over DefaultConfig. The only variable
// is COPILOT_CONNECTION_TOKEN (an empty value counts as unset); every other
// setting is a flag. It reports the first flag it cannot parse, naming it and its
// value, and flag.ErrHelp for -h. It does not validate: call Validate.
func Load(args []string, env func(string) (string, bool)) (Config, error) {
	c := DefaultConfig()
	fs := c.FlagSet()
	if err := field.Parse(fs, args); err != nil {
		return Config{}, err
	}
	if v, ok := env(TokenEnv); ok && v != "" {
		c.CLIToken = v
	}
	return c, nil
}

// Instance is the Consul service id: --instance-id, or <pool>-<port of --listen>.
func (c Config) Instance() string {
	if c.InstanceID != "" {
		return c.InstanceID
	}
	_, port, _ := net.SplitHostPort(c.Listen)
	return c.Pool + "-" + port
}

// ConsulNodeName is the catalog node of a catalog registration: --consul-node,
// or climesh-<instance id>.
func (c Config) ConsulNodeName() string {
	if c.ConsulNode != "" {
		return c.ConsulNode
	}
	return "climesh-" + c.Instance()
}

// AdvertiseAddress is the address registered in Consul: --advertise, or the
// --listen host.
func (c Config) AdvertiseAddress() string {
	if c.Advertise != "" {
		return c.Advertise
	}
	host, _, _ := net.SplitHostPort(c.Listen)
	return host
}

// Sweeps reports whether this sidecar takes part in the pool's sweeper: only
// with a policy (the registry it sweeps is kept by the policy stage) and Consul
// (the sweeper lock and the shared registry), and not in isolated mode, whose
// sessions live in per-user homes.
func (c Config) Sweeps() bool {
	return c.Policy != "" && c.Consul != "" && c.Mode != ModeIsolated
}

var (
	// pathPattern is a plain absolute path: nothing http.ServeMux would read as
	// a method, a host or a wildcard.
	pathPattern = regexp.MustCompile(`^/[A-Za-z0-9._~/-]*$`)
	envName     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Validate refuses what cannot work or contradicts itself, naming each flag (or
// variable) at fault with its value; every error is joined in the result.
func (c Config) Validate() error {
	v := &validator{}
	c.validateCLI(v)
	c.validateMode(v)
	c.validateAddresses(v)
	c.validateBounds(v)
	c.validateDurations(v)
	c.validateRegistration(v)
	if _, err := zap.ParseAtomicLevel(c.LogLevel); err != nil {
		v.bad("--log-level", c.LogLevel, field.ErrMalformed, "want debug, info, warn, error, dpanic, panic or fatal")
	}
	c.validateRebalance(v)
	if policy.IsBundleService(c.Policy) && c.PolicyBundleKey == "" {
		v.bad("--policy-bundle-key", "", field.ErrRequired, "--policy is a bundle service: its bundles must be signed, and verified with this key")
	}
	if c.PolicyBundleKey != "" && !policy.IsBundleService(c.Policy) {
		v.bad("--policy-bundle-key", c.PolicyBundleKey, field.ErrConflict, "needs --policy to be a bundle service (an http(s) URL)")
	}
	switch c.PolicyBundleAlg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512":
	default:
		v.bad("--policy-bundle-alg", c.PolicyBundleAlg, field.ErrMalformed, "want one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512")
	}
	if c.DecisionLog != "" && c.DecisionLogURL != "" {
		v.bad("--decision-log-url", c.DecisionLogURL, field.ErrConflict, "one of --decision-log and --decision-log-url")
	}
	if (c.DecisionLog != "" || c.DecisionLogURL != "") && c.Policy == "" {
		v.bad("--decision-log", c.DecisionLog+c.DecisionLogURL, field.ErrConflict, "needs --policy: only per-message decisions are logged")
	}
	if c.DecisionLogURL != "" {
		if u, err := url.Parse(c.DecisionLogURL); err != nil || u.Host == "" || u.Scheme != "https" && !(u.Scheme == "http" && strings.HasPrefix(u.Hostname(), "127.")) {
			v.bad("--decision-log-url", c.DecisionLogURL, field.ErrMalformed, "want https (http on loopback only)")
		}
	}
	if c.Policy != "" && c.IdentityKeys == "" {
		v.bad("--policy", c.Policy, field.ErrRequired, "needs --identity-keys: per-message decisions need a verified caller")
	}
	if c.PolicyData != "" && c.Policy == "" {
		v.bad("--policy-data", c.PolicyData, field.ErrConflict, "needs --policy: the data is merged into a policy")
	}
	if c.Pool == "" {
		v.bad("--pool", "", field.ErrRequired, "required: the pool (Consul service) this instance serves")
	}
	return errors.Join(v.errs...)
}

type validator struct{ errs []error }

func (v *validator) bad(name, value string, kind error, reason string) {
	v.errs = append(v.errs, &field.Error{Name: name, Value: value, Kind: kind, Reason: reason})
}

func (v *validator) atLeast(name string, n, least int, reason string) {
	if n < least {
		v.bad(name, strconv.Itoa(n), field.ErrOutOfRange, reason)
	}
}

func (v *validator) duration(name string, d, least time.Duration, reason string) {
	if d < least {
		v.bad(name, d.String(), field.ErrOutOfRange, reason)
	}
}

// validateCLI: which CLI, and its token.
func (c Config) validateCLI(v *validator) {
	switch {
	case c.CLIAddress == "" && c.CLICommand == "":
		v.bad("--cli-address/--cli-command", "", field.ErrRequired, "give one: attach to a running CLI, or run it as a child")
	case c.CLIAddress != "" && c.CLICommand != "":
		v.bad("--cli-address/--cli-command", "", field.ErrConflict, "give only one: attach to a running CLI, or run it as a child")
	case c.CLIAddress != "":
		if !hostPort(c.CLIAddress, false) {
			v.bad("--cli-address", c.CLIAddress, field.ErrMalformed, "want host:port, e.g. 127.0.0.1:4321")
		}
		if c.CLIToken == "" {
			v.bad(TokenEnv, "", field.ErrRequired, "--cli-address needs the CLI's token in $"+TokenEnv+": the CLI must not run without a token")
		} else if secret.IsPlaceholder([]byte(c.CLIToken)) {
			v.bad(TokenEnv, "", field.ErrMalformed, "a placeholder (it contains \""+secret.Marker+"\", as deploy/kubernetes/base/secrets.yaml ships it): put a real token in it")
		}
	}
	if c.CLIHome != "" && (c.CLICommand == "" || c.Mode == ModeIsolated) {
		v.bad("--cli-home", c.CLIHome, field.ErrConflict, "only for the child of --cli-command in shared or collab mode (isolated mode keeps each user's home under --users-root)")
	}
}

// modeNeed is a flag a mode needs: whether it is set, and why the mode needs it.
type modeNeed struct {
	flag string
	set  bool
	why  string
}

// validateMode: what each mode needs, and the flags only one mode reads.
func (c Config) validateMode(v *validator) {
	// missing lists, in order, each flag a mode needs that is not set, with why.
	missing := func(needs ...modeNeed) []string {
		var out []string
		for _, n := range needs {
			if !n.set {
				out = append(out, n.flag+" ("+n.why+")")
			}
		}
		return out
	}
	switch c.Mode {
	case ModeShared:
	case ModeCollab:
		if m := missing(
			modeNeed{"--consul", c.Consul != "", "the turn lock lives in Consul"},
			modeNeed{"--policy", c.Policy != "", "shared sessions, their members and the lock are decided per message"},
		); len(m) > 0 {
			v.bad("--mode", c.Mode, field.ErrRequired, "collab needs "+strings.Join(m, " and ")+"; without them nothing would be serialised")
		}
	case ModeIsolated:
		if m := missing(
			modeNeed{"--cli-command", c.CLICommand != "", "a CLI is started per user"},
			modeNeed{"--users-root", c.UsersRoot != "", "the users' homes"},
			modeNeed{"--identity-keys", c.IdentityKeys != "", "a CLI per verified user"},
		); len(m) > 0 {
			v.bad("--mode", c.Mode, field.ErrRequired, "isolated needs "+strings.Join(m, ", "))
		}
		v.atLeast("--max-users", c.MaxUsers, 1, "isolated: want at least one CLI")
		if c.UserUIDs != "" {
			if _, err := ParseUIDRange(c.UserUIDs); err != nil {
				v.bad("--user-uids", c.UserUIDs, field.ErrMalformed, err.Error())
			}
		}
		if c.UserEnv != "" {
			for _, name := range strings.Split(c.UserEnv, ",") {
				if !envName.MatchString(name) {
					v.bad("--user-env", c.UserEnv, field.ErrMalformed, fmt.Sprintf("%q is not a variable name (want NAME,NAME without spaces)", name))
					break
				}
			}
		}
	default:
		v.bad("--mode", c.Mode, field.ErrMalformed, "want shared, collab or isolated")
	}
	if c.Mode != ModeIsolated {
		for _, f := range []struct{ name, value string }{{"--users-root", c.UsersRoot}, {"--user-secrets", c.UserSecrets}, {"--user-uids", c.UserUIDs}, {"--user-env", c.UserEnv}} {
			if f.value != "" {
				v.bad(f.name, f.value, field.ErrConflict, "only for --mode isolated (here: "+c.Mode+"): it would be ignored")
			}
		}
	}
	// The sweeper: a setting away from its default asks for sweeping; refuse it
	// where no sweeper runs rather than ignore it. (A value equal to the default
	// cannot be told from an absent flag, and --sweep-interval 0 asks for none.)
	if !c.Sweeps() {
		d := DefaultConfig()
		why := "no sweeper runs here: it needs --policy and --consul, and isolated mode has none"
		if c.SessionTTL != d.SessionTTL {
			v.bad("--session-ttl", c.SessionTTL.String(), field.ErrConflict, why)
		}
		if c.SweepInterval != d.SweepInterval && c.SweepInterval != 0 {
			v.bad("--sweep-interval", c.SweepInterval.String(), field.ErrConflict, why)
		}
	}
}

// validateRegistration: how the instance is registered, and what only the
// catalog registration reads.
func (c Config) validateRegistration(v *validator) {
	switch c.ConsulRegistration {
	case RegistrationAgent:
		if c.ConsulNode != "" {
			v.bad("--consul-node", c.ConsulNode, field.ErrConflict, "only for --consul-registration catalog (an agent registers on its own node)")
		}
		if c.LivenessTTL != DefaultConfig().LivenessTTL {
			v.bad("--liveness-ttl", c.LivenessTTL.String(), field.ErrConflict, "only for --consul-registration catalog (the agent's TTL check is --check-ttl)")
		}
	case RegistrationCatalog:
		if c.Consul == "" {
			v.bad("--consul-registration", c.ConsulRegistration, field.ErrRequired, "catalog needs --consul: the servers' HTTP API")
		}
		if c.LivenessTTL < time.Second || c.LivenessTTL > MaxLockTTL {
			v.bad("--liveness-ttl", c.LivenessTTL.String(), field.ErrOutOfRange, "want 1s to 24h (and at least Consul's session_ttl_min, 10s by default)")
		}
	default:
		v.bad("--consul-registration", c.ConsulRegistration, field.ErrMalformed, "want agent or catalog")
	}
}

// validateAddresses: the listeners and the tunnel path.
func (c Config) validateAddresses(v *validator) {
	if !hostPort(c.Listen, true) {
		v.bad("--listen", c.Listen, field.ErrMalformed, "want host:port with a fixed port (it is registered in Consul), e.g. 127.0.0.1:7001")
	}
	if !hostPort(c.AdminListen, false) {
		v.bad("--admin-listen", c.AdminListen, field.ErrMalformed, "want host:port, e.g. 127.0.0.1:7101")
	} else if c.AdminCredentialFile == "" {
		host, _, _ := net.SplitHostPort(c.AdminListen)
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			v.bad("--admin-listen", c.AdminListen, field.ErrRequired, "not loopback: give --admin-credential-file, or whoever reaches it can drain the instance")
		}
	}
	if c.AdminListen == c.Listen {
		v.bad("--admin-listen", c.AdminListen, field.ErrConflict, "the same address as --listen")
	}
	if !pathPattern.MatchString(c.Path) {
		v.bad("--path", c.Path, field.ErrMalformed, "want an absolute path of letters, digits and ._~/-, e.g. /v1/rpc")
	}
}

// validateRebalance: what --rebalance needs to compute the ring Envoy uses.
func (c Config) validateRebalance(v *validator) {
	switch config.HashKey(c.HashKey) {
	case config.HashUser, config.HashTenant, config.HashSession:
	default:
		v.bad("--hash-key", c.HashKey, field.ErrMalformed, "want user, tenant or session")
	}
	switch config.Policy(c.LBPolicy) {
	case config.RingHash:
	case config.Maglev:
		if !config.ValidMaglevTableSize(c.MaglevTableSize) {
			v.bad("--maglev-table-size", strconv.FormatUint(c.MaglevTableSize, 10), field.ErrOutOfRange, fmt.Sprintf("want a prime no larger than %d (Envoy's limit)", config.MaxMaglevTable))
		}
	default:
		v.bad("--lb-policy", c.LBPolicy, field.ErrMalformed, "want ring_hash or maglev (a pool that does not hash has no home to move to)")
	}
	if !c.Rebalance {
		return
	}
	if c.Consul == "" {
		v.bad("--rebalance", "true", field.ErrRequired, "needs --consul: the pool's ring is read from Consul's health")
	}
	if c.CLICommand != "" && c.CLIHome == "" && c.Mode != ModeIsolated {
		v.bad("--rebalance", "true", field.ErrConflict, "the CLI's home is a new temporary directory, which no other instance shares: a moved user would find no session; give --cli-home on the pool's shared storage")
	}
	if c.RebalanceRate <= 0 || c.RebalanceRate > 1000 || math.IsNaN(c.RebalanceRate) {
		v.bad("--rebalance-rate", strconv.FormatFloat(c.RebalanceRate, 'g', -1, 64), field.ErrOutOfRange, "want more than 0 and at most 1000 moves a second")
	}
	if c.RebalanceSettle < 0 || c.RebalanceSettle > time.Hour {
		v.bad("--rebalance-settle", c.RebalanceSettle.String(), field.ErrOutOfRange, "want 0 to 1h")
	}
	if c.RingEntriesPerHost == 0 && c.RingMinSize == 0 {
		v.bad("--ring-min-size", "0", field.ErrRequired, "--ring-entries-per-host is 0: give the pool's lb.min_ring_size")
	}
	if c.RingMaxSize == 0 || c.RingMaxSize > 8*1024*1024 {
		v.bad("--ring-max-size", strconv.FormatUint(c.RingMaxSize, 10), field.ErrOutOfRange, "want 1 to 8388608 (Envoy's limit)")
	}
}

// validateBounds: the numeric limits.
func (c Config) validateBounds(v *validator) {
	v.atLeast("--capacity", c.Capacity, 0, "want 0 (no cap) or more")
	v.atLeast("--ping-failures", c.PingFailures, 1, "want 1 (the first failed ping fails the instance) or more")
	v.atLeast("--max-pending", c.MaxPending, 1, "want more than 0")
	v.atLeast("--max-tunnel-sessions", c.MaxTunnelSessions, 1, "want more than 0")
	v.atLeast("--max-tunnels-per-user", c.MaxTunnelsPerUser, 0, "want 0 (no limit) or more")
	v.atLeast("--max-frame-bytes", c.MaxFrameBytes, 1, "want a positive number of bytes")
}

// validateDurations: timers, and what Consul accepts for a lock's session.
func (c Config) validateDurations(v *validator) {
	v.duration("--ping-interval", c.PingInterval, time.Nanosecond, "want a positive duration")
	if c.PingInterval > 0 && c.CheckTTL <= c.PingInterval*time.Duration(max(c.PingFailures, 1)) {
		v.bad("--check-ttl", c.CheckTTL.String(), field.ErrOutOfRange, "want more than --ping-interval × --ping-failures ("+(c.PingInterval*time.Duration(max(c.PingFailures, 1))).String()+"), or the check fails while the pings still pass")
	}
	v.duration("--keepalive", c.Keepalive, 0, "negative (want 0 for off, or more)")
	v.duration("--drain-timeout", c.DrainTimeout, 0, "negative (want 0 to close tunnels at once, or more)")
	v.duration("--session-ttl", c.SessionTTL, time.Nanosecond, "want a positive duration (0 would delete every idle session)")
	v.duration("--sweep-interval", c.SweepInterval, 0, "negative (want 0 for only POST /sweep, or more)")
	v.duration("--policy-watch", c.PolicyWatch, time.Nanosecond, "want a positive duration")
	v.duration("--user-idle", c.UserIdle, 0, "negative (want 0 or more)")
	if c.ConsulTimeout < 100*time.Millisecond || c.ConsulTimeout > time.Minute {
		v.bad("--consul-timeout", c.ConsulTimeout.String(), field.ErrOutOfRange, "want 100ms to 1m")
	}
	if c.TurnTimeout != 0 && c.TurnTimeout < time.Second {
		v.bad("--turn-timeout", c.TurnTimeout.String(), field.ErrOutOfRange, "want 0 (never) or at least 1s")
	}
	if c.StaleRecords < 0 || c.StaleRecords > 24*time.Hour {
		v.bad("--stale-records", c.StaleRecords.String(), field.ErrOutOfRange, "want 0 to 24h")
	}
	if c.LockTTL < MinLockTTL || c.LockTTL > MaxLockTTL {
		v.bad("--lock-ttl", c.LockTTL.String(), field.ErrOutOfRange, "Consul accepts a session TTL of 10s to 24h")
	}
	if c.LockDelay < 0 || c.LockDelay > MaxLockDelay {
		v.bad("--lock-delay", c.LockDelay.String(), field.ErrOutOfRange, "Consul accepts a lock-delay of 0 to 60s")
	}
	v.duration("--lock-wait-max", c.LockWaitMax, 0, "negative (want 0 for no waiting, or more)")
}

// hostPort reports whether s is host:port with a numeric port (host may be
// empty: every interface); fixed refuses port 0.
func hostPort(s string, fixed bool) bool {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && (n > 0 || !fixed)
}
