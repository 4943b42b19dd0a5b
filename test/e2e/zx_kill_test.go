package e2e

// This file sorts late, before the drain test: it kills one "durable" CLI.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/test/harness"
)

// childCLI finds the CLI a sidecar runs (its child, in its own process group).
func childCLI(t *testing.T, sidecarPID int) int {
	t.Helper()
	pid, err := harness.ChildPID(sidecarPID)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestCLIKilled: one CLI of a shared-storage pool is killed with SIGKILL while its
// users' turns run. The instance leaves routing at once, each lost turn is
// reported to its app, every user's next turn succeeds with its history, and the
// sidecar brings a new CLI up and rejoins.
func TestCLIKilled(t *testing.T) {
	env := startMesh(t)
	defer dumpSidecars(t, env, "durable")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	all, victim, hit := env.durableUsers(ctx, t, "kil", 9)
	var mu sync.Mutex
	told := map[string][]string{} // what each user's app was told by session.error
	for _, u := range hit {
		t.Logf("%s's session is on %s", u.name, victim)
		u.session.On(func(ev copilot.SessionEvent) {
			if d, ok := ev.Data.(*copilot.SessionErrorData); ok {
				mu.Lock()
				told[u.name] = append(told[u.name], d.Message)
				mu.Unlock()
			}
		})
	}
	defer func() {
		if t.Failed() {
			mu.Lock()
			t.Logf("session.error events by user: %q", told)
			mu.Unlock()
		}
	}()
	lost := env.slowTurns(ctx, t, hit, 20000)
	cliPID := childCLI(t, env.Sidecars[victim].Proc.Pid())
	killed := time.Now()
	syscall.Kill(-cliPID, syscall.SIGKILL)

	// Out of routing, within the bound (the sidecar fails its check at once).
	err := harness.Poll(ctx, 10*time.Millisecond, func() error {
		hosts, err := env.Envoy.Hosts("pool/durable")
		if err != nil {
			return err
		}
		for _, h := range hosts {
			if h.Hostname == victim && h.Health == "HEALTHY" {
				return fmt.Errorf("still healthy")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out := time.Since(killed)
	t.Logf("%s left routing %s after its CLI was killed", victim, out.Round(time.Millisecond))
	if out > 5*time.Second {
		t.Fatalf("left routing after %v, bound 5s", out)
	}
	// A turn in flight at the kill ends, one way or the other, and never hangs:
	// reported lost (session.error from climesh-connect), or completed by the
	// instance that resumed the session (the user message was already persisted).
	reported, completed := 0, 0
	for range hit {
		switch err := (<-lost).err; {
		case err == nil:
			completed++
		case strings.Contains(err.Error(), "lost"):
			reported++
		default:
			t.Errorf("a turn in flight at the kill ended with %v", err)
		}
	}
	t.Logf("turns in flight at the kill: %d reported lost, %d completed after the resume", reported, completed)
	for _, u := range all {
		text, err := ownTurn(ctx, u.session, "after the kill "+u.name)
		if err != nil || !strings.Contains(text, "first: first of "+u.name) {
			t.Fatalf("%s after the kill: %q %v", u.name, text, err)
		}
	}
	// The sidecar restarted its CLI and the instance is back.
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		hosts, err := env.Envoy.Hosts("pool/durable")
		if err != nil {
			return err
		}
		for _, h := range hosts {
			if h.Hostname == victim && h.Health == "HEALTHY" {
				return nil
			}
		}
		return fmt.Errorf("%s not back", victim)
	})
	if err != nil {
		t.Fatal(err)
	}
	if childCLI(t, env.Sidecars[victim].Proc.Pid()) == cliPID {
		t.Fatal("the same CLI pid: nothing was restarted")
	}
	metrics := sidecarMetrics(t, env.Sidecars[victim].AdminPort)
	if metricValue(metrics, "climesh_sidecar_cli_restarts_total") < 1 || metricValue(metrics, "climesh_sidecar_turn_seconds_count") < 1 {
		t.Fatalf("the sidecar's metrics miss the restart or its turns:\n%s", grepLines(metrics, "climesh_sidecar_"))
	}
}

func sidecarMetrics(t *testing.T, port int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricValue sums the samples of name (any labels) in a Prometheus text page.
func metricValue(page, name string) float64 {
	total := 0.0
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
		}
	}
	return total
}
