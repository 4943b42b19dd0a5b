package xds

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/climesh/climesh/model"
)

// adsFixture is a real gRPC ADS server on a loopback port 0 and a client for it.
type adsFixture struct {
	pub    *Publisher
	reg    *prometheus.Registry
	client discoveryv3.AggregatedDiscoveryServiceClient
}

func newADSFixture(t *testing.T) *adsFixture { t.Helper(); return newPacedADSFixture(t, 0) }

// newPacedADSFixture is newADSFixture with a push window of window bytes.
func newPacedADSFixture(t *testing.T, window int64) *adsFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg := prometheus.NewRegistry()
	pub := NewPublisher(zap.NewNop(), reg)
	srv := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(srv, pub.Server(ctx, window))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &adsFixture{pub: pub, reg: reg, client: discoveryv3.NewAggregatedDiscoveryServiceClient(conn)}
}

var edgeNode = &corev3.Node{Id: "envoy-1", Cluster: "edge"}

func recv(t *testing.T, s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient) *discoveryv3.DiscoveryResponse {
	t.Helper()
	type result struct {
		r   *discoveryv3.DiscoveryResponse
		err error
	}
	ch := make(chan result, 1)
	go func() { r, err := s.Recv(); ch <- result{r, err} }()
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatal(res.err)
		}
		return res.r
	case <-time.After(10 * time.Second):
		t.Fatal("no response from the ADS server in 10s")
		return nil
	}
}

func TestADSStateOfTheWorldNonceVersionAck(t *testing.T) {
	f := newADSFixture(t)
	cfg, fleet := loadGoldenInput(t, "testdata/in/ring_hash_user.yaml")
	if err := f.pub.Update(t.Context(), cfg, fleet); err != nil {
		t.Fatal(err)
	}
	_, want, _ := f.pub.Snapshot("edge")

	s, err := f.client.StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// First request: node, type, no version, no nonce.
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: edgeNode, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	cds := recv(t, s)
	if cds.GetVersionInfo() != want.Clusters || cds.GetNonce() == "" || len(cds.GetResources()) != 1 {
		t.Fatalf("CDS: version %q nonce %q resources %d; want version %q, a nonce, 1 resource", cds.GetVersionInfo(), cds.GetNonce(), len(cds.GetResources()), want.Clusters)
	}
	// ACK: the version and nonce we were sent.
	s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: cds.GetVersionInfo(), ResponseNonce: cds.GetNonce()})
	s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"pool/shared"}})
	eds := recv(t, s)
	if eds.GetVersionInfo() != want.Endpoints || eds.GetNonce() == cds.GetNonce() {
		t.Fatalf("EDS: version %q nonce %q; want version %q and a new nonce", eds.GetVersionInfo(), eds.GetNonce(), want.Endpoints)
	}
	s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"pool/shared"}, VersionInfo: eds.GetVersionInfo(), ResponseNonce: eds.GetNonce()})

	// The same content again pushes nothing; the next response must be the change.
	if err := f.pub.Update(t.Context(), cfg, fleet); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(f.pub.metrics.unchanged); got != 1 {
		t.Fatalf("unchanged updates counted %v, want 1", got)
	}
	p, _ := fleet.Pool("shared")
	in := p.Instances()
	in[1].Health = model.Unhealthy
	if err := f.pub.Update(t.Context(), cfg, model.NewFleet(model.NewPool("shared", in))); err != nil {
		t.Fatal(err)
	}
	_, next, _ := f.pub.Snapshot("edge")
	eds2 := recv(t, s)
	if eds2.GetTypeUrl() != resourcev3.EndpointType || eds2.GetVersionInfo() != next.Endpoints {
		t.Fatalf("after a health change got %s version %q, want endpoints version %q", eds2.GetTypeUrl(), eds2.GetVersionInfo(), next.Endpoints)
	}
	if next.Clusters != want.Clusters {
		t.Fatal("a health change changed the clusters version")
	}

	// NACK: error_detail with the nonce; reported per node, Envoy keeps the old version.
	s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"pool/shared"},
		VersionInfo: eds.GetVersionInfo(), ResponseNonce: eds2.GetNonce(), ErrorDetail: &status.Status{Code: 3, Message: "bad endpoint"}})
	waitFor(t, func() bool {
		return testutil.ToFloat64(f.pub.metrics.nacks.WithLabelValues("envoy-1", "endpoint")) == 1
	})
	nodes := f.pub.Nodes()
	if len(nodes) != 1 || nodes[0].LastNACK != "bad endpoint" || nodes[0].Acked[resourcev3.ClusterType] != want.Clusters {
		t.Fatalf("node status %+v", nodes)
	}
	if nodes[0].Acked[resourcev3.EndpointType] != want.Endpoints {
		t.Fatalf("a NACK moved the acked endpoints version to %q", nodes[0].Acked[resourcev3.EndpointType])
	}
	// The rejected version is not sent again; the next response is the next change.
	in[1].Health = model.Draining
	if err := f.pub.Update(t.Context(), cfg, model.NewFleet(model.NewPool("shared", in))); err != nil {
		t.Fatal(err)
	}
	_, third, _ := f.pub.Snapshot("edge")
	if eds3 := recv(t, s); eds3.GetVersionInfo() != third.Endpoints {
		t.Fatalf("after a NACK got version %q, want the next change %q (not the rejected %q)", eds3.GetVersionInfo(), third.Endpoints, next.Endpoints)
	}
	if n := testutil.CollectAndCount(f.pub.metrics.latency); n == 0 {
		t.Fatal("no push latency observed for the ACKs")
	}
}

func TestADSDelta(t *testing.T) {
	f := newADSFixture(t)
	cfg, fleet := loadGoldenInput(t, "testdata/in/ring_hash_user.yaml")
	if err := f.pub.Update(t.Context(), cfg, fleet); err != nil {
		t.Fatal(err)
	}
	s, err := f.client.DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: edgeNode, TypeUrl: resourcev3.ListenerType, ResourceNamesSubscribe: []string{"*"}})
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != "listener/edge" || resp.GetResources()[0].GetVersion() == "" {
		t.Fatalf("delta LDS: %v", resp.GetResources())
	}
	s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: resp.GetNonce()})
	waitFor(t, func() bool { return testutil.ToFloat64(f.pub.metrics.acks.WithLabelValues("listener")) == 1 })
}

func TestUpdateKeepsLastGoodSnapshot(t *testing.T) {
	f := newADSFixture(t)
	cfg, fleet := loadGoldenInput(t, "testdata/in/ring_hash_user.yaml")
	if err := f.pub.Update(t.Context(), cfg, fleet); err != nil {
		t.Fatal(err)
	}
	_, good, _ := f.pub.Snapshot("edge")
	cfg.Pools[0].ConnectTimeout = -time.Second // Envoy's validation rules refuse it
	err := f.pub.Update(t.Context(), cfg, fleet)
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("invalid cluster accepted: %v", err)
	}
	if _, now, _ := f.pub.Snapshot("edge"); now != good {
		t.Fatal("a rejected update replaced the last good snapshot")
	}
	if testutil.ToFloat64(f.pub.metrics.rejected) != 1 {
		t.Fatal("rejection not counted")
	}
}

func TestUnknownNodeClusterGetsDefaultGroup(t *testing.T) {
	f := newADSFixture(t)
	cfg, fleet := loadGoldenInput(t, "testdata/in/shared_sessions_node_groups.yaml")
	if err := f.pub.Update(t.Context(), cfg, fleet); err != nil {
		t.Fatal(err)
	}
	for cluster, want := range map[string]string{"internal": "internal", "public": "public", "mystery": "public", "": "public"} {
		if got := f.pub.groupOf(&corev3.Node{Cluster: cluster}); got != want {
			t.Errorf("node cluster %q maps to group %q, want %q", cluster, got, want)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An Envoy that reconnects opens its new stream before the server sees the old
// one close: the node stays connected (bench/fanout found /debug/xds counting
// reconnected nodes as gone).
func TestReconnectedNodeStaysConnected(t *testing.T) {
	p := NewPublisher(zap.NewNop(), prometheus.NewRegistry())
	cb := p.callbacks()
	node := &corev3.Node{Id: "envoy-1", Cluster: "edge"}
	connected := func() bool {
		for _, n := range p.Nodes() {
			if n.NodeID == "envoy-1" {
				return n.Connected
			}
		}
		return false
	}
	cb.StreamOpenFunc(t.Context(), 1, "")
	cb.StreamRequestFunc(1, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	cb.StreamOpenFunc(t.Context(), 2, "")
	cb.StreamRequestFunc(2, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	cb.StreamClosedFunc(1, node)
	if !connected() {
		t.Fatal("the old stream's close disconnected a node whose new stream is open")
	}
	cb.StreamClosedFunc(2, node)
	if connected() {
		t.Fatal("the node's last stream closed and it still counts as connected")
	}
}
