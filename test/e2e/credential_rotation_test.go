package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/test/harness"
)

// TestEdgeCredentialRotatesLive: the sidecars read --edge-credential-file again
// while they run and accept every credential it lists, so that the credential
// rotates with no tunnel refused: the new one is added (both accepted), then
// the old one dropped (the new one alone accepted) — no restart.
func TestEdgeCredentialRotatesLive(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// A pool of its own with a credential file of its own (the flag given last
	// wins): the mesh's other sidecars keep theirs whatever this test writes.
	file := filepath.Join(t.TempDir(), "edge-credential")
	if err := os.WriteFile(file, []byte(harness.MeshCredential+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := env.startPool(ctx, t, "rotate", harness.PoolOptions{Instances: 1, Extra: []string{"--edge-credential-file", file}})
	sc := pool.Sidecars["rotate-0"]
	url := fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", sc.Port)
	const next = "the-next-edge-credential-0123456789"
	status := func(cred string) int {
		code, _ := upgradeStatus(t, url, http.Header{"X-Climesh-Edge-Credential": {cred},
			"X-Climesh-Identity": {env.Assertion("rotor", "rotate", time.Minute)}})
		return code
	}
	// wait polls until old and next get what want says (101: accepted).
	wait := func(step string, want map[string]int) {
		t.Helper()
		err := harness.Poll(ctx, 50*time.Millisecond, func() error {
			for cred, code := range want {
				if got := status(cred); got != code {
					return fmt.Errorf("%s: credential %.8s… answered %d, want %d", step, cred, got, code)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	wait("before", map[string]int{harness.MeshCredential: 101, next: 401})
	if err := os.WriteFile(file, []byte(harness.MeshCredential+"\n"+next+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wait("both listed", map[string]int{harness.MeshCredential: 101, next: 101})
	if err := os.WriteFile(file, []byte(next+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wait("old dropped", map[string]int{harness.MeshCredential: 401, next: 101})
	// A broken file (a placeholder) is refused: the last good set stays. The
	// watcher has read it once it says so in the log.
	if err := os.WriteFile(file, []byte("REPLACE-me-with-a-real-credential\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(ctx, 50*time.Millisecond, func() error {
		if !strings.Contains(sc.Proc.Tail(20), "keeping the credentials it held") {
			return fmt.Errorf("the sidecar has not read the broken file yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wait("broken file", map[string]int{harness.MeshCredential: 401, next: 101})
}
