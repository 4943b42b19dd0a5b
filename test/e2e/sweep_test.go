package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/climesh/climesh/test/harness"
)

// TestSweepIdleSessionsOnce: on a pool of its own, four sessions go idle past
// the TTL and a fifth stays active. Both sidecars sweep at the same moment:
// each idle session is deleted from disk and from the registry exactly once
// (the sweeps' counts add up to four), and the active one is kept.
func TestSweepIdleSessionsOnce(t *testing.T) {
	env := startMesh(t)
	ctx := t.Context()
	pool := env.startPool(ctx, t, "sweep", harness.PoolOptions{Instances: 2})
	reg := env.registry()
	var idle []string
	for i := range 4 {
		c := env.clientOf(ctx, t, pool.Name, fmt.Sprintf("sw-%d", i))
		s := env.newSession(ctx, t, c)
		if _, err := ownTurn(ctx, s, "soon idle"); err != nil {
			t.Fatal(err)
		}
		idle = append(idle, s.SessionID)
		c.Stop()
	}
	time.Sleep(2500 * time.Millisecond) // the sessions' idle time passes the 2 s TTL below
	active := env.newSession(ctx, t, env.clientOf(ctx, t, pool.Name, "sw-active"))
	if _, err := ownTurn(ctx, active, "still here"); err != nil {
		t.Fatal(err)
	}

	sweep := func(port int) int {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/sweep?ttl=2s", port), "text/plain", nil)
		if err != nil {
			t.Error(err)
			return 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Errorf("sweep on %d: %d %s", port, resp.StatusCode, b)
		}
		return n
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for _, sc := range pool.Sidecars {
		wg.Go(func() {
			n := sweep(sc.AdminPort)
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	wg.Wait()
	// One sweeper won the election; one that lost swept nothing. One more sweep
	// collects what a lost race may have left: the totals add up.
	total += sweep(pool.Sidecars["sweep-0"].AdminPort)
	if total != len(idle) {
		t.Fatalf("swept %d sessions in all, want each of the %d idle ones exactly once", total, len(idle))
	}
	for _, id := range idle {
		if rec, _ := reg.Get(ctx, id); rec != nil {
			t.Errorf("%s still in the registry", id)
		}
		if _, err := os.Stat(filepath.Join(pool.Home, "session-state", id)); !os.IsNotExist(err) {
			t.Errorf("%s still on disk: %v", id, err)
		}
	}
	if rec, err := reg.Get(ctx, active.SessionID); err != nil || rec == nil {
		t.Fatalf("the active session's record is gone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(pool.Home, "session-state", active.SessionID)); err != nil {
		t.Fatalf("the active session is gone from disk: %v", err)
	}
	if _, err := ownTurn(ctx, active, "after the sweep"); err != nil {
		t.Fatalf("the active session after the sweep: %v", err)
	}
}
