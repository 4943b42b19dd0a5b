package policy

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/tester"
)

// runRegoTests runs the _test.rego files among paths through OPA's tester and
// returns how many ran.
func runRegoTests(t *testing.T, paths []string) int {
	t.Helper()
	modules, store, err := tester.Load(paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := tester.NewRunner().SetStore(store).Run(context.Background(), modules)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for r := range ch {
		n++
		if r.Fail || r.Error != nil {
			t.Errorf("%s.%s: fail=%v error=%v %s", r.Package, r.Name, r.Fail, r.Error, strings.TrimSpace(string(r.Output)))
		}
	}
	return n
}

// TestRegoExamples runs each examples/rego/<pattern> (its data and tests) against
// the shipped policies, as `opa test policies/rego/edge.rego
// policies/rego/session.rego examples/rego/<pattern>` would.
func TestRegoExamples(t *testing.T) {
	dirs, err := filepath.Glob("../examples/rego/*/data.json")
	if err != nil || len(dirs) < 3 {
		t.Fatalf("want the three pattern examples, found %v (%v)", dirs, err)
	}
	for _, data := range dirs {
		dir := filepath.Dir(data)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			if n := runRegoTests(t, []string{"../policies/rego/edge.rego", "../policies/rego/session.rego", dir}); n < 3 {
				t.Fatalf("ran %d Rego tests in %s", n, dir)
			}
		})
	}
}

// TestShippedPolicies runs every _test.rego under policies/rego through OPA's
// tester, as `opa test policies/rego` would.
func TestShippedPolicies(t *testing.T) {
	if n := runRegoTests(t, []string{"../policies/rego"}); n < 10 {
		t.Fatalf("ran %d Rego tests; the shipped policies have more", n)
	}
}
