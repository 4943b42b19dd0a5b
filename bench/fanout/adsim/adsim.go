// Package adsim simulates Envoy's ADS client, for measuring a control plane's
// fan-out without running thousands of Envoys. A Client holds one aggregated
// stream, state of the world or delta, and subscribes the way Envoy does: clusters
// (wildcard), then the endpoints of its EDS clusters, then listeners (wildcard),
// then the route configurations its listeners name. It ACKs every response with
// the response's version and nonce, remembers what it accepted, and reconnects
// (resuming from what it has) when the stream breaks.
//
// What it leaves out of Envoy: it decodes clusters and listeners (to learn the
// names it must subscribe to) but never the endpoint assignments or route
// configurations, it never NACKs, and it does not re-request EDS when a cluster
// it already has is updated (Envoy's cluster warming).
package adsim

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// The four types a client subscribes to, in Envoy's order.
var Types = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// Options configure one simulated Envoy.
type Options struct {
	Addr        string // the ADS server, host:port
	NodeID      string // distinct per client
	NodeCluster string // Envoy's --service-cluster: the node group
	Delta       bool   // the delta protocol instead of state of the world
	// OnAck, when set, is called after each ACK is sent (from the client's stream
	// goroutine: keep it short).
	OnAck func(Ack)
	// MaxRecvBytes bounds one response (default 256 MiB: Envoy sets no limit).
	MaxRecvBytes int
	// Reject, when set, is asked about every response; a non-empty answer NACKs
	// it with that message, as Envoy does with config it cannot apply: the client
	// keeps what it had.
	Reject func(typeURL, version string) string

	// ackNonce rewrites the nonce of every ACK; tests use it to break the client.
	ackNonce func(string) string
}

// Ack is one response the client accepted.
type Ack struct {
	TypeURL string
	// Version is the response's version_info (state of the world) or
	// system_version_info (delta: go-control-plane sets it to the snapshot's
	// version of the type).
	Version string
	At      time.Time // when the ACK was sent
}

// Client is one simulated Envoy. Its counters may be read while it runs.
type Client struct {
	opts Options

	BytesRead  atomic.Int64 // bytes read from the TCP connection, gRPC framing included
	Reconnects atomic.Int64 // streams that ended and were opened again

	mu     sync.Mutex
	acked  map[string]string // type URL -> last ACKed version
	err    error             // why the last stream ended
	cancel func()            // ends the current stream

	// Kept across streams, used by Run's goroutine only.
	names     map[string][]string          // by type: the names subscribed to (nil: wildcard)
	state     map[string]map[string]string // delta: by type, resource name -> version
	clusters  map[string]string            // delta: cluster -> its EDS name ("" when not EDS)
	listeners map[string]string            // delta: listener -> its RDS route config name
}

// New makes a Client; Run connects it.
func New(o Options) *Client {
	if o.MaxRecvBytes == 0 {
		o.MaxRecvBytes = 256 << 20
	}
	return &Client{opts: o, acked: map[string]string{}, names: map[string][]string{},
		state: map[string]map[string]string{}, clusters: map[string]string{}, listeners: map[string]string{}}
}

// Acked returns the version last ACKed for each type.
func (c *Client) Acked() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.acked)
}

// Synced reports whether the client has ACKed every type once: it has the whole
// configuration, as an Envoy that finished its initial fetch.
func (c *Client) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.acked) == len(Types)
}

// Break ends the current stream as a lost connection would; Run opens the next
// one after its pause, resuming with what the client has.
func (c *Client) Break() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil {
		c.cancel()
	}
}

// LastErr is why the client's last stream ended (nil while the first runs).
func (c *Client) LastErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Run holds the stream until ctx ends, reconnecting after a pause (250 ms,
// doubling to 5 s) when it breaks. It returns ctx's error, or an error that
// makes reconnecting pointless (the connection could not even be set up).
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient("passthrough:///"+c.opts.Addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: nc, n: &c.BytesRead}, nil
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(c.opts.MaxRecvBytes)),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	backoff := 250 * time.Millisecond
	for {
		start := time.Now()
		var err error
		if c.opts.Delta {
			err = c.delta(ctx, ads)
		} else {
			err = c.sotw(ctx, ads)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		c.Reconnects.Add(1)
		if time.Since(start) > time.Minute {
			backoff = 250 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// resubscribe asks a new stream for clusters and for every type the client
// had, in Envoy's order.
func (c *Client) resubscribe(subscribe func(typeURL string, names []string) error) error {
	for _, t := range Types {
		if names, ok := c.names[t]; ok || t == resourcev3.ClusterType {
			if err := subscribe(t, names); err != nil {
				return err
			}
		}
	}
	return nil
}

// streamContext is the context of one stream, which Break cancels.
func (c *Client) streamContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	return ctx, cancel
}

// rejects is the NACK message for a response, "" to accept it.
func (c *Client) rejects(typeURL, version string) string {
	if c.opts.Reject == nil {
		return ""
	}
	return c.opts.Reject(typeURL, version)
}

func (c *Client) node() *corev3.Node {
	return &corev3.Node{Id: c.opts.NodeID, Cluster: c.opts.NodeCluster, UserAgentName: "climesh-adsim"}
}

func (c *Client) nonce(n string) string {
	if c.opts.ackNonce != nil {
		return c.opts.ackNonce(n)
	}
	return n
}

func (c *Client) accepted(typeURL, version string) {
	c.mu.Lock()
	c.acked[typeURL] = version
	c.mu.Unlock()
	if c.opts.OnAck != nil {
		c.opts.OnAck(Ack{TypeURL: typeURL, Version: version, At: time.Now()})
	}
}

// sotw runs one state-of-the-world stream. Every request after the first carries
// no node (Envoy's set_node_on_first_message_only). A resumed stream asks at once
// for every type it had, with the versions it has, as Envoy does: a server whose
// versions did not change sends nothing again.
func (c *Client) sotw(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := c.streamContext(ctx)
	defer cancel()
	stream, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	have := c.Acked()
	first := true
	send := func(req *discoveryv3.DiscoveryRequest) error {
		if first {
			req.Node, first = c.node(), false
		}
		return stream.Send(req)
	}
	nonces := map[string]string{} // by type: the last response's nonce on this stream
	// subscribe asks for typeURL's resources when the names differ from what the
	// stream asked before (or it never asked: always, on a new stream).
	asked := map[string]bool{}
	subscribe := func(typeURL string, want []string) error {
		if asked[typeURL] && slices.Equal(c.names[typeURL], want) {
			return nil
		}
		asked[typeURL], c.names[typeURL] = true, want
		return send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: want,
			VersionInfo: have[typeURL], ResponseNonce: nonces[typeURL]})
	}
	if err := c.resubscribe(subscribe); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		t := resp.GetTypeUrl()
		nonces[t] = resp.GetNonce()
		if reason := c.rejects(t, resp.GetVersionInfo()); reason != "" {
			// Envoy's NACK: the version it still runs, the rejected nonce.
			err := send(&discoveryv3.DiscoveryRequest{TypeUrl: t, ResourceNames: c.names[t], VersionInfo: have[t],
				ResponseNonce: resp.GetNonce(), ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: reason}})
			if err != nil {
				return err
			}
			continue
		}
		have[t] = resp.GetVersionInfo()
		var next func() error
		switch t {
		case resourcev3.ClusterType:
			eds, err := edsNames(resp.GetResources())
			if err != nil {
				return err
			}
			next = func() error { return subscribe(resourcev3.EndpointType, eds) }
		case resourcev3.EndpointType:
			next = func() error { return subscribe(resourcev3.ListenerType, nil) }
		case resourcev3.ListenerType:
			rds, err := rdsNames(resp.GetResources())
			if err != nil {
				return err
			}
			next = func() error { return subscribe(resourcev3.RouteType, rds) }
		}
		err = send(&discoveryv3.DiscoveryRequest{TypeUrl: t, ResourceNames: c.names[t],
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: c.nonce(resp.GetNonce())})
		if err != nil {
			return err
		}
		c.accepted(t, resp.GetVersionInfo())
		if next != nil {
			if err := next(); err != nil {
				return err
			}
		}
	}
}

// delta runs one delta stream: wildcard clusters and listeners, named endpoints
// and routes. A resumed stream subscribes at once to everything it had, each
// type's first request carrying the resource versions the client has, as Envoy
// does.
func (c *Client) delta(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := c.streamContext(ctx)
	defer cancel()
	stream, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	first := true
	send := func(req *discoveryv3.DeltaDiscoveryRequest) error {
		if first {
			req.Node, first = c.node(), false
		}
		return stream.Send(req)
	}
	asked := map[string][]string{} // by type: the names this stream subscribed to
	subscribe := func(typeURL string, want []string) error {
		old, ok := asked[typeURL]
		if ok && slices.Equal(old, want) {
			return nil
		}
		asked[typeURL], c.names[typeURL] = want, want
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL}
		if !ok {
			req.InitialResourceVersions = maps.Clone(c.state[typeURL])
		}
		for _, n := range want {
			if !slices.Contains(old, n) {
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
			}
		}
		for _, n := range old {
			if !slices.Contains(want, n) {
				req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
			}
		}
		return send(req)
	}
	if err := c.resubscribe(subscribe); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		t := resp.GetTypeUrl()
		if reason := c.rejects(t, resp.GetSystemVersionInfo()); reason != "" {
			err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(),
				ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: reason}})
			if err != nil {
				return err
			}
			continue
		}
		if c.state[t] == nil {
			c.state[t] = map[string]string{}
		}
		for _, name := range resp.GetRemovedResources() {
			delete(c.state[t], name)
			if t == resourcev3.ClusterType {
				delete(c.clusters, name)
			} else if t == resourcev3.ListenerType {
				delete(c.listeners, name)
			}
		}
		for _, r := range resp.GetResources() {
			c.state[t][r.GetName()] = r.GetVersion()
			switch t {
			case resourcev3.ClusterType:
				n, err := edsName(r.GetResource())
				if err != nil {
					return err
				}
				c.clusters[r.GetName()] = n
			case resourcev3.ListenerType:
				n, err := rdsName(r.GetResource())
				if err != nil {
					return err
				}
				c.listeners[r.GetName()] = n
			}
		}
		err = send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: c.nonce(resp.GetNonce())})
		if err != nil {
			return err
		}
		c.accepted(t, resp.GetSystemVersionInfo())
		switch t {
		case resourcev3.ClusterType:
			err = subscribe(resourcev3.EndpointType, sortedNonEmpty(c.clusters))
		case resourcev3.EndpointType:
			err = subscribe(resourcev3.ListenerType, nil)
		case resourcev3.ListenerType:
			err = subscribe(resourcev3.RouteType, sortedNonEmpty(c.listeners))
		}
		if err != nil {
			return err
		}
	}
}

func sortedNonEmpty(m map[string]string) []string {
	var out []string
	for _, v := range m {
		if v != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// edsNames lists the EDS service names of the clusters in a response, sorted.
func edsNames(resources []*anypb.Any) ([]string, error) { return namesOf(resources, edsName) }

// namesOf lists, sorted and once each, the non-empty names name finds in resources.
func namesOf(resources []*anypb.Any, name func(*anypb.Any) (string, error)) ([]string, error) {
	var out []string
	for _, a := range resources {
		n, err := name(a)
		if err != nil {
			return nil, err
		}
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// edsName is the name an EDS cluster's endpoints are asked by; "" for a cluster
// of another type.
func edsName(a *anypb.Any) (string, error) {
	var cl clusterv3.Cluster
	if err := a.UnmarshalTo(&cl); err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	if cl.GetType() != clusterv3.Cluster_EDS {
		return "", nil
	}
	if n := cl.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n, nil
	}
	return cl.GetName(), nil
}

// rdsNames lists the route configurations the listeners of a response name.
func rdsNames(resources []*anypb.Any) ([]string, error) { return namesOf(resources, rdsName) }

// rdsName is the route configuration a listener's HTTP connection manager takes
// over RDS ("" when none). One per listener is all climesh makes.
func rdsName(a *anypb.Any) (string, error) {
	var l listenerv3.Listener
	if err := a.UnmarshalTo(&l); err != nil {
		return "", fmt.Errorf("listener: %w", err)
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil || !tc.MessageIs(&hcmv3.HttpConnectionManager{}) {
				continue
			}
			var hcm hcmv3.HttpConnectionManager
			if err := tc.UnmarshalTo(&hcm); err != nil {
				return "", fmt.Errorf("listener %s: %w", l.GetName(), err)
			}
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				return n, nil
			}
		}
	}
	return "", nil
}

// countingConn counts the bytes read from a connection.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}
