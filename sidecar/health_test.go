package sidecar

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

// One missed ping (a slow answer under load) does not fail a passing
// instance; Failures in a row do; a pass resets the count.
func TestHealthFailsAfterConsecutiveMisses(t *testing.T) {
	script := []bool{true, false, true, false, false, true} // each ping's outcome
	var mu sync.Mutex
	var reported []bool
	next := 0
	done := make(chan struct{})
	h := &Health{Log: zap.NewNop(), Interval: 5 * time.Millisecond, Failures: 2,
		Probe: func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			if next >= len(script) {
				select {
				case <-done:
				default:
					close(done)
				}
				return nil
			}
			ok := script[next]
			next++
			if ok {
				return nil
			}
			return errors.New("ping: no answer")
		},
		Report: func(ok bool, _ string) {
			mu.Lock()
			defer mu.Unlock()
			if next <= len(script) {
				reported = append(reported, ok)
			}
		},
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go h.Run(ctx)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the script did not run")
	}
	cancel()
	mu.Lock()
	defer mu.Unlock()
	// pass; miss (still passing: not reported); pass; miss (not reported);
	// second miss in a row: failing; pass.
	want := []bool{true, true, false, true}
	if len(reported) < len(want) || !slices.Equal(reported[:len(want)], want) {
		t.Fatalf("reported %v, want %v", reported, want)
	}
}
