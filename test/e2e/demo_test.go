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
// embedded config in the production shape (JWT at the edge, the built-in policy in
// ext_authz and in every sidecar), a real Envoy, and
//   - sticky users: each user's sessions on two connections ran on one instance,
//     and the users used at least two instances;
//   - alice's chat through the chat-server keeps its history;
//   - bob, with his own token, naming alice's session is refused by the policy,
//     and alice's chat goes on after that.
//
// The self-check fails on any of these; the test also wants the refusal in its
// output, so that a demo that stops checking it cannot pass.
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
	if !strings.Contains(string(out), "bob on alice's chat: REFUSED 403") || !strings.Contains(string(out), "access denied: no such session for this caller") {
		t.Fatalf("the demo's self-check did not show bob refused on alice's chat:\n%s", out)
	}
}
