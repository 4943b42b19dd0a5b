// Package fieldtest holds the checks every typed config's tests share.
package fieldtest

import (
	"errors"
	"flag"
	"strings"
	"testing"
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
