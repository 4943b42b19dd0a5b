package e2e

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/climesh/climesh/test/harness"
)

// TestEnvoyDrainsBeforeItStops runs climesh-envoy-drain, the Envoy pod's
// preStop, against a real Envoy carrying an open tunnel: the listener stops
// taking new tunnels once Envoy's drain time is over, the open tunnel keeps
// working, and the drain ends only when that tunnel closes.
func TestEnvoyDrainsBeforeItStops(t *testing.T) {
	env := startFleetEnv(t, 1)
	env.waitHosts(t, map[string]string{"cli-1": "HEALTHY"})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	open, _, err := websocket.Dial(ctx, env.urlA, &websocket.DialOptions{HTTPHeader: http.Header{"X-Climesh-User": {"alice"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer open.CloseNow()
	echo := func() error {
		if _, _, err := open.Read(ctx); err != nil { // the greeting, then each echo
			return err
		}
		return open.Write(ctx, websocket.MessageText, []byte("ping"))
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}
	bin, err := harness.Binary("climesh-envoy-drain")
	if err != nil {
		t.Fatal(err)
	}
	drain, err := harness.Start(t.TempDir(), "envoy-drain", bin, []string{"--admin", "http://" + env.sotw.AdminAddr, "--timeout", "30s", "--poll", "100ms"})
	if err != nil {
		t.Fatal(err)
	}
	defer drain.Stop(time.Second)
	// The harness's Envoy drains for 1 s (--drain-time-s 1), then closes the listener.
	if err := harness.Poll(ctx, 100*time.Millisecond, func() error {
		if _, err := harness.WhoServes(ctx, env.urlA, http.Header{"X-Climesh-User": {"bob"}}); err == nil {
			return errors.New("still accepting")
		}
		return nil
	}); err != nil {
		t.Fatal("the drained listener still takes new tunnels")
	}
	if err := echo(); err != nil {
		t.Fatalf("the open tunnel broke during the drain: %v", err)
	}
	select {
	case <-drain.Done():
		t.Fatalf("the drain ended with a tunnel still open:\n%s", drain.Tail(5))
	case <-time.After(time.Second):
	}
	closed := time.Now()
	open.Close(websocket.StatusNormalClosure, "done")
	select {
	case <-drain.Done():
	case <-ctx.Done():
		t.Fatal("the drain did not end after the last tunnel closed")
	}
	if err := drain.Err(); err != nil || !strings.Contains(drain.Tail(1), "0 connections left") {
		t.Fatalf("drain: %v\n%s", err, drain.Tail(5))
	}
	t.Logf("drain ended %s after the last tunnel closed", time.Since(closed).Round(time.Millisecond))
}
