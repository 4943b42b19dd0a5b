package adsim

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/xds"
)

// TestClientsEndOnNewestVersion runs three simulated Envoys against the real
// xds-server (ten static endpoints), flips one endpoint's health and checks that
// every client ends having ACKed the server's newest version of every type — in
// its own view and in the server's (the server counts an ACK only when its nonce
// is one it sent). A client that ACKs the wrong nonce must fail the same check.
func TestClientsEndOnNewestVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the xds-server binary")
	}
	for name, tc := range map[string]struct {
		delta  bool
		broken bool
	}{
		"state of the world":              {},
		"delta":                           {delta: true},
		"state of the world, wrong nonce": {broken: true},
		"delta, wrong nonce":              {delta: true, broken: true},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			x := startServer(ctx, t)
			runCtx, stop := context.WithCancel(ctx)
			var wg sync.WaitGroup
			defer wg.Wait()
			defer stop()
			var clients []*Client
			for i := range 3 {
				o := Options{Addr: x.XDSAddr, NodeID: fmt.Sprintf("sim-%d", i), NodeCluster: "edge", Delta: tc.delta}
				if tc.broken {
					o.ackNonce = func(n string) string { return n + "0" }
				}
				c := New(o)
				clients = append(clients, c)
				wg.Go(func() { c.Run(runCtx) })
			}
			poll := func(limit time.Duration, cond func() error) error {
				pctx, cancel := context.WithTimeout(ctx, limit)
				defer cancel()
				return harness.Poll(pctx, 20*time.Millisecond, cond)
			}
			if err := poll(20*time.Second, func() error {
				for i, c := range clients {
					if !c.Synced() {
						return fmt.Errorf("client %d has ACKed only %v (last error %v)", i, c.Acked(), c.LastErr())
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			before, _, err := serverView(x)
			if err != nil {
				t.Fatal(err)
			}
			if err := x.Reload(testConfig(3)); err != nil {
				t.Fatal(err)
			}
			limit := 20 * time.Second
			if tc.broken {
				limit = 3 * time.Second
			}
			err = poll(limit, func() error { return converged(x, clients, before) })
			switch {
			case tc.broken && err == nil:
				t.Fatal("a client that ACKs the wrong nonce passed the check")
			case tc.broken:
				t.Logf("caught, as it must be: %v", err)
			case err != nil:
				t.Fatal(err)
			}
			for i, c := range clients {
				if n := c.Reconnects.Load(); n != 0 {
					t.Errorf("client %d reconnected %d times (last error %v)", i, n, c.LastErr())
				}
				if c.BytesRead.Load() == 0 {
					t.Errorf("client %d counted no bytes", i)
				}
			}
		})
	}
}

// startServer starts the xds-server on testConfig(-1) and waits until it is
// ready; it stops with the test, its log shown if the test failed.
func startServer(ctx context.Context, t *testing.T) *harness.XDSServer {
	t.Helper()
	x, err := harness.StartXDSServer(ctx, t.TempDir(), testConfig(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("xds-server log:\n%s", x.Proc.Tail(30))
		}
		x.Close()
	})
	if err := x.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return x
}

// converged is nil when the server has published a change since before, and
// every client has ACKed the server's current version of each type, both as the
// client saw it and as the server recorded it.
func converged(x *harness.XDSServer, clients []*Client, before xds.Versions) error {
	v, nodes, err := serverView(x)
	if err != nil {
		return err
	}
	if v.Endpoints == before.Endpoints || v.Clusters == before.Clusters {
		return fmt.Errorf("the health flip is not published yet (endpoints %s, clusters %s)", v.Endpoints, v.Clusters)
	}
	want := map[string]string{
		resourcev3.ClusterType: v.Clusters, resourcev3.EndpointType: v.Endpoints,
		resourcev3.ListenerType: v.Listeners, resourcev3.RouteType: v.Routes,
	}
	for i, c := range clients {
		if got := c.Acked(); !maps.Equal(got, want) {
			return fmt.Errorf("client %d ACKed %v, want %v", i, got, want)
		}
		id := fmt.Sprintf("sim-%d", i)
		got := nodes[id]
		delete(got, resourcev3.SecretType)
		if !maps.Equal(got, want) {
			return fmt.Errorf("the server recorded %s's ACKs as %v, want %v", id, got, want)
		}
	}
	return nil
}

// serverView is what /debug/xds says: the edge group's versions and what each
// node ACKed.
func serverView(x *harness.XDSServer) (xds.Versions, map[string]map[string]string, error) {
	code, body, err := x.Get("/debug/xds?group=edge")
	if err != nil {
		return xds.Versions{}, nil, err
	}
	if code != 200 {
		return xds.Versions{}, nil, fmt.Errorf("/debug/xds: %d %s", code, body)
	}
	var view struct {
		Groups map[string]struct{ Versions xds.Versions } `json:"node_groups"`
		Nodes  []xds.NodeStatus                           `json:"nodes"`
	}
	if err := json.NewDecoder(strings.NewReader(body)).Decode(&view); err != nil {
		return xds.Versions{}, nil, err
	}
	acked := map[string]map[string]string{}
	for _, n := range view.Nodes {
		acked[n.NodeID] = n.Acked
	}
	return view.Groups["edge"].Versions, acked, nil
}

// testConfig is one listener and one pool of ten static endpoints; endpoint
// unhealthy (when in range) is unhealthy.
func testConfig(unhealthy int) string {
	var b strings.Builder
	b.WriteString("listeners: [{name: edge, port: 10000, routes: [{pool: bench}]}]\npools:\n  - name: bench\n    static:\n")
	for i := range 10 {
		h := "healthy"
		if i == unhealthy {
			h = "unhealthy"
		}
		fmt.Fprintf(&b, "      - {id: cli-%02d, address: 10.0.0.%d, port: 7000, health: %s}\n", i, i+1, h)
	}
	return b.String()
}

// TestNewestVersionAfterNACKReconnectAndLateJoin is the ADS contract that shared,
// once-encoded responses must keep (issue 16): while the server publishes a run
// of changes, a client that joins in the middle, one that NACKs a change and one
// whose stream breaks all end on the server's newest version of every type, as
// does a client that saw every change.
func TestNewestVersionAfterNACKReconnectAndLateJoin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the xds-server binary")
	}
	for name, delta := range map[string]bool{"state of the world": false, "delta": true} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			x := startServer(ctx, t)
			runCtx, stop := context.WithCancel(ctx)
			var wg sync.WaitGroup
			defer wg.Wait()
			defer stop()
			start := func(id string, o Options) *Client {
				o.Addr, o.NodeID, o.NodeCluster, o.Delta = x.XDSAddr, id, "edge", delta
				c := New(o)
				wg.Go(func() { c.Run(runCtx) })
				return c
			}
			// nacker refuses the first endpoints it is sent after its initial fetch.
			var nacked sync.Once
			var nacks atomic.Int32
			nackerSynced := make(chan struct{})
			steady := start("steady", Options{})
			breaker := start("breaker", Options{})
			nacker := start("nacker", Options{Reject: func(typeURL, _ string) string {
				select {
				case <-nackerSynced:
				default:
					return ""
				}
				refuse := ""
				if typeURL == resourcev3.EndpointType {
					nacked.Do(func() { refuse = "endpoint refused by the test"; nacks.Add(1) })
				}
				return refuse
			}})
			clients := []*Client{steady, breaker, nacker}
			poll := func(cond func() error) error {
				pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				return harness.Poll(pctx, 20*time.Millisecond, cond)
			}
			if err := poll(func() error { return allSynced(clients) }); err != nil {
				t.Fatal(err)
			}
			close(nackerSynced)
			before, _, err := serverView(x)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 6 {
				if err := x.Reload(testConfig(i)); err != nil {
					t.Fatal(err)
				}
				switch i {
				case 1:
					clients = append(clients, start("late", Options{}))
				case 2:
					breaker.Break()
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err := poll(func() error { return convergedOn(x, clients, before) }); err != nil {
				t.Fatal(err)
			}
			if nacks.Load() != 1 {
				t.Fatalf("the nacker refused %d responses, want 1: the test did not exercise a NACK", nacks.Load())
			}
			if breaker.Reconnects.Load() == 0 {
				t.Fatal("the breaker never reconnected: the test did not exercise a reconnect")
			}
		})
	}
}

func allSynced(clients []*Client) error {
	for _, c := range clients {
		if !c.Synced() {
			return fmt.Errorf("client %s has ACKed only %v (last error %v)", c.opts.NodeID, c.Acked(), c.LastErr())
		}
	}
	return nil
}

// convergedOn is converged for clients named by their node ids.
func convergedOn(x *harness.XDSServer, clients []*Client, before xds.Versions) error {
	v, nodes, err := serverView(x)
	if err != nil {
		return err
	}
	if v.Endpoints == before.Endpoints {
		return fmt.Errorf("no change published yet (endpoints %s)", v.Endpoints)
	}
	want := map[string]string{
		resourcev3.ClusterType: v.Clusters, resourcev3.EndpointType: v.Endpoints,
		resourcev3.ListenerType: v.Listeners, resourcev3.RouteType: v.Routes,
	}
	for _, c := range clients {
		id := c.opts.NodeID
		if got := c.Acked(); !maps.Equal(got, want) {
			return fmt.Errorf("client %s ACKed %v, want %v", id, got, want)
		}
		got := maps.Clone(nodes[id])
		delete(got, resourcev3.SecretType)
		if !maps.Equal(got, want) {
			return fmt.Errorf("the server recorded %s's ACKs as %v, want %v", id, got, want)
		}
	}
	return nil
}

// TestReplicasServeIdenticalSnapshots: two xds-server replicas on the same
// config, each serving its own Envoys, publish the same versions — before and
// after a change — so that Envoys may be split across replicas (or move between
// them on a reconnect) without a resync of what they already have.
func TestReplicasServeIdenticalSnapshots(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the xds-server binary twice")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var replicas []*harness.XDSServer
	for range 2 {
		replicas = append(replicas, startServer(ctx, t))
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	clients := map[*harness.XDSServer][]*Client{}
	for i, x := range replicas {
		for j := range 2 {
			c := New(Options{Addr: x.XDSAddr, NodeID: fmt.Sprintf("sim-%d", j), NodeCluster: "edge", Delta: i == 1})
			clients[x] = append(clients[x], c)
			wg.Go(func() { c.Run(runCtx) })
		}
	}
	var prev xds.Versions
	for step, unhealthy := range []int{-1, 4} {
		if step > 0 {
			for _, x := range replicas {
				if err := x.Reload(testConfig(unhealthy)); err != nil {
					t.Fatal(err)
				}
			}
		}
		var first xds.Versions
		pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
		err := harness.Poll(pctx, 20*time.Millisecond, func() error {
			for i, x := range replicas {
				v, _, err := serverView(x)
				if err != nil {
					return err
				}
				if i == 0 {
					first = v
				} else if v != first {
					return fmt.Errorf("replica 1 publishes %+v, replica 0 %+v", v, first)
				}
				if err := convergedOn(x, clients[x], prev); err != nil {
					return fmt.Errorf("replica %d: %w", i, err)
				}
			}
			return nil
		})
		pcancel()
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		prev = first
	}
}
