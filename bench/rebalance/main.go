// Command rebalance measures what a scale-out costs users who keep their
// clients for hours, on a pool whose sidecars run --rebalance: users take
// turns back to back (the model answers after -think) on three instances
// sharing session storage; a fourth joins. It reports the time from Envoy
// routing to the new instance to the new instance carrying its share (the
// users whose home it now is, by the ring: the tunnels move between turns),
// and the turn latency p50/p99 in a quiet window before the join against the
// window from the join to balance plus two seconds. The load generator (the
// SDK clients) is this process; the mesh runs in processes of its own.
//
//	go run ./bench/rebalance [-users 20] [-quiet 10s] [-think 300ms] [-rate 5] [-settle 1s]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/ring"
	"github.com/climesh/climesh/test/harness"
)

func main() {
	users := flag.Int("users", 20, "users, each with one long-lived client taking turns back to back (a multiple of 4: a quarter have the new instance for their home)")
	quiet := flag.Duration("quiet", 10*time.Second, "turns measured before the scale-out")
	think := flag.Duration("think", 300*time.Millisecond, "how long the model takes to answer each turn")
	rate := flag.String("rate", "5", "--rebalance-rate of the sidecars")
	settle := flag.String("settle", "1s", "--rebalance-settle of the sidecars")
	flag.Parse()
	fmt.Print(stats.Provenance())
	if *users < 4 || *users%4 != 0 {
		fmt.Fprintln(os.Stderr, "rebalance: -users: want a positive multiple of 4")
		os.Exit(2)
	}
	if err := run(*users, *quiet, *think, *rate, *settle); err != nil {
		fmt.Fprintln(os.Stderr, "rebalance:", err)
		os.Exit(1)
	}
}

type turn struct {
	start time.Time
	took  time.Duration
	err   error
}

func homes(ids, users []string) map[string]string {
	r := ring.New(ids, ring.Size(config.DefaultRingEntries, 0, config.DefaultMaxRingSize, len(ids)), config.DefaultMaxRingSize)
	out := map[string]string{}
	for _, u := range users {
		out[u] = r.Home(u)
	}
	return out
}

func run(n int, quiet, think time.Duration, rate, settle string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	m, err := harness.StartMesh(ctx, harness.MeshOptions{Instances: 1, AttachAll: true, Scratch: []harness.ScratchPool{{Name: "rebalance"}}})
	if err != nil {
		return err
	}
	defer m.Close()
	pool, err := m.StartPool(ctx, "rebalance", harness.PoolOptions{Instances: 3, Extra: []string{"--rebalance", "--rebalance-rate", rate, "--rebalance-settle", settle}})
	if err != nil {
		return err
	}
	defer pool.Close()
	three := []string{"rebalance-0", "rebalance-1", "rebalance-2"}
	four := append(slices.Clone(three), "rebalance-3")
	share := n / 4
	var names []string
	for i, onNew := 0, 0; len(names) < n; i++ {
		name := fmt.Sprintf("rb-%03d", i)
		if homes(four, []string{name})[name] == "rebalance-3" {
			if onNew == share {
				continue
			}
			onNew++
		} else if len(names)-onNew == n-share {
			continue
		}
		names = append(names, name)
	}
	provider := &copilot.ProviderConfig{Type: "openai", BaseURL: m.Model.URL, APIKey: "x"}
	sessions := make([]*copilot.Session, n)
	for i, name := range names {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: m.ConnectAddr, ConnectionToken: m.Token(name, pool.Name)}})
		if err := c.Start(ctx); err != nil {
			return err
		}
		defer c.Stop()
		if sessions[i], err = c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll}); err != nil {
			return err
		}
	}
	var mu sync.Mutex
	var turns []turn
	stop := make(chan struct{})
	var load sync.WaitGroup
	for i, s := range sessions {
		load.Go(func() {
			for k := 1; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				prompt := fmt.Sprintf("slow %d for %s, turn %d", think.Milliseconds(), names[i], k)
				start := time.Now()
				ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: prompt})
				if err == nil {
					if d, ok := ev.Data.(*copilot.AssistantMessageData); !ok || !strings.Contains(d.Content, fmt.Sprintf("(user messages: %d,", k)) {
						err = fmt.Errorf("the model saw another history: %v", ev.Data)
					}
				}
				mu.Lock()
				turns = append(turns, turn{start: start, took: time.Since(start), err: err})
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	quietFrom := time.Now().Add(2 * time.Second) // past the first turns
	time.Sleep(2*time.Second + quiet)
	quietTo := time.Now()

	added, err := pool.Add(ctx) // returns once Envoy routes to it
	if err != nil {
		return err
	}
	joined := time.Now()
	var balanced time.Time
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		total, mine := 0, 0
		for id, sc := range pool.Sidecars {
			page, err := metrics(sc.AdminPort)
			if err != nil {
				return err
			}
			v := gauge(page, "climesh_sidecar_tunnels")
			total += v
			if id == added.ID {
				mine = v
			}
		}
		if mine < share-1 || mine > share+1 || total != n {
			return fmt.Errorf("%s carries %d of %d tunnels", added.ID, mine, total)
		}
		balanced = time.Now()
		return nil
	})
	if err != nil {
		return fmt.Errorf("not balanced: %w", err)
	}
	time.Sleep(2 * time.Second)
	movesTo := time.Now()
	close(stop)
	load.Wait()

	moves := 0
	for _, sc := range pool.Sidecars {
		page, err := metrics(sc.AdminPort)
		if err != nil {
			return err
		}
		moves += gauge(page, "climesh_sidecar_moves_started_total")
	}
	var quietLat, movingLat []time.Duration
	failed := 0
	for _, t := range turns {
		if t.err != nil {
			failed++
			fmt.Fprintln(os.Stderr, "failed turn:", t.err)
			continue
		}
		end := t.start.Add(t.took)
		switch {
		case !t.start.Before(quietFrom) && end.Before(quietTo):
			quietLat = append(quietLat, t.took)
		case end.After(joined) && t.start.Before(movesTo):
			movingLat = append(movingLat, t.took)
		}
	}
	slices.Sort(quietLat)
	slices.Sort(movingLat)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }
	fmt.Printf("# %d users, turns back to back (the model answers after %v), 3 instances sharing storage, --rebalance-rate %s --rebalance-settle %s; a fourth joins\n", n, think, rate, settle)
	fmt.Printf("scale-out: Envoy routed %s; it carried its share (%d±1 of %d tunnels) %v later, by %d moves; %d turns failed\n",
		added.ID, share, n, balanced.Sub(joined).Round(time.Millisecond), moves, failed)
	fmt.Println("| window | turns | p50 | p99 (or max) | max |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, w := range []struct {
		name string
		lat  []time.Duration
	}{{"quiet, before the join", quietLat}, {"join to balance + 2 s", movingLat}} {
		if len(w.lat) == 0 {
			fmt.Printf("| %s | 0 | - | - | - |\n", w.name)
			continue
		}
		fmt.Printf("| %s | %d | %s | %s | %s |\n", w.name, len(w.lat), ms(stats.Percentile(w.lat, 50)), stats.TailCell(w.lat, 99, ms), ms(w.lat[len(w.lat)-1]))
	}
	if failed > 0 {
		return fmt.Errorf("%d turns failed", failed)
	}
	return nil
}

func metrics(port int) (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// gauge sums the samples of name in a Prometheus text page.
func gauge(page, name string) int {
	total := 0.0
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			var v float64
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
			total += v
		}
	}
	return int(total)
}
