package xds

import (
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/runtime/protoiface"
)

// encodedSnapshot is a node group's snapshot with every resource encoded once,
// when it is published, instead of once per stream that receives it.
//
// go-control-plane's snapshot cache (v0.14) wraps the snapshot's resources anew
// for every response and marshals them there: a change to a 10,000-endpoint pool
// cost 50–60 ms of CPU per Envoy, 89% of it proto.Marshal re-sizing the same
// ClusterLoadAssignment (bench/RESULTS.md, issue 16). Here each resource is
// encoded once, when its version is hashed, and held as a message of its own type
// whose marshal returns those bytes (encoded): the bytes Envoy receives are
// exactly the encoding of the validated resource, shared by every stream
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

// encodeSnapshot holds r's resources in their wire form, each under its name.
func encodeSnapshot(r *Resources, wire *wireForm, v Versions) *encodedSnapshot {
	return &encodedSnapshot{byType: map[string]*encodedResources{
		resourcev3.ClusterType:  encodeType(r.Clusters, wire.clusters, v.Clusters),
		resourcev3.EndpointType: encodeType(r.Endpoints, wire.endpoints, v.Endpoints),
		resourcev3.ListenerType: encodeType(r.Listeners, wire.listeners, v.Listeners),
		resourcev3.RouteType:    encodeType(r.Routes, wire.routes, v.Routes),
		resourcev3.SecretType:   encodeType(r.Secrets, wire.secrets, v.Secrets),
	}}
}

func encodeType[T types.Resource](items []T, wire [][]byte, version string) *encodedResources {
	enc := &encodedResources{
		version:  version,
		items:    make(map[string]types.ResourceWithTTL, len(items)),
		plain:    make(map[string]types.Resource, len(items)),
		versions: make(map[string]string, len(items)),
	}
	for i, it := range items {
		name := cachev3.GetResourceName(it)
		e := encoded(it, wire[i])
		enc.items[name] = types.ResourceWithTTL{Resource: e}
		enc.plain[name] = e
		enc.versions[name] = cachev3.HashResource(wire[i])
	}
	return enc
}

// encoded stands for m in the cache: a message of m's type (its descriptor, its
// type URL) whose marshal returns b, m's deterministic encoding, without copying
// it. Every stream's response then points at the same bytes until gRPC writes
// them out: a change to 1,000 Envoys costs one encoding, not 1,000 copies held
// at once. b is never written to (the capacity is cut to its length, so that an
// append by a caller copies).
func encoded(m proto.Message, b []byte) proto.Message {
	return &preEncoded{Message: m.ProtoReflect().New(), wire: b[:len(b):len(b)]}
}

type preEncoded struct {
	protoreflect.Message // an empty message of the resource's type
	wire                 []byte
}

func (p *preEncoded) ProtoReflect() protoreflect.Message   { return p }
func (p *preEncoded) Interface() protoreflect.ProtoMessage { return p }
func (p *preEncoded) ProtoMethods() *protoiface.Methods    { return &preEncodedMethods }

// preEncodedMethods leave Size unset, so that proto.Marshal hands Marshal an
// empty buffer rather than one of the right size to fill.
var preEncodedMethods = protoiface.Methods{
	Flags:   protoiface.SupportMarshalDeterministic,
	Marshal: marshalPreEncoded,
}

func marshalPreEncoded(in protoiface.MarshalInput) (protoiface.MarshalOutput, error) {
	p, ok := in.Message.(*preEncoded)
	if !ok {
		return protoiface.MarshalOutput{}, fmt.Errorf("xds: pre-encoded marshal called on %T", in.Message)
	}
	if len(in.Buf) == 0 {
		return protoiface.MarshalOutput{Buf: p.wire}, nil
	}
	return protoiface.MarshalOutput{Buf: append(in.Buf, p.wire...)}, nil
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
