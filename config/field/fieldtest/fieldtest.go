// Package fieldtest holds the checks every typed config's tests share.
package fieldtest

import (
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/climesh/climesh/config/field"
)

// Refusal is arguments a command must refuse, and what its error must name.
type Refusal struct {
	Args []string
	Want string
}

// LoadRefuses runs load on each refusal (no environment) and on -h: each must
// fail naming what it wants, and -h must be flag.ErrHelp.
func LoadRefuses(t *testing.T, load func(args []string) error, cases map[string]Refusal) {
	t.Helper()
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if err := load(tc.Args); err == nil || !strings.Contains(err.Error(), tc.Want) {
				t.Fatalf("Load(%q) = %v; want an error naming %s", tc.Args, err, tc.Want)
			}
		})
	}
	if err := load([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("Load(-h) = %v, want flag.ErrHelp", err)
	}
}

// Env is a fake environment for a config's Load (what os.LookupEnv is in main).
func Env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

// Case is one edit of a valid config and what Validate must then say: nothing
// (Name "") or exactly one error naming Name, of Kind.
type Case[C any] struct {
	Edit func(*C)
	Name string
	Kind error
}

// ValidateCases runs Validate on base() edited by each case. secret is what no
// error may show (a token the config holds), or nil.
func ValidateCases[C interface{ Validate() error }](t *testing.T, base func() C, secret func(C) string, cases map[string]Case[C]) {
	t.Helper()
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := base()
			if tc.Edit != nil {
				tc.Edit(&c)
			}
			err := c.Validate()
			if tc.Name == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			s := ""
			if secret != nil {
				s = secret(c)
			}
			if problem := field.Single(err, tc.Name, tc.Kind, s); problem != "" {
				t.Error(problem)
			}
		})
	}
}
