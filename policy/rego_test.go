package policy

import (
	"context"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/tester"
)

// TestShippedPolicies runs every _test.rego under policies/rego through OPA's
// tester, as `opa test policies/rego` would.
func TestShippedPolicies(t *testing.T) {
	modules, store, err := tester.Load([]string{"../policies/rego"}, nil)
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
	if n < 10 {
		t.Fatalf("ran %d Rego tests; the shipped policies have more", n)
	}
}
