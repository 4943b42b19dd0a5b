// Command datapath measures what climesh adds to a Copilot SDK call: the same
// SDK, the same real CLI, dialled directly and through climesh-connect → Envoy →
// climesh-sidecar, in the production shape (JWT at the edge, ext_authz, Rego on
// every message). Prints ping round trips and full turns (the model is the
// loopback double) at p50 and p99 — the maximum when there are fewer than 100
// samples, labelled so — and ping throughput with concurrent callers as a ratio
// to direct.
//
//	go run ./bench/datapath [-pings 2000] [-turns 50] [-concurrency 8] [-duration 3s]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/test/harness"
)

func main() {
	pings := flag.Int("pings", 2000, "sequential pings per path")
	turns := flag.Int("turns", 50, "sequential turns per path")
	conc := flag.Int("concurrency", 8, "concurrent pingers for the throughput run")
	dur := flag.Duration("duration", 3*time.Second, "length of the throughput run")
	profile := flag.String("profile", "", "write a CPU profile of the sidecar during the throughput run through climesh to this `file`")
	flag.Parse()
	fmt.Print(stats.Provenance())
	if err := run(*pings, *turns, *conc, *dur, *profile); err != nil {
		fmt.Fprintln(os.Stderr, "datapath:", err)
		os.Exit(1)
	}
}

type result struct {
	ping, turn []time.Duration
	perSecond  float64
}

func run(pings, turns, conc int, dur time.Duration, profile string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	m, err := harness.StartMesh(ctx, harness.MeshOptions{Instances: 1, AttachAll: true})
	if err != nil {
		return err
	}
	defer m.Close()
	cli := m.CLIs[harness.InstanceID(0)]

	direct := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: cli.Addr, ConnectionToken: cli.Token}})
	viaMesh := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: m.ConnectAddr, ConnectionToken: m.Token("bench-user", "acme")}})
	provider := &copilot.ProviderConfig{Type: "openai", BaseURL: m.Model.URL, APIKey: "double"}
	results := map[string]*result{}
	for _, p := range []struct {
		name   string
		client *copilot.Client
	}{{"direct", direct}, {"climesh", viaMesh}} {
		if err := p.client.Start(ctx); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		defer p.client.Stop()
		var onLoad func() func() error // starts the sidecar's profile, returns its wait
		if profile != "" && p.name == "climesh" {
			onLoad = profileSidecar(m.Sidecars[harness.InstanceID(0)].AdminPort, dur, profile)
		}
		r, err := measure(ctx, p.client, provider, pings, turns, conc, dur, onLoad)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		results[p.name] = r
	}
	d, c := results["direct"], results["climesh"]
	fmt.Println("| measure | direct | climesh | added |")
	fmt.Println("|---|---:|---:|---:|")
	for _, row := range []struct {
		name string
		a, b []time.Duration
	}{{"ping", d.ping, c.ping}, {"full turn", d.turn, c.turn}} {
		a, b := stats.Percentile(row.a, 50), stats.Percentile(row.b, 50)
		fmt.Printf("| %s p50 (n=%d) | %s | %s | %s |\n", row.name, len(row.a), ms(a), ms(b), ms(b-a))
		// Both paths take the same number of samples, so one label serves the row.
		label, a := stats.Tail(row.a, 99)
		_, b = stats.Tail(row.b, 99)
		fmt.Printf("| %s %s (n=%d) | %s | %s | %s |\n", row.name, label, len(row.a), ms(a), ms(b), ms(b-a))
	}
	fmt.Printf("| ping throughput (%d callers) | %.0f/s | %.0f/s | ratio %.0f%% of direct |\n", conc, d.perSecond, c.perSecond, 100*c.perSecond/d.perSecond)
	return nil
}

func measure(ctx context.Context, c *copilot.Client, provider *copilot.ProviderConfig, pings, turns, conc int, dur time.Duration, onLoad func() func() error) (*result, error) {
	r := &result{}
	for range 50 { // warm up
		if _, err := c.Ping(ctx, "warm"); err != nil {
			return nil, err
		}
	}
	for range pings {
		start := time.Now()
		if _, err := c.Ping(ctx, "bench"); err != nil {
			return nil, err
		}
		r.ping = append(r.ping, time.Since(start))
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	stop := time.Now().Add(dur)
	profiled := func() error { return nil }
	if onLoad != nil {
		profiled = onLoad()
	}
	for range conc {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if _, err := c.Ping(ctx, "load"); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err := profiled(); err != nil {
		return nil, err
	}
	if err, ok := firstErr.Load().(error); ok {
		return nil, err
	}
	r.perSecond = float64(n.Load()) / dur.Seconds()

	s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		return nil, err
	}
	defer c.DeleteSession(ctx, s.SessionID)
	for i := range turns + 3 {
		start := time.Now()
		if _, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: fmt.Sprintf("turn %d", i)}); err != nil {
			return nil, err
		}
		if i >= 3 { // the first turns warm the CLI up
			r.turn = append(r.turn, time.Since(start))
		}
	}
	slices.Sort(r.ping)
	slices.Sort(r.turn)
	return r, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000) }

// profileSidecar returns a starter of a CPU profile of the sidecar (its admin
// listener's /debug/pprof/profile) covering the throughput run; the starter
// returns a wait that writes the profile to file.
func profileSidecar(adminPort int, dur time.Duration, file string) func() func() error {
	return func() func() error {
		done := make(chan error, 1)
		go func() {
			secs := max(1, int(dur.Seconds()))
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", adminPort, secs))
			if err != nil {
				done <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				done <- fmt.Errorf("profile: %s", resp.Status)
				return
			}
			f, err := os.Create(file)
			if err == nil {
				_, err = io.Copy(f, resp.Body)
				err = errors.Join(err, f.Close())
			}
			done <- err
		}()
		return func() error { return <-done }
	}
}
