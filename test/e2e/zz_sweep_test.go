package e2e

// This file sorts last: its sweep deletes every idle session of the durable pool.

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

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/registry"
)

// TestSweepIdleSessionsOnce: sessions idle past the TTL are deleted from disk and
// from the registry, exactly once, though every sidecar of the pool sweeps at once.
func TestSweepIdleSessionsOnce(t *testing.T) {
	env := startMesh(t)
	ctx := t.Context()
	reg := &registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}
	var ours []string
	for i := range 4 {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token(fmt.Sprintf("sw-%d", i), "durable")}})
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "soon idle"}); err != nil {
			t.Fatal(err)
		}
		ours = append(ours, s.SessionID)
		c.Stop()
	}
	time.Sleep(2500 * time.Millisecond) // the sessions' idle time passes the 2 s TTL below

	records, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stale := 0
	for _, r := range records {
		if r.Pool == "durable" && time.Since(r.LastActive) >= 2*time.Second {
			stale++
		}
	}
	// Every live durable sidecar sweeps at the same moment.
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for id, sc := range env.Sidecars {
		if !strings.HasPrefix(id, "durable") || sc.Proc.Exited() {
			continue
		}
		wg.Go(func() {
			resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/sweep?ttl=2s", sc.AdminPort), "text/plain", nil)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if resp.StatusCode != 200 || err != nil {
				t.Errorf("%s sweep: %d %s", id, resp.StatusCode, b)
				return
			}
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	wg.Wait()
	// One sweeper won; any that lost the election swept nothing. Run once more
	// from any sidecar to collect what a lost race left: the totals add up.
	for id, sc := range env.Sidecars {
		if strings.HasPrefix(id, "durable") && !sc.Proc.Exited() {
			resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/sweep?ttl=2s", sc.AdminPort), "text/plain", nil)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
				total += n
			}
			break
		}
	}
	if total != stale {
		t.Fatalf("swept %d sessions in all, want each of the %d stale ones exactly once", total, stale)
	}
	for _, id := range ours {
		if rec, _ := reg.Get(ctx, id); rec != nil {
			t.Errorf("%s still in the registry", id)
		}
		if _, err := os.Stat(filepath.Join(env.DurableHome, "session-state", id)); !os.IsNotExist(err) {
			t.Errorf("%s still on disk: %v", id, err)
		}
	}
	t.Logf("swept %d idle sessions (4 of this test's, the rest left by earlier tests)", total)
}
