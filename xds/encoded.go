package xds

import (
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
)

// encodedSnapshot is a node group's snapshot with every resource encoded once,
// when it is published, instead of once per stream that receives it.
//
// go-control-plane's snapshot cache (v0.14) wraps the snapshot's resources anew
// for every response and marshals them there: a change to a 10,000-endpoint pool
// cost 50–60 ms of CPU per Envoy, 89% of it proto.Marshal re-sizing the same
// ClusterLoadAssignment (bench/RESULTS.md, issue 16). Here each resource is held
// as a message of its own type whose only content is its deterministic encoding,
// kept as unknown fields, so that the cache's marshal is a copy of those bytes;
// the bytes Envoy receives are exactly the encoding of the validated resource
// (TestEncodedSnapshotSendsTheSameBytes). The cache's own ADS rules — names
// matched, versions compared, delta's per-resource versions — are untouched:
// this type only implements cachev3.ResourceSnapshot, with names and versions
// taken from the original resources, since an encoded message has no fields
// of its own to read a name from.
type encodedSnapshot struct {
	byType map[string]*encodedResources // by type URL
}

type encodedResources struct {
	version  string                           // the type's version (SotW)
	items    map[string]types.ResourceWithTTL // by name
	plain    map[string]types.Resource        // the same, without TTLs
	versions map[string]string                // by name: hash of the encoding (delta)
}

var _ cachev3.ResourceSnapshot = (*encodedSnapshot)(nil)

// encodeSnapshot encodes every resource of snap, a snapshot already validated
// and found consistent.
func encodeSnapshot(snap *cachev3.Snapshot) (*encodedSnapshot, error) {
	out := &encodedSnapshot{byType: map[string]*encodedResources{}}
	for i, res := range snap.Resources {
		typeURL, err := cachev3.GetResponseTypeURL(types.ResponseType(i))
		if err != nil {
			return nil, err
		}
		enc := &encodedResources{
			version:  res.Version,
			items:    make(map[string]types.ResourceWithTTL, len(res.Items)),
			plain:    make(map[string]types.Resource, len(res.Items)),
			versions: make(map[string]string, len(res.Items)),
		}
		for name, item := range res.Items {
			b, err := cachev3.MarshalResource(item.Resource)
			if err != nil {
				return nil, fmt.Errorf("encode %s %q: %w", shortType(typeURL), name, err)
			}
			e := encoded(item.Resource, b)
			enc.items[name] = types.ResourceWithTTL{Resource: e, TTL: item.TTL}
			enc.plain[name] = e
			enc.versions[name] = cachev3.HashResource(b)
		}
		out.byType[typeURL] = enc
	}
	return out, nil
}

// encoded is a message of m's type that marshals to b and holds nothing else.
func encoded(m proto.Message, b []byte) proto.Message {
	e := m.ProtoReflect().New()
	e.SetUnknown(b)
	return e.Interface()
}

func (s *encodedSnapshot) GetVersion(typeURL string) string {
	if r := s.byType[typeURL]; r != nil {
		return r.version
	}
	return ""
}

func (s *encodedSnapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	if r := s.byType[typeURL]; r != nil {
		return r.items
	}
	return nil
}

func (s *encodedSnapshot) GetResources(typeURL string) map[string]types.Resource {
	if r := s.byType[typeURL]; r != nil {
		return r.plain
	}
	return nil
}

// ConstructVersionMap has nothing to do: the versions were taken when the
// resources were encoded.
func (s *encodedSnapshot) ConstructVersionMap() error { return nil }

func (s *encodedSnapshot) GetVersionMap(typeURL string) map[string]string {
	if r := s.byType[typeURL]; r != nil {
		return r.versions
	}
	return nil
}
