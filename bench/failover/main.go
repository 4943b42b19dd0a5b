// Command failover measures what a CLI crash costs: SIGKILL one CLI of a pool with
// shared session storage, then time (a) until Envoy stops routing to it and (b) the
// failover a user sees — from the last reply before the kill to the first reply
// after it (climesh-connect reconnects and resumes the session elsewhere). Below
// 100 trials the tail column is the maximum, labelled so.
//
//	go run ./bench/failover [-trials 20]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

func main() {
	trials := flag.Int("trials", 20, "kills")
	flag.Parse()
	fmt.Print(stats.Provenance())
	if err := run(*trials); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

func run(trials int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	m, err := harness.StartMesh(ctx, harness.MeshOptions{Instances: 1, AttachAll: true, Scratch: []harness.ScratchPool{{Name: "durable"}}})
	if err != nil {
		return err
	}
	defer m.Close()
	// Two shared-mode instances whose CLIs share one COPILOT_HOME, so a session
	// resumes on the survivor.
	pool, err := m.StartPool(ctx, "durable", harness.PoolOptions{Instances: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	reg := &registry.Consul{KV: m.Consul.Client.KV(), Prefix: "climesh/sessions/"}
	provider := &copilot.ProviderConfig{Type: "openai", BaseURL: m.Model.URL, APIKey: "x"}
	var outOfRouting, failover []time.Duration
	for trial := range trials {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: m.ConnectAddr, ConnectionToken: m.Token(fmt.Sprintf("fo-%d", trial), "durable")}})
		if err := c.Start(ctx); err != nil {
			return err
		}
		s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
		if err != nil {
			return err
		}
		if _, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "before"}); err != nil {
			return err
		}
		lastReply := time.Now()
		rec, err := reg.Get(ctx, s.SessionID)
		if err != nil || rec == nil {
			return fmt.Errorf("no record: %v", err)
		}
		victim := rec.Instance
		cli, err := harness.ChildPID(pool.Sidecars[victim].Proc.Pid())
		if err != nil {
			return err
		}
		killed := time.Now()
		syscall.Kill(-cli, syscall.SIGKILL)
		if err := waitHealth(ctx, m, victim, false); err != nil {
			return err
		}
		outOfRouting = append(outOfRouting, time.Since(killed))
		for {
			tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := s.SendAndWait(tctx, copilot.MessageOptions{Prompt: "after"})
			tcancel()
			if err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		failover = append(failover, time.Since(lastReply))
		c.Stop()
		if err := waitHealth(ctx, m, victim, true); err != nil { // the sidecar restarted its CLI
			return err
		}
	}
	fmt.Println("| measure | p50 | p99 (or max) | trials |")
	fmt.Println("|---|---:|---:|---:|")
	fmt.Printf("| kill → out of routing (Envoy) | %s | %s | %d |\n", ms(stats.Percentile(outOfRouting, 50)), stats.TailCell(outOfRouting, 99, ms), len(outOfRouting))
	fmt.Printf("| failover seen by the user (last reply → next reply) | %s | %s | %d |\n", ms(stats.Percentile(failover, 50)), stats.TailCell(failover, 99, ms), len(failover))
	return nil
}

func waitHealth(ctx context.Context, m *harness.Mesh, id string, healthy bool) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return harness.Poll(ctx, 5*time.Millisecond, func() error {
		hosts, err := m.Envoy.Hosts("pool/durable")
		if err != nil {
			return err
		}
		for _, h := range hosts {
			if h.Hostname == id && (h.Health == "HEALTHY") == healthy {
				return nil
			}
		}
		return fmt.Errorf("%s not yet healthy=%v", id, healthy)
	})
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }
