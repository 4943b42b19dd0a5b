package xds

import (
	"net"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/climesh/climesh/config"
)

const (
	extAuthzFilterName  = "envoy.filters.http.ext_authz"
	extAuthzClusterName = "climesh/ext_authz"
)

// extAuthz asks the xds-server's OPA for every tunnel, passing the verified JWT
// payload. Fail closed: an error or a timeout refuses the tunnel, with 503 rather
// than a denial's 403, so that a client can tell an outage (try again) from a
// refusal (do not).
func extAuthz(c *config.Config) httpFilter {
	return httpFilter{name: extAuthzFilterName, config: &extauthzv3.ExtAuthz{
		Services: &extauthzv3.ExtAuthz_GrpcService{GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: extAuthzClusterName}},
			Timeout:         durationpb.New(c.Policy.Timeout),
		}},
		TransportApiVersion:       corev3.ApiVersion_V3,
		FailureModeAllow:          false,
		StatusOnError:             &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		MetadataContextNamespaces: []string{jwtFilterName},
	}}
}

// extAuthzPerRoute tells the policy which pool a route leads to.
func extAuthzPerRoute(pool string) (*anypb.Any, error) {
	return anypb.New(&extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_CheckSettings{
		CheckSettings: &extauthzv3.CheckSettings{ContextExtensions: map[string]string{"pool": pool}},
	}})
}

// extAuthzCluster reaches the xds-server's gRPC port over HTTP/2; over TLS, with
// Envoy's client certificate for mTLS, when server.tls is on (policy.ext_authz_tls).
func extAuthzCluster(c *config.Config) (*clusterv3.Cluster, error) {
	host, port, _ := net.SplitHostPort(c.Policy.ExtAuthzAddress) // validated by config
	portNum, _ := strconv.Atoi(port)
	h2, err := anypb.New(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	var socket *corev3.TransportSocket // nil: plaintext
	if t := c.Policy.ExtAuthzTLS; t != nil {
		var client *tlsv3.TlsCertificate
		if t.CertFile != "" {
			client = &tlsv3.TlsCertificate{
				CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.CertFile}},
				PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.KeyFile}},
			}
		}
		if socket, err = upstreamTLS(host, t.TrustedCAFile, client); err != nil {
			return nil, err
		}
	}
	cl := &clusterv3.Cluster{
		Name:                          extAuthzClusterName,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:                durationpb.New(c.Policy.Timeout),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
		TransportSocket:               socket,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: extAuthzClusterName,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, portNum)}},
			}}}},
		},
	}
	return cl, nil
}
