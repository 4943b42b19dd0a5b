package connector

import (
	"errors"
	"flag"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/climesh/climesh/config/field"
	"github.com/climesh/climesh/session/jsonrpc"
)

// Config is climesh-connect's whole configuration: every flag and environment
// variable, in one typed value. Load fills it, Validate checks it, Options hands
// the per-connection part to Serve.
//
// Each setting comes from, first to last: its flag, its environment variable (an
// empty value counts as unset), its default. A flag given on the command line wins
// even over a malformed variable, which is then not read.
type Config struct {
	EdgeURL     string        // --edge, CLIMESH_EDGE: ws:// or wss:// URL of the edge's tunnel
	Token       string        // --token, CLIMESH_TOKEN: bearer token (TCP mode: for SDKs that send none)
	User        string        // --user, CLIMESH_USER: x-climesh-user, for edges that trust client headers
	TokenAsUser bool          // --token-as-user, CLIMESH_TOKEN_AS_USER: each connection's token is its user too
	Session     string        // --session, CLIMESH_SESSION: the shared session to join
	LockWait    time.Duration // --lock-wait, CLIMESH_LOCK_WAIT: wait for a busy shared session (0: fail busy)
	Reconnect   time.Duration // --reconnect, CLIMESH_RECONNECT: how long to regain a lost tunnel (0: give up)

	Listen        string // --listen: TCP mode on host:port; empty: stdio
	MetricsListen string // --metrics-listen: Prometheus /metrics on host:port; empty: none
	MaxFrameBytes int    // --max-frame-bytes: largest JSON-RPC message
}

// DefaultReconnect is how long a lost tunnel is retried when nothing says otherwise.
const DefaultReconnect = time.Minute

// DefaultConfig is the Config with no flag and no environment variable.
func DefaultConfig() Config {
	return Config{Reconnect: DefaultReconnect, MaxFrameBytes: jsonrpc.DefaultLimits.MaxFrameBytes}
}

// sdkFlags are what the Copilot SDK passes to what it believes is the CLI:
// accepted and ignored.
var (
	sdkBoolFlags   = []string{"headless", "no-auto-update", "stdio", "no-auto-login", "remote"}
	sdkStringFlags = []string{"log-level", "auth-token-env", "session-idle-timeout", "port"}
)

// setting is one of climesh-connect's flags and, where env is set, the
// environment variable it falls back to: one row per setting, so that a flag and
// its variable cannot drift apart.
type setting struct {
	flag, env string
	value     flag.Value
	usage     string
}

// settings binds every setting to c's fields.
func (c *Config) settings() []setting {
	return []setting{
		{"edge", "CLIMESH_EDGE", field.String(&c.EdgeURL), "edge tunnel `URL`, e.g. ws://127.0.0.1:10000/v1/rpc"},
		{"token", "CLIMESH_TOKEN", field.String(&c.Token), "caller's bearer `token`; in TCP mode the SDK's connect token wins"},
		{"user", "CLIMESH_USER", field.String(&c.User), "x-climesh-`user` for edges that trust client headers"},
		{"token-as-user", "CLIMESH_TOKEN_AS_USER", field.Bool(&c.TokenAsUser), "send each connection's token as x-climesh-user too: development edges that trust client headers and verify no JWT"},
		{"session", "CLIMESH_SESSION", field.String(&c.Session), "shared-session `name`"},
		{"lock-wait", "CLIMESH_LOCK_WAIT", field.Duration(&c.LockWait), "shared sessions: wait up to this `duration` for another member's turn instead of failing busy"},
		{"reconnect", "CLIMESH_RECONNECT", field.Duration(&c.Reconnect), "when a tunnel is lost, keep trying for this `duration` to regain it and resume the sessions (0: give up at once)"},
		{"listen", "", field.String(&c.Listen), "TCP mode: accept SDK connections on `host:port` (default: stdio)"},
		{"metrics-listen", "", field.String(&c.MetricsListen), "serve Prometheus /metrics on `host:port` (reconnects)"},
		{"max-frame-bytes", "", field.Int(&c.MaxFrameBytes), "largest JSON-RPC message, in `bytes`"},
	}
}

// FlagSet returns climesh-connect's flags bound to c's fields, each defaulting to
// c's current value (use it on DefaultConfig() to list the flags). Its output is
// discarded: Load returns errors, and callers print the usage themselves.
func (c *Config) FlagSet() *flag.FlagSet { return flagSet(c.settings()) }

// flagSet declares each setting's flag, and the SDK's flags it ignores.
func flagSet(settings []setting) *flag.FlagSet {
	fs := field.NewFlagSet("climesh-connect")
	for _, s := range settings {
		usage := s.usage
		if s.env != "" {
			usage += " (env " + s.env + ")"
		}
		fs.Var(s.value, s.flag, usage)
	}
	for _, b := range sdkBoolFlags {
		fs.Bool(b, false, "ignored (passed by the Copilot SDK)")
	}
	for _, s := range sdkStringFlags {
		fs.String(s, "", "ignored (passed by the Copilot SDK)")
	}
	return fs
}

// Load fills a Config from args (the command line without the program name)
// and env (os.LookupEnv in main): each setting takes its flag if given, else its
// CLIMESH_* variable if set and not empty, else DefaultConfig's value. The first
// flag or variable that does not parse is returned as an error naming it and its
// value; -h is flag.ErrHelp. Validate is the caller's next step.
func Load(args []string, env func(string) (string, bool)) (Config, error) {
	c := DefaultConfig()
	settings := c.settings()
	fs := flagSet(settings)
	if err := field.Parse(fs, args); err != nil {
		return Config{}, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, s := range settings {
		if v, ok := env(s.env); s.env != "" && ok && v != "" && !given[s.flag] {
			if err := s.value.Set(v); err != nil {
				return Config{}, &field.Error{Name: s.env, Value: v, Kind: field.ErrMalformed, Reason: err.Error()}
			}
		}
	}
	return c, nil
}

// Options are the settings every connection is served with.
func (c Config) Options(events *Events) Options {
	return Options{EdgeURL: c.EdgeURL, Token: c.Token, User: c.User, TokenAsUser: c.TokenAsUser,
		Session: c.Session, LockWait: c.LockWait, Reconnect: c.Reconnect, Events: events,
		Limits: jsonrpc.Limits{MaxHeaderBytes: jsonrpc.DefaultLimits.MaxHeaderBytes, MaxFrameBytes: c.MaxFrameBytes}}
}

// Validate refuses what cannot work or contradicts itself, naming each flag (and
// its environment variable) at fault; every error is joined in the result.
func (c Config) Validate() error {
	var errs []error
	bad := func(name, value string, kind error, reason string) {
		errs = append(errs, &field.Error{Name: name, Value: value, Kind: kind, Reason: reason})
	}
	const edge = "--edge/CLIMESH_EDGE"
	if c.EdgeURL == "" {
		bad(edge, "", field.ErrRequired, "required: the edge's tunnel URL, ws://host:10000/v1/rpc")
	} else if u, err := url.Parse(c.EdgeURL); err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		bad(edge, c.EdgeURL, field.ErrMalformed, "want a ws:// or wss:// URL with a host, e.g. ws://host:10000/v1/rpc")
	}
	if strings.ContainsFunc(c.Token, isCtl) {
		bad("--token/CLIMESH_TOKEN", "", field.ErrMalformed, "contains a control character (a trailing newline?)")
	}
	if strings.ContainsFunc(c.User, isCtl) {
		bad("--user/CLIMESH_USER", c.User, field.ErrMalformed, "contains a control character")
	}
	if strings.ContainsFunc(c.Session, isCtl) {
		bad("--session/CLIMESH_SESSION", c.Session, field.ErrMalformed, "contains a control character")
	}
	if c.TokenAsUser && c.User != "" {
		bad("--token-as-user/CLIMESH_TOKEN_AS_USER", "", field.ErrConflict, "excludes --user/CLIMESH_USER, which names the user already")
	}
	if c.TokenAsUser && c.Token == "" && c.Listen == "" {
		bad("--token-as-user/CLIMESH_TOKEN_AS_USER", "", field.ErrRequired, "in stdio mode it needs --token/CLIMESH_TOKEN (in TCP mode, --listen, the SDK's connect token is used)")
	}
	if c.LockWait < 0 {
		bad("--lock-wait/CLIMESH_LOCK_WAIT", c.LockWait.String(), field.ErrOutOfRange, "negative (want 0 to fail busy at once, or more)")
	}
	if c.Reconnect < 0 {
		bad("--reconnect/CLIMESH_RECONNECT", c.Reconnect.String(), field.ErrOutOfRange, "negative (want 0 to give up at once, or more)")
	}
	if c.MaxFrameBytes <= 0 {
		bad("--max-frame-bytes", strconv.Itoa(c.MaxFrameBytes), field.ErrOutOfRange, "want a positive number of bytes")
	}
	if c.Listen != "" && !hostPort(c.Listen) {
		bad("--listen", c.Listen, field.ErrMalformed, "want host:port, e.g. 127.0.0.1:4321")
	}
	if c.MetricsListen != "" && !hostPort(c.MetricsListen) {
		bad("--metrics-listen", c.MetricsListen, field.ErrMalformed, "want host:port, e.g. 127.0.0.1:9100")
	}
	if c.Listen != "" && c.Listen == c.MetricsListen && !strings.HasSuffix(c.Listen, ":0") {
		bad("--metrics-listen", c.MetricsListen, field.ErrConflict, "the same address as --listen")
	}
	return errors.Join(errs...)
}

// hostPort reports whether s is host:port with a numeric port (host may be empty:
// every interface).
func hostPort(s string) bool {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	_, err = strconv.ParseUint(port, 10, 16)
	return err == nil
}

// isCtl reports a character no HTTP header value may hold.
func isCtl(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }
