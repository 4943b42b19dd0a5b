// Package field is how climesh's binaries report bad flags and environment
// variables: one error per setting, naming it, its value (never a secret's) and
// why, all of them joined — and the shared start of a command that loads,
// validates and runs its typed config (bad input exits 2, failures 1).
package field

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Kinds of configuration error, matched with errors.Is. They are the xds-server
// config's kinds too (package config aliases them): one vocabulary for every binary.
var (
	ErrRequired   = errors.New("required")
	ErrMalformed  = errors.New("malformed")
	ErrOutOfRange = errors.New("out of range")
	ErrConflict   = errors.New("conflicting fields")
)

// Error names the flag or variable at fault, its value and why.
type Error struct {
	Name   string // "--mode", "--edge/CLIMESH_EDGE", "COPILOT_CONNECTION_TOKEN"
	Value  string // quoted in the message; empty: not shown (a secret, or nothing given)
	Kind   error  // one of the Err kinds
	Reason string
}

func (e *Error) Error() string {
	if e.Value == "" {
		return e.Name + ": " + e.Reason
	}
	return e.Name + "=" + strconv.Quote(e.Value) + ": " + e.Reason
}

func (e *Error) Unwrap() error { return e.Kind }

// Errors collects a Validate's findings.
type Errors []error

// Add records one.
func (es *Errors) Add(name, value string, kind error, reason string) {
	*es = append(*es, &Error{Name: name, Value: value, Kind: kind, Reason: reason})
}

// Err joins them (nil when there are none).
func (es Errors) Err() error { return errors.Join(es...) }

// NewFlagSet is a typed config's flag set: errors returned, not printed (the
// command prints them with its usage, and exits 2).
func NewFlagSet(prog string) *flag.FlagSet {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// Parse parses args with fs and refuses what is left over: a typed config's
// command takes flags only.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if rest := fs.Args(); len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q: %s takes flags only", rest[0], fs.Name())
	}
	return nil
}

// Validator is a typed config.
type Validator interface{ Validate() error }

// Main starts command prog: load (flags and environment), Validate, run. -h
// prints the usage line, about and the flags (defaults' flag set) and exits 0;
// bad input prints every error, one per line, and exits 2; a failure of run
// exits 1.
func Main[C Validator](prog, about string, defaults func() *flag.FlagSet, load func() (C, error), run func(C) error) {
	cfg, err := load()
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "usage: %s [flags]\n%s\n", prog, about)
		fs := defaults()
		fs.SetOutput(os.Stderr)
		fs.PrintDefaults()
		os.Exit(0)
	}
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(os.Stderr, prog+":", line)
		}
		fmt.Fprintf(os.Stderr, "%s: see %s -h\n", prog, prog)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, prog+":", err)
		os.Exit(1)
	}
}

// Single says what is wrong with err as a Validate's answer to one bad setting:
// it must be exactly one Error, of kind, naming name first, and not show secret
// (if set). "" means it is right. Typed configs' tests share it.
func Single(err error, name string, kind error, secret string) string {
	var fe *Error
	switch {
	case !errors.As(err, &fe) || fe.Name != name || !errors.Is(err, kind):
		return fmt.Sprintf("Validate = %v; want %v naming %s", err, kind, name)
	case strings.Contains(err.Error(), "\n"):
		return fmt.Sprintf("Validate = %v; want only the error naming %s", err, name)
	case !strings.HasPrefix(err.Error(), name):
		return fmt.Sprintf("message %q does not start with %s", err, name)
	case secret != "" && strings.Contains(err.Error(), secret):
		return fmt.Sprintf("message %q shows the secret", err)
	}
	return ""
}
