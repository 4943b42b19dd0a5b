// Command capacity measures what the sidecar's session cap costs a user whose
// session was released: one real CLI behind climesh-sidecar, one SDK client through
// climesh-connect with two sessions, turns alternating between them. With
// --capacity 1 every turn finds its session released and the sidecar resumes it
// first; with no cap nothing is released. Prints turn latency p50 and p99 (the
// maximum below 100 turns) for both and the difference, with the sidecar's release
// and resume counters.
//
//	go run ./bench/capacity [-turns 40]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/test/modeldouble"
)

func main() {
	turns := flag.Int("turns", 40, "turns per run, alternating between two sessions")
	flag.Parse()
	if err := run(*turns); err != nil {
		fmt.Fprintln(os.Stderr, "capacity:", err)
		os.Exit(1)
	}
}

func run(turns int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	model, err := modeldouble.Start()
	if err != nil {
		return err
	}
	defer model.Close()
	copilotBin, err := harness.Tool("copilot")
	if err != nil {
		return err
	}
	fmt.Print(stats.Provenance())
	fmt.Printf("# capacity: %d turns alternating between two sessions of one client, per run\n", turns)
	fmt.Println("| capacity | turns | turn p50 | turn p99 (or max) | released | resumed on demand |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	var p50 [2]time.Duration
	for i, capacity := range []int{0, 1} {
		samples, counters, err := measure(ctx, copilotBin, model.URL, capacity, turns)
		if err != nil {
			return err
		}
		p50[i] = stats.Percentile(samples, 50)
		name := "no cap"
		if capacity > 0 {
			name = strconv.Itoa(capacity)
		}
		fmt.Printf("| %s | %d | %s | %s | %.0f | %.0f |\n", name, len(samples), ms(p50[i]), stats.TailCell(samples, 99, ms),
			counters["climesh_sidecar_evictions_total"], counters["climesh_sidecar_resumes_on_demand_total"])
	}
	fmt.Printf("\nA resume on demand adds %s to a turn at p50.\n", ms(p50[1]-p50[0]))
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func measure(ctx context.Context, copilotBin, modelURL string, capacity, turns int) ([]time.Duration, map[string]float64, error) {
	dir, err := os.MkdirTemp("", "climesh-bench-capacity-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	sc, err := harness.StartSidecar(ctx, dir, harness.SidecarOptions{ID: "cap", Pool: "bench", CLICommand: copilotBin,
		CLIHome: dir + "/home", Extra: []string{"--capacity", strconv.Itoa(capacity)}})
	if err != nil {
		return nil, nil, err
	}
	defer sc.Close()
	p, addr, err := harness.StartConnect(ctx, dir, "connect", fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", sc.Port))
	if err != nil {
		return nil, nil, err
	}
	defer p.Stop(time.Second)
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: addr, ConnectionToken: "bench"}})
	var startErr error
	for range 50 { // the CLI may still be starting
		if startErr = c.Start(ctx); startErr == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if startErr != nil {
		return nil, nil, startErr
	}
	defer c.Stop()
	cfg := &copilot.SessionConfig{Model: "double-1", Provider: &copilot.ProviderConfig{Type: "openai", BaseURL: modelURL, APIKey: "double"},
		OnPermissionRequest: copilot.PermissionHandler.ApproveAll}
	var sessions [2]*copilot.Session
	for i := range sessions {
		if sessions[i], err = c.CreateSession(ctx, cfg); err != nil {
			return nil, nil, err
		}
		if _, err := sessions[i].SendAndWait(ctx, copilot.MessageOptions{Prompt: "first"}); err != nil {
			return nil, nil, err
		}
	}
	var samples []time.Duration
	for i := range turns {
		start := time.Now()
		ev, err := sessions[i%2].SendAndWait(ctx, copilot.MessageOptions{Prompt: fmt.Sprintf("turn %d", i)})
		if err != nil {
			return nil, nil, err
		}
		if d, ok := ev.Data.(*copilot.AssistantMessageData); !ok || !strings.Contains(d.Content, "first: first") {
			return nil, nil, fmt.Errorf("turn %d lost its session's history: %+v", i, ev.Data)
		}
		samples = append(samples, time.Since(start))
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", sc.AdminPort))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	counters := map[string]float64{}
	for _, line := range strings.Split(string(page), "\n") {
		if f := strings.Fields(line); len(f) == 2 && !strings.HasPrefix(line, "#") {
			v, _ := strconv.ParseFloat(f[1], 64)
			counters[f[0]] = v
		}
	}
	return samples, counters, nil
}
