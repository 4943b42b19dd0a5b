// Package periodic runs the background loops climesh's processes keep — sweeps,
// keepalives, reaping, backoff — so that each is its work, not its timer.
package periodic

import (
	"context"
	"time"
)

// Every calls f every d until ctx ends or f returns false. The first call is d
// after the start: a loop that must act at once calls f itself first.
func Every(ctx context.Context, d time.Duration, f func() bool) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !f() {
			return
		}
	}
}

// Sleep waits d; false means ctx ended first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
