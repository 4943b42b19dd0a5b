package xds

import (
	"bytes"
	"maps"
	"path/filepath"
	"slices"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// Every resource of every golden input, encoded once, marshals to exactly the
// bytes of the resource it stands for, under the same name, with delta's
// version the hash of those bytes; marshalling it again returns the same bytes,
// not a copy.
func TestEncodedSnapshotSendsTheSameBytes(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range inputs {
		cfg, fleet := loadGoldenInput(t, in)
		groups, err := Translate(cfg, fleet)
		if err != nil {
			t.Fatal(err)
		}
		for group, res := range groups {
			enc, _, err := buildSnapshot(res)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][]types.Resource{
				resourcev3.ClusterType:  asResources(res.Clusters),
				resourcev3.EndpointType: asResources(res.Endpoints),
				resourcev3.ListenerType: asResources(res.Listeners),
				resourcev3.RouteType:    asResources(res.Routes),
				resourcev3.SecretType:   asResources(res.Secrets),
			}
			for typeURL, originals := range want {
				got := enc.GetResourcesAndTTL(typeURL)
				if len(got) != len(originals) {
					t.Fatalf("%s %s: %d encoded resources, want %d", in, group, len(got), len(originals))
				}
				for _, orig := range originals {
					name := cachev3.GetResourceName(orig)
					e, ok := got[name]
					if !ok {
						t.Fatalf("%s %s: %s %q missing; have %v", in, group, shortType(typeURL), name, slices.Sorted(maps.Keys(got)))
					}
					wantBytes, err := cachev3.MarshalResource(orig)
					if err != nil {
						t.Fatal(err)
					}
					gotBytes, err := cachev3.MarshalResource(e.Resource)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(gotBytes, wantBytes) {
						t.Fatalf("%s %s: %s %q encodes to %d bytes that differ from the resource's %d", in, group, shortType(typeURL), name, len(gotBytes), len(wantBytes))
					}
					again, _ := cachev3.MarshalResource(e.Resource)
					if len(gotBytes) > 0 && &again[0] != &gotBytes[0] {
						t.Fatalf("%s: marshalling %q twice made two copies: every stream would hold its own", in, name)
					}
					if e.Resource.ProtoReflect().Descriptor().FullName() != orig.ProtoReflect().Descriptor().FullName() {
						t.Fatalf("%s: encoded %q is a %s", in, name, e.Resource.ProtoReflect().Descriptor().FullName())
					}
					if v := enc.GetVersionMap(typeURL)[name]; v != cachev3.HashResource(wantBytes) {
						t.Fatalf("%s: delta version of %q is %q, want the hash of its bytes", in, name, v)
					}
					if enc.GetResources(typeURL)[name] != e.Resource {
						t.Fatalf("%s: GetResources and GetResourcesAndTTL differ for %q", in, name)
					}
				}
			}
		}
	}
}

func asResources[T types.Resource](items []T) []types.Resource {
	out := make([]types.Resource, len(items))
	for i, it := range items {
		out[i] = it
	}
	return out
}

// What a stream receives decodes to the published resources: the bytes are the
// resources', whatever holds them in the cache.
func TestStreamReceivesPublishedResources(t *testing.T) {
	f := newADSFixture(t)
	cfg, fleet := loadGoldenInput(t, "testdata/in/ring_hash_user.yaml")
	if err := f.pub.Update(t.Context(), cfg, fleet); err != nil {
		t.Fatal(err)
	}
	res, _, _ := f.pub.Snapshot("edge")
	s, err := f.client.StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for typeURL, want := range map[string][]types.Resource{
		resourcev3.ClusterType:  asResources(res.Clusters),
		resourcev3.EndpointType: asResources(res.Endpoints),
		resourcev3.ListenerType: asResources(res.Listeners),
	} {
		var names []string
		for _, w := range want {
			if typeURL == resourcev3.EndpointType {
				names = append(names, cachev3.GetResourceName(w))
			}
		}
		if err := s.Send(&discoveryv3.DiscoveryRequest{Node: edgeNode, TypeUrl: typeURL, ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
		got := recv(t, s)
		if len(got.GetResources()) != len(want) {
			t.Fatalf("%s: %d resources, want %d", shortType(typeURL), len(got.GetResources()), len(want))
		}
		for i, a := range got.GetResources() {
			m, err := a.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(m, want[i]) {
				t.Fatalf("%s: received %v, published %v", shortType(typeURL), m, want[i])
			}
			if len(m.ProtoReflect().GetUnknown()) != 0 {
				t.Fatalf("%s: received resource carries unknown fields", shortType(typeURL))
			}
		}
	}
}
