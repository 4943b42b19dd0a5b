package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/climesh/climesh/bench/fanout/adsim"
)

// The load generator's side of the pipe between the two processes. It writes one
// line per event on stdout:
//
//	ack <client> <type letter c|e|l|r> <version> <unix nanoseconds>
//	stats <bytes read, all clients> <reconnects> <clients synced> <last stream error or ->
//
// and answers each "stats" line it reads on stdin. It exits when stdin closes.

var typeLetter = map[string]string{
	resourcev3.ClusterType: "c", resourcev3.EndpointType: "e",
	resourcev3.ListenerType: "l", resourcev3.RouteType: "r",
}

// runClients is `fanout client ...`: n simulated Envoys in this process.
func runClients(args []string) error {
	fs := flag.NewFlagSet("fanout client", flag.ContinueOnError)
	addr := fs.String("addr", "", "the xds-server's ADS address")
	n := fs.Int("n", 100, "simulated Envoys")
	delta := fs.Bool("delta", false, "delta xDS instead of state of the world")
	nodeCluster := fs.String("node-cluster", "edge", "every node's cluster (the node group)")
	batch := fs.Int("batch", 100, "connect this many at a time, each batch once the one before has synced")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	lines := make(chan string, 1<<16)
	var writer sync.WaitGroup
	writer.Go(func() {
		w := bufio.NewWriterSize(os.Stdout, 1<<16)
		for l := range lines {
			w.WriteString(l)
			if len(lines) == 0 {
				w.Flush()
			}
		}
		w.Flush()
	})

	clients := make([]*adsim.Client, *n)
	for i := range clients {
		clients[i] = adsim.New(adsim.Options{
			Addr: *addr, NodeID: fmt.Sprintf("sim-%05d", i), NodeCluster: *nodeCluster, Delta: *delta,
			OnAck: func(a adsim.Ack) {
				lines <- fmt.Sprintf("ack %d %s %s %d\n", i, typeLetter[a.TypeURL], a.Version, a.At.UnixNano())
			},
		})
	}
	var running sync.WaitGroup
	running.Go(func() {
		for start := 0; start < len(clients) && ctx.Err() == nil; start += *batch {
			group := clients[start:min(start+*batch, len(clients))]
			for _, c := range group {
				running.Go(func() { c.Run(ctx) })
			}
			for ctx.Err() == nil && !allSynced(group) {
				time.Sleep(20 * time.Millisecond)
			}
		}
	})

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if strings.TrimSpace(in.Text()) != "stats" {
			continue
		}
		var bytes, reconnects int64
		synced := 0
		lastErr := "-"
		for _, c := range clients {
			bytes += c.BytesRead.Load()
			reconnects += c.Reconnects.Load()
			if c.Synced() {
				synced++
			}
			if err := c.LastErr(); err != nil {
				lastErr = strings.ReplaceAll(err.Error(), "\n", " ")
			}
		}
		lines <- fmt.Sprintf("stats %d %d %d %s\n", bytes, reconnects, synced, lastErr)
	}
	cancel()
	running.Wait()
	close(lines)
	writer.Wait()
	return nil
}

func allSynced(cs []*adsim.Client) bool {
	for _, c := range cs {
		if !c.Synced() {
			return false
		}
	}
	return true
}
