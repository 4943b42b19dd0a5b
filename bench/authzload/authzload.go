// Package authzload drives Envoy's ext_authz gRPC service the way a busy edge
// does: at a fixed request rate (open loop: a request is late when the
// service is, and its latency counts from when it was due), or as fast as a
// number of callers can (closed loop).
package authzload

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// FixedRate sends rate requests a second for dur from workers callers and
// returns the sorted latencies (from when each was due), the rate achieved and
// the errors.
func FixedRate(ctx context.Context, c authv3.AuthorizationClient, req *authv3.CheckRequest, rate int, dur time.Duration, workers int) ([]time.Duration, float64, int64) {
	jobs := make(chan time.Time, rate)
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for due := range jobs {
				_, err := c.Check(ctx, req)
				d := time.Since(due) // from when it was due: queueing counts
				if err != nil {
					errs.Add(1)
					continue
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	total := int(dur / interval)
	for i := range total {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		jobs <- due
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	return lat, float64(len(lat)) / elapsed.Seconds(), errs.Load()
}

// ClosedLoop has workers callers send back to back for dur.
func ClosedLoop(ctx context.Context, c authv3.AuthorizationClient, req *authv3.CheckRequest, dur time.Duration, workers int) ([]time.Duration, float64, int64) {
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(dur)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(stop) {
				t := time.Now()
				if _, err := c.Check(ctx, req); err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(lat)
	return lat, float64(len(lat)) / time.Since(start).Seconds(), errs.Load()
}
