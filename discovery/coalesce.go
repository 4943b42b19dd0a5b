package discovery

import (
	"context"
	"time"
)

// Coalesce turns a burst of signals on in into one signal on the returned channel:
// it fires after quiet passes with no new signal, or maxDelay after the first signal
// of the burst, whichever is sooner. The returned channel has capacity 1 and is never
// closed; a slow reader sees one pending signal, never a queue.
func Coalesce(ctx context.Context, in <-chan struct{}, quiet, maxDelay time.Duration) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		var quietT, maxT *time.Timer
		var quietC, maxC <-chan time.Time
		fire := func() {
			quietT.Stop()
			maxT.Stop()
			quietC, maxC = nil, nil
			select {
			case out <- struct{}{}:
			default:
			}
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-in:
				if quietC == nil {
					quietT, maxT = time.NewTimer(quiet), time.NewTimer(maxDelay)
					quietC, maxC = quietT.C, maxT.C
				} else {
					quietT.Reset(quiet)
				}
			case <-quietC:
				fire()
			case <-maxC:
				fire()
			}
		}
	}()
	return out
}
