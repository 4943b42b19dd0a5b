package e2e

// This file sorts late: the test drains one of the shared mesh's "durable"
// instances for good.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

// TestDrainKeepsSessions: users of a pool with shared session storage; one
// instance is drained while turns run on it. Every running turn completes, every
// user's next turn succeeds elsewhere with its history, and no client dies.
func TestDrainKeepsSessions(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	reg := &registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}

	type user struct {
		name    string
		session *copilot.Session
		where   string
	}
	var users []*user
	byInstance := map[string][]*user{}
	for i := range 12 {
		u := &user{name: fmt.Sprintf("dur-%02d", i)}
		u.session = env.durableSession(ctx, t, u.name)
		if _, err := ownTurn(ctx, u.session, "first of "+u.name); err != nil {
			t.Fatal(err)
		}
		rec, err := reg.Get(ctx, u.session.SessionID)
		if err != nil || rec == nil {
			t.Fatalf("%s: no record (%v)", u.name, err)
		}
		u.where = rec.Instance
		users = append(users, u)
		byInstance[u.where] = append(byInstance[u.where], u)
	}
	drained := ""
	for id, us := range byInstance {
		if drained == "" || len(us) > len(byInstance[drained]) {
			drained = id
		}
	}
	victims := byInstance[drained]
	t.Logf("draining %s with %d of 12 users: %v", drained, len(victims), len(byInstance))

	// Turns run on the instance when the drain begins.
	before := env.Model.Requests()
	var wg sync.WaitGroup
	results := make(chan error, len(victims))
	var doneMu sync.Mutex
	var lastDone time.Time
	for _, u := range victims {
		wg.Go(func() {
			_, err := ownTurn(ctx, u.session, "slow 5000 for "+u.name)
			doneMu.Lock()
			lastDone = time.Now()
			doneMu.Unlock()
			results <- err
		})
	}
	err := harness.Poll(ctx, 20*time.Millisecond, func() error {
		if n := env.Model.Requests() - before; n < int64(len(victims)) {
			return fmt.Errorf("%d of %d turns reached the model", n, len(victims))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	drainAt := time.Now()
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/drain", env.Sidecars[drained].Port), "text/plain", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("drain call: %v %v", resp, err)
	}
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Errorf("a turn running at the drain did not complete: %v", err)
		}
	}

	if !lastDone.After(drainAt) {
		t.Fatal("the turns ended before the drain call: the test proves nothing")
	}
	t.Logf("drain: running turns done %s after the drain call", lastDone.Sub(drainAt).Round(time.Millisecond))
	// Everyone's next turn works, on the same client, with its history.
	for _, u := range users {
		start := time.Now()
		text, err := ownTurn(ctx, u.session, "next of "+u.name)
		if err != nil {
			t.Fatalf("%s after the drain: %v", u.name, err)
		}
		if !strings.Contains(text, "first: first of "+u.name) {
			t.Fatalf("%s lost its history: %q", u.name, text)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Logf("%s's next turn took %s", u.name, took.Round(time.Millisecond))
		}
	}
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		services, _, err := env.Consul.Client.Catalog().Service("durable", "", nil)
		if err != nil {
			return err
		}
		for _, s := range services {
			if s.ServiceID == drained {
				return fmt.Errorf("%s still registered", drained)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		if !env.Sidecars[drained].Proc.Exited() {
			return fmt.Errorf("the drained sidecar still runs")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
