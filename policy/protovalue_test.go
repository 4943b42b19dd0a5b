package policy

import (
	"bytes"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestProtoValueIsProtojson: the attributes built straight into OPA's form
// equal protojson's text read by OPA, for the canned checks and for one that
// sets every kind of field the attributes have.
func TestProtoValueIsProtojson(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{"n": 1.5, "big": 1e21, "s": "x", "b": true, "z": nil,
		"list": []any{1.0, "two", map[string]any{"three": 3.0}}, "obj": map[string]any{"k": "v"}})
	rich := &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 61402}, Protocol: corev3.SocketAddress_UDP}}},
			Principal: "spiffe://x", Labels: map[string]string{"a": "b"}},
		Destination: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/p", Mode: 0o600}}}},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Date(2026, 11, 29, 9, 47, 47, 720_000_000, time.UTC)),
			Http: &authv3.AttributeContext_HttpRequest{Id: "1", Method: "POST", Path: "/people?lang=en", Host: "h", Size: 41,
				Body: `{"a":1}`, RawBody: []byte{0, 1, 2, 250}, Headers: map[string]string{"content-type": "application/json"},
				HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "k", Value: "v"}}}},
		},
		ContextExtensions: map[string]string{"pool": "copilot"},
		MetadataContext:   &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"ns": md}},
		TlsSession:        &authv3.AttributeContext_TLSSession{Sni: "edge.example"},
	}
	cases := map[string]*authv3.AttributeContext{"rich": rich}
	for _, name := range []string{"admitted.json", "other_tenant.json", "no_jwt.json"} {
		cases[name] = loadCheck(t, name).GetAttributes()
	}
	for name, attrs := range cases {
		raw, err := protojson.Marshal(attrs)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ast.ValueFromReader(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		got, err := protoValue(attrs.ProtoReflect())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Compare(want) != 0 {
			t.Errorf("%s:\n got %v\nwant %v", name, got, want)
		}
	}
}
