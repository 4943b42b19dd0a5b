package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
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

// TestCLIKilled: one CLI of a shared-storage pool is killed with SIGKILL while
// its users' turns are in flight (each reached the model before the kill). The
// instance leaves routing within the bound; each of those turns either
// completes after the kill (resumed elsewhere) or is reported to its app as
// lost — none ends silently; every user's next turn succeeds with its history;
// and the sidecar brings a new CLI up and rejoins.
func TestCLIKilled(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pool := env.startPool(ctx, t, "kill", harness.PoolOptions{Instances: 3, Extra: []string{"--log-level", "debug"}})
	all, victim, hit := env.poolUsers(ctx, t, pool, "kil", 9)
	t.Logf("killing the CLI of %s, which holds %d of 9 users' sessions", victim, len(hit))
	var mu sync.Mutex
	told := map[string][]string{} // what each user's app was told by session.error
	for _, u := range all {
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
	// The CLI writes events to disk shortly after they happen (debounced): wait
	// until every session's first turn is there, so that what the kill can take
	// is the turn in flight, not a session too young to be on disk (README, Drain
	// and session continuity).
	for _, u := range all {
		persisted(ctx, t, pool.Home, u.session.SessionID, "first of "+u.name)
	}
	lost := env.slowTurns(ctx, t, hit, 20000, time.Minute)
	cliPID := childCLI(t, pool.Sidecars[victim].Proc.Pid())
	killed := time.Now()
	if err := syscall.Kill(-cliPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	// Out of routing within the bound (the sidecar fails its check at once).
	err := harness.Poll(ctx, 10*time.Millisecond, func() error {
		if ok, err := env.routed(pool.Name, victim); err != nil || ok {
			return fmt.Errorf("still routed (%v)", err)
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
	// Each turn in flight at the kill ends one way or the other, after it.
	reported, completed := 0, 0
	for range hit {
		tr := <-lost
		switch {
		case !tr.atModel(killed):
			t.Errorf("%s: not at the model at the kill (%s): %s", tr.user, killed.Format("15:04:05.000000"), tr.timeline())
		case tr.err == nil && tr.ended.After(killed):
			completed++
		case tr.err != nil && strings.Contains(tr.err.Error(), "session error") && strings.Contains(tr.err.Error(), "lost"):
			reported++
		default:
			t.Errorf("%s: a turn in flight at the kill ended with %v: %s", tr.user, tr.err, tr.timeline())
		}
	}
	t.Logf("turns in flight at the kill: %d reported lost to their apps, %d completed after it", reported, completed)
	for _, u := range all {
		text, err := ownTurn(ctx, u.session, "after the kill "+u.name)
		if err != nil || !strings.Contains(text, "first: first of "+u.name) {
			t.Fatalf("%s after the kill: %q %v", u.name, text, err)
		}
	}
	// The sidecar restarted its CLI and the instance is back.
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		if ok, err := env.routed(pool.Name, victim); err != nil || !ok {
			return fmt.Errorf("%s not back (%v)", victim, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if childCLI(t, pool.Sidecars[victim].Proc.Pid()) == cliPID {
		t.Fatal("the same CLI pid: nothing was restarted")
	}
	metrics := sidecarMetrics(t, pool.Sidecars[victim].AdminPort)
	if metricValue(metrics, "climesh_sidecar_cli_restarts_total") < 1 || metricValue(metrics, "climesh_sidecar_turn_seconds_count") < 1 {
		t.Fatalf("the sidecar's metrics miss the restart or its turns:\n%s", grepLines(metrics, "climesh_sidecar_"))
	}
}

func sidecarMetrics(t *testing.T, port int) string {
	t.Helper()
	_, page := adminGet(t, port, "/metrics")
	return page
}

// adminGet GETs path on a sidecar's admin listener: status and body.
func adminGet(t *testing.T, adminPort int, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", adminPort, path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
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

// TestDeadSidecarLeavesRouting: a sidecar killed with SIGKILL (no drain, no
// deregistration) stops refreshing its TTL check, so Consul marks it critical
// within --check-ttl (the harness runs 3s; asserted with a 2 s margin) and Envoy
// stops routing to it.
func TestDeadSidecarLeavesRouting(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const checkTTL = 3 * time.Second // harness.StartSidecar's --check-ttl
	pool := env.startPool(ctx, t, "dead", harness.PoolOptions{Instances: 1})
	const id = "dead-0"
	sc := pool.Sidecars[id]
	cli := childCLI(t, sc.Proc.Pid())
	defer syscall.Kill(-cli, syscall.SIGKILL) // its CLI, in a process group of its own, outlives it
	killed := time.Now()
	if err := syscall.Kill(sc.Proc.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := harness.Poll(ctx, 50*time.Millisecond, func() error {
		checks, _, err := env.Consul.Client.Health().Checks(pool.Name, nil)
		if err != nil {
			return err
		}
		for _, c := range checks {
			if c.ServiceID == id && c.Status == "critical" {
				return nil
			}
		}
		return fmt.Errorf("%s not critical yet", id)
	})
	if err != nil {
		t.Fatal(err)
	}
	critical := time.Since(killed)
	if err := harness.Poll(ctx, 20*time.Millisecond, func() error {
		if ok, err := env.routed(pool.Name, id); err != nil || ok {
			return fmt.Errorf("still routed (%v)", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("a SIGKILLed sidecar: critical in Consul after %s, out of routing after %s (--check-ttl %s)",
		critical.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), checkTTL)
	if critical > checkTTL+2*time.Second {
		t.Fatalf("critical after %s, bound --check-ttl %s (+2 s margin)", critical, checkTTL)
	}
}

// persisted waits until the events file of session in home holds text.
func persisted(ctx context.Context, t *testing.T, home, session, text string) {
	t.Helper()
	path := filepath.Join(home, "session-state", session, "events.jsonl")
	err := harness.Poll(ctx, 20*time.Millisecond, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), text) {
			return fmt.Errorf("%s does not hold %q yet", path, text)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
