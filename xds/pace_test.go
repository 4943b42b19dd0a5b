package xds

import (
	"context"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// With room for one large response, a second stream gets its endpoints only
// when the first ACKs, and a third when the second closes without answering;
// small responses are never held.
func TestLargeResponsesWaitForRoom(t *testing.T) {
	cfg, fleet := benchInput(t, 2000) // a ~150 KB ClusterLoadAssignment
	res, err := Translate(cfg, fleet)
	if err != nil {
		t.Fatal(err)
	}
	size := proto.Size(res["edge"].Endpoints[0])
	if size < pacedMin {
		t.Fatalf("endpoints of %d bytes are not large enough to be paced", size)
	}
	f := newPacedADSFixture(t, int64(size+size/2))
	if err := f.pub.Update(t.Context(), cfg, fleet); err != nil {
		t.Fatal(err)
	}
	type stream = discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancels := map[string]context.CancelFunc{}
	open := func(id string) stream {
		ctx, cancel := context.WithCancel(t.Context())
		t.Cleanup(cancel)
		cancels[id] = cancel
		s, err := f.client.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A small response first: never held, even while the window is full.
		s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: id, Cluster: "edge"}, TypeUrl: resourcev3.ListenerType})
		lds := recv(t, s)
		s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, VersionInfo: lds.GetVersionInfo(), ResponseNonce: lds.GetNonce()})
		s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"pool/shared"}})
		return s
	}
	recvAsync := func(s stream) <-chan *discoveryv3.DiscoveryResponse {
		ch := make(chan *discoveryv3.DiscoveryResponse, 1)
		go func() {
			r, err := s.Recv()
			if err == nil {
				ch <- r
			}
		}()
		return ch
	}
	first := open("envoy-1")
	eds1 := recv(t, first)
	if eds1.GetTypeUrl() != resourcev3.EndpointType {
		t.Fatalf("first stream got %s", eds1.GetTypeUrl())
	}
	second := open("envoy-2")
	got2 := recvAsync(second)
	select {
	case <-got2:
		t.Fatal("a second large response was sent while the first held the whole window")
	case <-time.After(300 * time.Millisecond):
	}
	if g := testutil.ToFloat64(f.pub.metrics.pacedBytes); g < float64(size) || g > float64(size+1024) {
		t.Fatalf("unanswered bytes %v, want the first response's (%d bytes of endpoints and its envelope)", g, size)
	}
	first.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"pool/shared"},
		VersionInfo: eds1.GetVersionInfo(), ResponseNonce: eds1.GetNonce()})
	select {
	case r := <-got2:
		if r.GetTypeUrl() != resourcev3.EndpointType {
			t.Fatalf("second stream got %s", r.GetTypeUrl())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first stream's ACK did not let the second response go")
	}
	third := open("envoy-3")
	got3 := recvAsync(third)
	select {
	case <-got3:
		t.Fatal("a third large response was sent while the second held the window")
	case <-time.After(300 * time.Millisecond):
	}
	cancels["envoy-2"]() // the second Envoy goes away without answering
	select {
	case <-got3:
	case <-time.After(5 * time.Second):
		t.Fatal("the room of a closed stream was not given back")
	}
}
