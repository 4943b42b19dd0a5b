package field

import (
	"flag"
	"strings"
	"testing"
	"time"
)

func TestValues(t *testing.T) {
	var (
		s string
		b bool
		d time.Duration
		n int
	)
	fs := NewFlagSet("t")
	fs.Var(String(&s), "s", "")
	fs.Var(Bool(&b), "b", "")
	fs.Var(Duration(&d), "d", "")
	fs.Var(Int(&n), "n", "")
	if err := Parse(fs, []string{"-s", "x", "-b", "-d", "90s", "-n", "7"}); err != nil {
		t.Fatal(err)
	}
	if s != "x" || !b || d != 90*time.Second || n != 7 {
		t.Fatalf("parsed s=%q b=%v d=%v n=%d", s, b, d, n)
	}
	for name, bad := range map[string]string{"b": "yes", "d": "90", "n": "seven"} {
		err := fs.Set(name, bad)
		if err == nil || !strings.HasPrefix(err.Error(), "not a ") {
			t.Errorf("-%s=%s: %v, want an error saying what was wanted", name, bad, err)
		}
	}
	if n != 7 || d != 90*time.Second {
		t.Errorf("a refused value changed its field: d=%v n=%d", d, n)
	}
	// Defaults print as the flag package prints its own (zero ones not at all).
	var out strings.Builder
	fs2 := flag.NewFlagSet("t", flag.ContinueOnError)
	fs2.SetOutput(&out)
	d2 := time.Minute
	var zero time.Duration
	fs2.Var(Duration(&d2), "minute", "")
	fs2.Var(Duration(&zero), "zero", "")
	fs2.PrintDefaults()
	if !strings.Contains(out.String(), "(default 1m0s)") || strings.Count(out.String(), "default") != 1 {
		t.Errorf("defaults:\n%s", out.String())
	}
}
