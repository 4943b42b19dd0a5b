package connector

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/config/field"
	"github.com/climesh/climesh/config/field/fieldtest"
	"github.com/climesh/climesh/session/jsonrpc"
)

// withDefaults is DefaultConfig changed by edit.
func withDefaults(edit func(*Config)) Config {
	c := DefaultConfig()
	if edit != nil {
		edit(&c)
	}
	return c
}

// TestLoadEnv sets each variable alone, to good and bad values.
func TestLoadEnv(t *testing.T) {
	type value struct {
		in   string
		want func(*Config) // nil: Load refuses in
	}
	cases := map[string][]value{
		"CLIMESH_EDGE":    {{"ws://edge:10000/v1/rpc", func(c *Config) { c.EdgeURL = "ws://edge:10000/v1/rpc" }}},
		"CLIMESH_TOKEN":   {{"alice-token", func(c *Config) { c.Token = "alice-token" }}},
		"CLIMESH_USER":    {{"alice", func(c *Config) { c.User = "alice" }}},
		"CLIMESH_SESSION": {{"team-room", func(c *Config) { c.Session = "team-room" }}},
		"CLIMESH_TOKEN_AS_USER": {
			{"1", func(c *Config) { c.TokenAsUser = true }},
			{"true", func(c *Config) { c.TokenAsUser = true }},
			{"TRUE", func(c *Config) { c.TokenAsUser = true }},
			// Equal to the default, but checked: "false" once turned the option on.
			{"0", func(c *Config) { c.TokenAsUser = false }},
			{"false", func(c *Config) { c.TokenAsUser = false }},
			{"yes", nil},
			{"on", nil},
		},
		"CLIMESH_LOCK_WAIT": {
			{"30s", func(c *Config) { c.LockWait = 30 * time.Second }},
			{"1m30s", func(c *Config) { c.LockWait = 90 * time.Second }},
			{"0", func(c *Config) { c.LockWait = 0 }},
			{"30", nil},
			{"half a minute", nil},
		},
		"CLIMESH_RECONNECT": {
			{"5m", func(c *Config) { c.Reconnect = 5 * time.Minute }},
			{"0s", func(c *Config) { c.Reconnect = 0 }},
			{"-1s", func(c *Config) { c.Reconnect = -time.Second }}, // parses; Validate refuses it
			{"5 minutes", nil},
			{"60", nil},
		},
	}
	c := DefaultConfig()
	for _, s := range c.settings() {
		if s.env != "" && len(cases[s.env]) == 0 {
			t.Errorf("%s: no test values", s.env)
		}
	}
	for name, values := range cases {
		for _, v := range values {
			t.Run(name+"="+v.in, func(t *testing.T) {
				got, err := Load(nil, fieldtest.Env(map[string]string{name: v.in}))
				if v.want == nil {
					var fe *field.Error
					if !errors.As(err, &fe) || fe.Name != name || fe.Value != v.in || !errors.Is(err, field.ErrMalformed) {
						t.Fatalf("Load = %+v, %v; want a malformed-value error naming %s=%q", got, err, name, v.in)
					}
					if !strings.HasPrefix(err.Error(), name+"="+`"`+v.in+`": not a `) {
						t.Errorf("error %q does not start with the variable, its value and why", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if want := withDefaults(v.want); got != want {
					t.Errorf("Load =\n %+v\nwant\n %+v", got, want)
				}
			})
		}
	}
}

func TestLoadPrecedence(t *testing.T) {
	edge := "ws://edge:10000/v1/rpc"
	cases := map[string]struct {
		args []string
		env  map[string]string
		want func(*Config)
	}{
		"defaults": {want: nil},
		"environment over default": {
			env:  map[string]string{"CLIMESH_RECONNECT": "10s", "CLIMESH_EDGE": edge},
			want: func(c *Config) { c.Reconnect = 10 * time.Second; c.EdgeURL = edge },
		},
		"flag over environment": {
			args: []string{"--reconnect", "20s", "--edge", "wss://other/v1/rpc"},
			env:  map[string]string{"CLIMESH_RECONNECT": "10s", "CLIMESH_EDGE": edge},
			want: func(c *Config) { c.Reconnect = 20 * time.Second; c.EdgeURL = "wss://other/v1/rpc" },
		},
		"flag over a malformed variable, which is not read": {
			args: []string{"--reconnect=20s", "--token-as-user"},
			env:  map[string]string{"CLIMESH_RECONNECT": "5 minutes", "CLIMESH_TOKEN_AS_USER": "yes"},
			want: func(c *Config) { c.Reconnect = 20 * time.Second; c.TokenAsUser = true },
		},
		"false flag over a true variable": {
			args: []string{"--token-as-user=false"},
			env:  map[string]string{"CLIMESH_TOKEN_AS_USER": "1"},
			want: nil,
		},
		"a flag overrides only its own variable": {
			args: []string{"--token", "from-flag"},
			env:  map[string]string{"CLIMESH_TOKEN": "from-env", "CLIMESH_USER": "bob"},
			want: func(c *Config) { c.Token = "from-flag"; c.User = "bob" },
		},
		"empty variable counts as unset": {
			env:  map[string]string{"CLIMESH_RECONNECT": "", "CLIMESH_TOKEN_AS_USER": "", "CLIMESH_EDGE": ""},
			want: nil,
		},
		"flags without a variable": {
			args: []string{"--listen", "127.0.0.1:4321", "--metrics-listen", "127.0.0.1:9100", "--max-frame-bytes", "1024"},
			want: func(c *Config) { c.Listen, c.MetricsListen, c.MaxFrameBytes = "127.0.0.1:4321", "127.0.0.1:9100", 1024 },
		},
		"the SDK's flags are accepted and ignored": {
			args: []string{"--headless", "--no-auto-update", "--log-level", "info", "--stdio", "--auth-token-env", "X",
				"--no-auto-login", "--session-idle-timeout", "30", "--remote", "--port", "0"},
			want: nil,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := Load(tc.args, fieldtest.Env(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if want := withDefaults(tc.want); got != want {
				t.Errorf("Load =\n %+v\nwant\n %+v", got, want)
			}
		})
	}
}

func TestLoadRefusesArgs(t *testing.T) {
	fieldtest.LoadRefuses(t, func(args []string) error { _, err := Load(args, fieldtest.Env(nil)); return err }, map[string]fieldtest.Refusal{
		"unknown flag":          {Args: []string{"--edg", "ws://e/v1/rpc"}, Want: "-edg"},
		"bad duration flag":     {Args: []string{"--reconnect", "5 minutes"}, Want: "-reconnect"},
		"bad boolean flag":      {Args: []string{"--token-as-user=yes"}, Want: "-token-as-user"},
		"bad integer flag":      {Args: []string{"--max-frame-bytes", "8M"}, Want: "-max-frame-bytes"},
		"positional argument":   {Args: []string{"ws://e/v1/rpc"}, Want: `"ws://e/v1/rpc"`},
		"flag after positional": {Args: []string{"--edge", "ws://e/v1/rpc", "extra", "--listen", ":1"}, Want: `"extra"`},
	})
}

func TestValidate(t *testing.T) {
	base := func(c *Config) { c.EdgeURL = "ws://edge:10000/v1/rpc"; c.Token = "alice-token" }
	cases := map[string]fieldtest.Case[Config]{
		"base":                          {},
		"wss edge":                      {Edit: func(c *Config) { c.EdgeURL = "wss://edge.example/v1/rpc" }},
		"no token (the edge decides)":   {Edit: func(c *Config) { c.Token = "" }},
		"token-as-user with a token":    {Edit: func(c *Config) { c.TokenAsUser = true }},
		"token-as-user in TCP mode":     {Edit: func(c *Config) { c.TokenAsUser, c.Token, c.Listen = true, "", "127.0.0.1:4321" }},
		"zero durations":                {Edit: func(c *Config) { c.LockWait, c.Reconnect = 0, 0 }},
		"listen on every interface":     {Edit: func(c *Config) { c.Listen = ":4321" }},
		"listen and metrics on port 0":  {Edit: func(c *Config) { c.Listen, c.MetricsListen = "127.0.0.1:0", "127.0.0.1:0" }},
		"shared session with lock wait": {Edit: func(c *Config) { c.Session, c.LockWait = "team-room", 90*time.Second }},

		"no edge":              {Edit: func(c *Config) { c.EdgeURL = "" }, Name: "--edge/CLIMESH_EDGE", Kind: field.ErrRequired},
		"http edge":            {Edit: func(c *Config) { c.EdgeURL = "http://edge:10000/v1/rpc" }, Name: "--edge/CLIMESH_EDGE", Kind: field.ErrMalformed},
		"edge without scheme":  {Edit: func(c *Config) { c.EdgeURL = "edge:10000/v1/rpc" }, Name: "--edge/CLIMESH_EDGE", Kind: field.ErrMalformed},
		"edge without host":    {Edit: func(c *Config) { c.EdgeURL = "ws:///v1/rpc" }, Name: "--edge/CLIMESH_EDGE", Kind: field.ErrMalformed},
		"edge unparsable":      {Edit: func(c *Config) { c.EdgeURL = "ws://edge:port/v1/rpc" }, Name: "--edge/CLIMESH_EDGE", Kind: field.ErrMalformed},
		"token with newline":   {Edit: func(c *Config) { c.Token = "alice-token\n" }, Name: "--token/CLIMESH_TOKEN", Kind: field.ErrMalformed},
		"user with newline":    {Edit: func(c *Config) { c.User = "alice\r\nx-evil: 1" }, Name: "--user/CLIMESH_USER", Kind: field.ErrMalformed},
		"session with newline": {Edit: func(c *Config) { c.Session = "room\n" }, Name: "--session/CLIMESH_SESSION", Kind: field.ErrMalformed},
		"token-as-user without a token in stdio mode": {
			Edit: func(c *Config) { c.TokenAsUser, c.Token = true, "" }, Name: "--token-as-user/CLIMESH_TOKEN_AS_USER", Kind: field.ErrRequired},
		"token-as-user and user": {
			Edit: func(c *Config) { c.TokenAsUser, c.User = true, "bob" }, Name: "--token-as-user/CLIMESH_TOKEN_AS_USER", Kind: field.ErrConflict},
		"negative lock wait":       {Edit: func(c *Config) { c.LockWait = -time.Second }, Name: "--lock-wait/CLIMESH_LOCK_WAIT", Kind: field.ErrOutOfRange},
		"negative reconnect":       {Edit: func(c *Config) { c.Reconnect = -time.Second }, Name: "--reconnect/CLIMESH_RECONNECT", Kind: field.ErrOutOfRange},
		"zero frame size":          {Edit: func(c *Config) { c.MaxFrameBytes = 0 }, Name: "--max-frame-bytes", Kind: field.ErrOutOfRange},
		"negative frame size":      {Edit: func(c *Config) { c.MaxFrameBytes = -1 }, Name: "--max-frame-bytes", Kind: field.ErrOutOfRange},
		"listen without port":      {Edit: func(c *Config) { c.Listen = "127.0.0.1" }, Name: "--listen", Kind: field.ErrMalformed},
		"listen port not a number": {Edit: func(c *Config) { c.Listen = "127.0.0.1:http" }, Name: "--listen", Kind: field.ErrMalformed},
		"listen port too large":    {Edit: func(c *Config) { c.Listen = "127.0.0.1:65536" }, Name: "--listen", Kind: field.ErrMalformed},
		"metrics without port":     {Edit: func(c *Config) { c.MetricsListen = "localhost" }, Name: "--metrics-listen", Kind: field.ErrMalformed},
		"metrics on the listen address": {
			Edit: func(c *Config) { c.Listen, c.MetricsListen = "127.0.0.1:4321", "127.0.0.1:4321" }, Name: "--metrics-listen", Kind: field.ErrConflict},
	}
	fieldtest.ValidateCases(t, func() Config { return withDefaults(base) }, func(c Config) string { return strings.TrimSpace(c.Token) }, cases)
}

// TestValidateJoinsEveryError: one run names every field at fault.
func TestValidateJoinsEveryError(t *testing.T) {
	c := Config{EdgeURL: "http://edge", Reconnect: -1, LockWait: -1, Listen: "x"}
	err := c.Validate()
	for _, name := range []string{"--edge/CLIMESH_EDGE", "--reconnect/CLIMESH_RECONNECT", "--lock-wait/CLIMESH_LOCK_WAIT", "--listen", "--max-frame-bytes"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("Validate = %v; nothing names %s", err, name)
		}
	}
}

// TestFlagSet: each variable's flag's help names the variable, and the flags'
// defaults are DefaultConfig's.
func TestFlagSet(t *testing.T) {
	c := DefaultConfig()
	fs := c.FlagSet()
	for _, s := range c.settings() {
		if f := fs.Lookup(s.flag); s.env != "" && !strings.Contains(f.Usage, s.env) {
			t.Errorf("--%s: help %q does not name %s", s.flag, f.Usage, s.env)
		}
	}
	for flagName, want := range map[string]string{"reconnect": DefaultReconnect.String(), "max-frame-bytes": "8388608", "lock-wait": "0s", "token-as-user": "false", "edge": ""} {
		if got := fs.Lookup(flagName).DefValue; got != want {
			t.Errorf("--%s default %q, want %q", flagName, got, want)
		}
	}
}

func TestOptions(t *testing.T) {
	ev := &Events{}
	c := Config{EdgeURL: "ws://e/v1/rpc", Token: "t", User: "u", TokenAsUser: true, Session: "s",
		LockWait: time.Second, Reconnect: 2 * time.Second, Listen: ":1", MaxFrameBytes: 1024}
	got := c.Options(ev)
	want := Options{EdgeURL: "ws://e/v1/rpc", Token: "t", User: "u", TokenAsUser: true, Session: "s",
		LockWait: time.Second, Reconnect: 2 * time.Second, Events: ev,
		Limits: jsonrpc.Limits{MaxHeaderBytes: jsonrpc.DefaultLimits.MaxHeaderBytes, MaxFrameBytes: 1024}}
	if got != want {
		t.Errorf("Options =\n %+v\nwant\n %+v", got, want)
	}
}
