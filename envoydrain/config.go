package envoydrain

import (
	"errors"
	"flag"
	"net/url"
	"time"

	"github.com/climesh/climesh/config/field"
)

// Config is climesh-envoy-drain's whole configuration.
type Config struct {
	Admin    string        // --admin: Envoy's admin base URL
	Listen   string        // --listen: serve GET /shutdown here (the pod's preStop); empty: drain once and exit
	Timeout  time.Duration // --timeout: longest wait for open connections
	Poll     time.Duration // --poll: how often they are counted
	MinDrain time.Duration // --min-drain: the least time a drain takes
}

// DefaultConfig is the Config with no flag.
func DefaultConfig() Config {
	return Config{Admin: "http://127.0.0.1:9901", Timeout: 100 * time.Second, Poll: time.Second}
}

// FlagSet binds the flags to c's fields, each defaulting to c's current value.
func (c *Config) FlagSet() *flag.FlagSet {
	fs := field.NewFlagSet("climesh-envoy-drain")
	fs.StringVar(&c.Admin, "admin", c.Admin, "Envoy's admin `URL` (the pod's loopback)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "serve GET /shutdown on `host:port` for Envoy's preStop hook (a shutdown-manager container); empty: drain once now and exit")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "longest wait for open connections after the drain began (keep it under the pod's terminationGracePeriodSeconds)")
	fs.DurationVar(&c.Poll, "poll", c.Poll, "how often the open connections are counted")
	fs.DurationVar(&c.MinDrain, "min-drain", c.MinDrain, "the least time a drain takes, connections or not, while a load balancer may still send new ones (at most --timeout)")
	return fs
}

// Load reads the command line over DefaultConfig.
func Load(args []string) (Config, error) {
	c := DefaultConfig()
	if err := field.Parse(c.FlagSet(), args); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate names each flag at fault.
func (c Config) Validate() error {
	var errs field.Errors
	if u, err := url.Parse(c.Admin); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs.Add("--admin", c.Admin, field.ErrMalformed, "want an http:// URL, e.g. http://127.0.0.1:9901")
	}
	if c.Timeout <= 0 {
		errs.Add("--timeout", c.Timeout.String(), field.ErrOutOfRange, "want a positive duration")
	}
	if c.MinDrain < 0 || c.MinDrain > c.Timeout {
		errs.Add("--min-drain", c.MinDrain.String(), field.ErrOutOfRange, "want 0 to --timeout")
	}
	if c.Poll <= 0 {
		errs.Add("--poll", c.Poll.String(), field.ErrOutOfRange, "want a positive duration")
	}
	return errors.Join(errs...)
}
