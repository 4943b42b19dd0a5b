// Command sharedsession measures pattern 3: the turn lock's own cost (Consul
// session + KV acquire, then release, p50/p99) and turns per second on one shared
// session with 1, 5 and 20 members sending at once through the whole mesh. A p99
// over fewer than 100 samples prints as the maximum, labelled so.
//
//	go run ./bench/sharedsession [-locks 200] [-turns 40]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/session/lock"
	"github.com/climesh/climesh/test/harness"
)

func main() {
	locks := flag.Int("locks", 200, "lock acquire/release cycles")
	turns := flag.Int("turns", 40, "turns per member count")
	flag.Parse()
	if err := run(*locks, *turns); err != nil {
		fmt.Fprintln(os.Stderr, "sharedsession:", err)
		os.Exit(1)
	}
}

func run(locks, turns int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	m, err := harness.StartMesh(ctx, harness.MeshOptions{Instances: 1, Collab: 1})
	if err != nil {
		return err
	}
	defer m.Close()
	fmt.Print(stats.Provenance())

	l := &lock.Locker{Client: m.Consul.Client, Prefix: "bench/locks/", TTL: 10 * time.Second, LockDelay: time.Second, Instance: "bench"}
	var cycle []time.Duration
	for i := range locks {
		start := time.Now()
		lk, err := l.Acquire(ctx, "bench-session", fmt.Sprint("u", i%5), 5*time.Second)
		if err != nil {
			return err
		}
		if err := lk.Release(); err != nil {
			return err
		}
		cycle = append(cycle, time.Since(start))
	}
	fmt.Println("| measure | samples | p50 | p99 (or max) | note |")
	fmt.Println("|---|---:|---:|---:|---|")
	fmt.Printf("| lock acquire + release | %d | %s | %s | cycles against the Consul dev agent |\n", len(cycle), ms(stats.Percentile(cycle, 50)), stats.TailCell(cycle, 99, ms))

	for _, members := range []int{1, 5, 20} {
		perSec, lat, err := room(ctx, m, members, turns)
		if err != nil {
			return fmt.Errorf("%d members: %w", members, err)
		}
		fmt.Printf("| turns, %d member(s) sending at once | %d | %s | %s | %.1f turns/s (latency includes waiting for others' turns) |\n",
			members, len(lat), ms(stats.Percentile(lat, 50)), stats.TailCell(lat, 99, ms), perSec)
	}
	return nil
}

// room runs `turns` turns on one shared session from `members` concurrent members.
func room(ctx context.Context, m *harness.Mesh, members, turns int) (float64, []time.Duration, error) {
	name := fmt.Sprintf("bench-room-%d-%d", members, time.Now().UnixNano())
	dir, _ := os.MkdirTemp("", "climesh-bench-room-")
	defer os.RemoveAll(dir)
	p, addr, err := harness.StartConnect(ctx, dir, "connect", m.EdgeURL, "--session", name, "--lock-wait", "5m")
	if err != nil {
		return 0, nil, err
	}
	defer p.Stop(time.Second)
	var users []string
	for i := range members {
		users = append(users, fmt.Sprintf("member-%d", i))
	}
	data := fmt.Sprintf(`{"climesh": {"shared_sessions": {%q: {"tenant": "acme", "members": ["owner", "%s"]}}}}`, name, strings.Join(users, `","`))
	if err := os.WriteFile(filepath.Join(m.PolicyDir, "bench-"+name+".json"), []byte(data), 0o644); err != nil {
		return 0, nil, err
	}
	provider := &copilot.ProviderConfig{Type: "openai", BaseURL: m.Model.URL, APIKey: "x"}
	owner := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: addr, ConnectionToken: m.Token("owner", "acme")}})
	if err := owner.Start(ctx); err != nil {
		return 0, nil, err
	}
	s, err := owner.CreateSession(ctx, &copilot.SessionConfig{SessionID: name, Model: "double-1", Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		return 0, nil, err
	}
	if _, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "open"}); err != nil {
		return 0, nil, err
	}
	owner.Stop()
	time.Sleep(300 * time.Millisecond) // the policy reload that admits the members

	sessions := make([]*copilot.Session, members)
	for i, u := range users {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: addr, ConnectionToken: m.Token(u, "acme")}})
		if err := c.Start(ctx); err != nil {
			return 0, nil, err
		}
		defer c.Stop()
		if sessions[i], err = c.ResumeSession(ctx, name, &copilot.ResumeSessionConfig{Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll}); err != nil {
			return 0, nil, err
		}
	}
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for i := range members {
		wg.Go(func() {
			for n := i; n < turns; n += members {
				t := time.Now()
				if err := ownTurn(ctx, sessions[i], fmt.Sprintf("turn %d by %d", n, i)); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				mu.Lock()
				lat = append(lat, time.Since(t))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, nil, firstErr
	}
	slices.Sort(lat)
	return float64(turns) / time.Since(start).Seconds(), lat, nil
}

// ownTurn sends and waits for the answer to this prompt (members see each
// other's turns, so the next session.idle may not be ours).
func ownTurn(ctx context.Context, s *copilot.Session, prompt string) error {
	got := make(chan struct{}, 1)
	unsubscribe := s.On(func(ev copilot.SessionEvent) {
		if d, ok := ev.Data.(*copilot.AssistantMessageData); ok && strings.Contains(d.Content, "echo: "+prompt+" ") {
			select {
			case got <- struct{}{}:
			default:
			}
		}
	})
	defer unsubscribe()
	if _, err := s.Send(ctx, copilot.MessageOptions{Prompt: prompt}); err != nil {
		return err
	}
	select {
	case <-got:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
