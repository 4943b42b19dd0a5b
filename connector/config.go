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

// FlagSet returns climesh-connect's flags bound to c's fields, each defaulting to
// c's current value (use it on DefaultConfig() to list the flags). Its output is
// discarded: Load returns errors, and callers print the usage themselves.
func (c *Config) FlagSet() *flag.FlagSet {
	fs := field.NewFlagSet("climesh-connect")
	fs.StringVar(&c.EdgeURL, "edge", c.EdgeURL, "edge tunnel `URL` (env CLIMESH_EDGE), e.g. ws://127.0.0.1:10000/v1/rpc")
	fs.StringVar(&c.Token, "token", c.Token, "caller's bearer `token` (env CLIMESH_TOKEN); in TCP mode the SDK's connect token wins")
	fs.StringVar(&c.User, "user", c.User, "x-climesh-`user` for edges that trust client headers (env CLIMESH_USER)")
	fs.BoolVar(&c.TokenAsUser, "token-as-user", c.TokenAsUser, "send each connection's token as x-climesh-user too: development edges that trust client headers and verify no JWT (env CLIMESH_TOKEN_AS_USER, a boolean)")
	fs.StringVar(&c.Session, "session", c.Session, "shared-session `name` (env CLIMESH_SESSION)")
	fs.DurationVar(&c.LockWait, "lock-wait", c.LockWait, "shared sessions: wait this long for another member's turn instead of failing busy (env CLIMESH_LOCK_WAIT)")
	fs.DurationVar(&c.Reconnect, "reconnect", c.Reconnect, "when a tunnel is lost, keep trying this long to regain it and resume the sessions (0: give up at once; env CLIMESH_RECONNECT)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "TCP mode: accept SDK connections on `host:port` (default: stdio)")
	fs.StringVar(&c.MetricsListen, "metrics-listen", c.MetricsListen, "serve Prometheus /metrics on `host:port` (reconnects)")
	fs.IntVar(&c.MaxFrameBytes, "max-frame-bytes", c.MaxFrameBytes, "largest JSON-RPC message")
	for _, b := range sdkBoolFlags {
		fs.Bool(b, false, "ignored (passed by the Copilot SDK)")
	}
	for _, s := range sdkStringFlags {
		fs.String(s, "", "ignored (passed by the Copilot SDK)")
	}
	return fs
}

// envVars are the environment variables, each with the flag that overrides it.
var envVars = []struct {
	name, flag string
	set        func(c *Config, v string) error
}{
	{"CLIMESH_EDGE", "edge", func(c *Config, v string) error { c.EdgeURL = v; return nil }},
	{"CLIMESH_TOKEN", "token", func(c *Config, v string) error { c.Token = v; return nil }},
	{"CLIMESH_USER", "user", func(c *Config, v string) error { c.User = v; return nil }},
	{"CLIMESH_TOKEN_AS_USER", "token-as-user", func(c *Config, v string) (err error) { c.TokenAsUser, err = parseBool(v); return err }},
	{"CLIMESH_SESSION", "session", func(c *Config, v string) error { c.Session = v; return nil }},
	{"CLIMESH_LOCK_WAIT", "lock-wait", func(c *Config, v string) (err error) { c.LockWait, err = parseDuration(v); return err }},
	{"CLIMESH_RECONNECT", "reconnect", func(c *Config, v string) (err error) { c.Reconnect, err = parseDuration(v); return err }},
}

func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errors.New("not a boolean (want 1, t, true, 0, f or false)")
	}
	return b, nil
}

func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New("not a duration (want e.g. 90s or 5m)")
	}
	return d, nil
}

// Load reads the command line (args, without the program name) and the
// environment (env is os.LookupEnv in main) over DefaultConfig: flags override
// environment variables, which override defaults. It reports the first flag or
// variable it cannot parse, naming it and its value, and flag.ErrHelp for -h. It
// does not validate: call Validate.
func Load(args []string, env func(string) (string, bool)) (Config, error) {
	c := DefaultConfig()
	fs := c.FlagSet()
	if err := field.Parse(fs, args); err != nil {
		return Config{}, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, e := range envVars {
		v, ok := env(e.name)
		if !ok || v == "" || given[e.flag] {
			continue
		}
		if err := e.set(&c, v); err != nil {
			return Config{}, &field.Error{Name: e.name, Value: v, Kind: field.ErrMalformed, Reason: err.Error()}
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
