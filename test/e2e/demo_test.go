package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/test/harness"
)

// TestDemoSelfCheck runs the README's demo command in its self-check mode: the
// embedded config, a real Envoy, and sticky users (the self-check fails unless each
// user's sessions on two connections ran on one instance and the users used at
// least two instances).
func TestDemoSelfCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	root, err := harness.Root()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "./tools/demo", "--self-check")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "self-check ok") {
		t.Fatalf("demo: %v\n%s", err, out)
	}
}
