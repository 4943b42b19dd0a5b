// Package xds translates climesh's config and the discovered Fleet into Envoy
// resources, and publishes them over ADS.
//
// Translate is a pure function: no clients, no clock, no state kept between calls;
// the same input gives the same bytes and the same versions. The builders beside it
// (cluster.go, endpoint.go, listener.go, route.go, filters.go) each make one Envoy
// type. publish.go is the only part that talks to Envoy.
package xds

import (
	"fmt"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/model"
)

// Resources is what one node group receives, each list sorted by name.
type Resources struct {
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	// Secrets hold values that must not be shown: read them only through
	// RedactSecret, except to send them to Envoy.
	Secrets []*tlsv3.Secret
}

// Stable, hierarchical resource names.
func clusterName(pool string) string         { return "pool/" + pool }
func listenerName(listener string) string    { return "listener/" + listener }
func routeConfigName(listener string) string { return "listener/" + listener }

// Translate builds every node group's resources. A pool in cfg that the fleet lacks
// gets a cluster with no endpoints; a fleet pool that cfg does not name is ignored.
func Translate(cfg *config.Config, fleet model.Fleet) (map[string]*Resources, error) {
	clusters := make([]*clusterv3.Cluster, 0, len(cfg.Pools))
	endpoints := make([]*endpointv3.ClusterLoadAssignment, 0, len(cfg.Pools))
	for i := range cfg.Pools {
		p := &cfg.Pools[i]
		instances, _ := fleet.Pool(p.Name)
		c, err := buildCluster(p, healthyCount(instances))
		if err != nil {
			return nil, fmt.Errorf("pool %q: %w", p.Name, err)
		}
		clusters = append(clusters, c)
		endpoints = append(endpoints, buildLoadAssignment(p.Name, instances))
	}
	if cfg.Policy.On() {
		c, err := extAuthzCluster(cfg)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		clusters = append(clusters, c)
	}
	for _, p := range cfg.JWT.Providers {
		if p.RemoteJWKS != nil {
			c, err := jwksCluster(p)
			if err != nil {
				return nil, fmt.Errorf("jwt provider %q: %w", p.Name, err)
			}
			clusters = append(clusters, c)
		}
	}
	sortByName(clusters, (*clusterv3.Cluster).GetName)
	sortByName(endpoints, (*endpointv3.ClusterLoadAssignment).GetClusterName)

	var secrets []*tlsv3.Secret
	if cred := cfg.Identity.EdgeCredential; cred != "" {
		secrets = append(secrets, edgeCredential(cred))
	}

	out := map[string]*Resources{}
	for _, group := range cfg.NodeGroups() {
		out[group] = &Resources{Clusters: clusters, Endpoints: endpoints, Secrets: secrets}
	}
	for i := range cfg.Listeners {
		l := &cfg.Listeners[i]
		lis, err := buildListener(l, cfg)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		r := out[l.NodeGroup]
		r.Listeners = append(r.Listeners, lis)
		rc, err := buildRouteConfig(l, cfg)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		r.Routes = append(r.Routes, rc)
	}
	for _, r := range out {
		sortByName(r.Listeners, (*listenerv3.Listener).GetName)
		sortByName(r.Routes, (*routev3.RouteConfiguration).GetName)
	}
	return out, nil
}

func healthyCount(p model.Pool) int {
	n := 0
	p.Each(func(in model.Instance) {
		if in.Health == model.Healthy {
			n++
		}
	})
	return n
}

func sortByName[T any](items []T, name func(T) string) {
	slices.SortFunc(items, func(a, b T) int { return strings.Compare(name(a), name(b)) })
}
