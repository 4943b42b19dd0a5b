// Command turntrace prints when each session event of one turn arrives, directly
// and through climesh, to see where a turn's added time goes.
//
//	go run ./bench/turntrace
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/test/harness"
)

func main() {
	fmt.Print(stats.Provenance())
	ctx := context.Background()
	m, err := harness.StartMesh(ctx, harness.MeshOptions{Instances: 1, AttachAll: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer m.Close()
	cli := m.CLIs[harness.InstanceID(0)]
	provider := &copilot.ProviderConfig{Type: "openai", BaseURL: m.Model.URL, APIKey: "double"}
	viaMesh := m.Token("u", "acme") // the edge admits a JWT only
	for _, p := range []struct{ name, url, tok string }{{"direct", cli.Addr, cli.Token}, {"climesh", m.ConnectAddr, viaMesh}, {"direct", cli.Addr, cli.Token}, {"climesh", m.ConnectAddr, viaMesh}} {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: p.url, ConnectionToken: p.tok}})
		if err := c.Start(ctx); err != nil {
			panic(err)
		}
		s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
		if err != nil {
			panic(err)
		}
		for i := range 4 {
			start := time.Now()
			var line string
			s.On(func(ev copilot.SessionEvent) {
				line += fmt.Sprintf(" %s@%.1f", ev.Type(), float64(time.Since(start).Microseconds())/1000)
			})
			s.SendAndWait(ctx, copilot.MessageOptions{Prompt: fmt.Sprint("hi ", i)})
			if i == 3 {
				fmt.Printf("%s: %.1fms:%s\n\n", p.name, float64(time.Since(start).Microseconds())/1000, line)
			}
		}
		c.Stop()
	}
}
