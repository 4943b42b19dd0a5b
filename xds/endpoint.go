package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/climesh/climesh/model"
)

var healthStatus = map[model.Health]corev3.HealthStatus{
	model.Healthy:   corev3.HealthStatus_HEALTHY,
	model.Draining:  corev3.HealthStatus_DRAINING,
	model.Unhealthy: corev3.HealthStatus_UNHEALTHY,
}

// buildLoadAssignment lists a pool's instances with their health. Unhealthy and
// draining instances stay listed so that Envoy's admin and stats show them; Envoy
// picks neither for a new connection.
func buildLoadAssignment(pool string, p model.Pool) *endpointv3.ClusterLoadAssignment {
	lbs := make([]*endpointv3.LbEndpoint, 0, p.Len())
	p.Each(func(in model.Instance) {
		lbs = append(lbs, &endpointv3.LbEndpoint{
			HealthStatus: healthStatus[in.Health],
			Metadata:     hashKeyMetadata(in.ID),
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Hostname: in.ID,
				Address:  socketAddress(in.Address, in.Port),
			}},
		})
	})
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: clusterName(pool)}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

// hashKeyMetadata makes ring hash and Maglev place the host by its instance id
// rather than its address (Envoy reads envoy.lb/hash_key): a CLI that comes back on
// a new port keeps its users. (use_hostname_for_hashing would do the same, but
// Envoy allows it on DNS clusters only.)
func hashKeyMetadata(id string) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"envoy.lb": {Fields: map[string]*structpb.Value{"hash_key": structpb.NewStringValue(id)}},
	}}
}

func socketAddress(ip string, port int) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}
