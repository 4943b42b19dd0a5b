package e2e

// This file sorts late: the test drains one of the shared mesh's "durable"
// instances for good.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/test/harness"
)

// TestDrainKeepsSessions (issue scenario 1): 30 users with live sessions on a
// pool with shared session storage; one instance is drained while 10 of its users'
// turns run. Every running turn completes, every user's next turn succeeds (those
// of the drained instance elsewhere) with its history, and no client dies.
func TestDrainKeepsSessions(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	users, drained, there := env.durableUsers(ctx, t, "dur", 30)
	if len(there) < 10 {
		t.Fatalf("the busiest instance has %d of 30 users", len(there))
	}
	victims := there[:10]
	t.Logf("draining %s with %d of 30 users, 10 of them in a turn", drained, len(there))

	// Turns run on the instance when the drain begins.
	results := env.slowTurns(ctx, t, victims, 5000)
	drainAt := time.Now()
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/drain", env.Sidecars[drained].AdminPort), "text/plain", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("drain call: %v %v", resp, err)
	}
	var lastDone time.Time
	for range victims {
		r := <-results
		if r.err != nil {
			t.Errorf("a turn running at the drain did not complete: %v", r.err)
		}
		if r.at.After(lastDone) {
			lastDone = r.at
		}
	}

	if !lastDone.After(drainAt) {
		t.Fatal("the turns ended before the drain call: the test proves nothing")
	}
	t.Logf("drain: running turns done %s after the drain call", lastDone.Sub(drainAt).Round(time.Millisecond))
	// The drained instance is gone (deregistered, exited) before anyone's next
	// turn, so those turns run elsewhere.
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
}
