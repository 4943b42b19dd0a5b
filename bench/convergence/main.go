// Command convergence measures how long a Consul change takes to reach Envoy:
// from the Consul API call that flips one instance's health check to the moment a
// real Envoy's cluster stats show the new healthy count. Everything is real and on
// loopback: Consul dev agent, the xds-server binary, Envoy.
//
//	go run ./bench/convergence [-sizes 10,100,1000] [-changes 100]
//
// Each flip is critical or passing in turn, so half the samples take an instance
// out and half put it back. Prints p50/p90/p99/max per fleet size (a p90 or p99
// the sample count cannot support prints as the maximum, labelled so). With
// BENCH_DEBUG=1 it also prints the xds-server's translate and push-latency sums, to
// tell the control plane's share from Consul's and Envoy's.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/test/harness"
)

var poolExtra *string

func main() {
	sizes := flag.String("sizes", "10,100,1000", "comma-separated fleet sizes")
	changes := flag.Int("changes", 100, "health flips per size (each is one sample)")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up after this long in all")
	poolExtra = flag.String("pool", "", "extra YAML fields for the pool, e.g. \", lb: {min_ring_size: 1024}\"")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	fmt.Print(stats.Provenance())
	fmt.Printf("# convergence: Consul health flip -> Envoy membership_healthy (GOMAXPROCS=%d, %d CPUs)\n", runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Println("| instances | samples | p50 | p90 (or max) | p99 (or max) | max |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|")
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 2 {
			fmt.Fprintf(os.Stderr, "convergence: -sizes: %q is not a fleet size of at least 2\n", s)
			os.Exit(2)
		}
		samples, err := measure(ctx, n, *changes)
		if err != nil {
			fmt.Fprintf(os.Stderr, "convergence: %d instances: %v\n", n, err)
			os.Exit(1)
		}
		fmt.Printf("| %d | %d | %s | %s | %s | %s |\n", n, len(samples),
			ms(stats.Percentile(samples, 50)), stats.TailCell(samples, 90, ms), stats.TailCell(samples, 99, ms), ms(stats.Percentile(samples, 100)))
	}
}

func measure(ctx context.Context, n, changes int) ([]time.Duration, error) {
	dir, err := os.MkdirTemp("", "climesh-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	consul, err := harness.StartConsul(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer consul.Close()
	if err := registerAll(consul, n); err != nil {
		return nil, err
	}
	lport, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	xds, err := harness.StartXDSServer(ctx, dir, fmt.Sprintf(`consul: {address: %s}
listeners: [{name: edge, port: %d, routes: [{pool: bench}]}]
pools: [{name: bench, consul_service: bench%s}]
`, consul.Addr, lport, *poolExtra))
	if err != nil {
		return nil, err
	}
	defer xds.Close()
	envoy, err := harness.StartEnvoy(ctx, dir, xds.XDSAddr, harness.EnvoyOptions{NodeID: "bench"})
	if err != nil {
		return nil, err
	}
	defer envoy.Close()

	const stat = "cluster.pool/bench.membership_healthy"
	if err := waitStat(ctx, envoy, stat, int64(n), time.Minute); err != nil {
		return nil, fmt.Errorf("initial sync: %w", err)
	}
	samples := make([]time.Duration, 0, changes)
	for i := range changes {
		id := fmt.Sprintf("cli-%04d", i/2%n)
		status, want := api.HealthCritical, int64(n-1)
		if i%2 == 1 {
			status, want = api.HealthPassing, int64(n)
		}
		start := time.Now()
		if err := consul.SetCheck(id, status); err != nil {
			return nil, err
		}
		if err := waitStat(ctx, envoy, stat, want, 30*time.Second); err != nil {
			return nil, fmt.Errorf("change %d (%s %s): %w\nxds-server:\n%s", i, id, status, err, xds.Proc.Tail(10))
		}
		samples = append(samples, time.Since(start))
	}
	if os.Getenv("BENCH_DEBUG") != "" {
		_, m, _ := xds.Get("/metrics")
		for _, l := range strings.Split(m, "\n") {
			if strings.Contains(l, "_sum") || strings.Contains(l, "_count") {
				fmt.Fprintln(os.Stderr, l)
			}
		}
	}
	return samples, nil
}

// registerAll registers n instances with passing TTL checks, 8 at a time.
func registerAll(consul *harness.Consul, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := consul.Register("bench", fmt.Sprintf("cli-%04d", i), 20000+i, nil); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// waitStat polls Envoy's admin every millisecond until stat equals want.
func waitStat(ctx context.Context, e *harness.Envoy, stat string, want int64, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return harness.Poll(ctx, time.Millisecond, func() error {
		v, err := e.Stat(stat)
		if err != nil {
			return err
		}
		if v != want {
			return fmt.Errorf("%s = %d, want %d", stat, v, want)
		}
		return nil
	})
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
