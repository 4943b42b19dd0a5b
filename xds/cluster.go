package xds

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/ring"
)

// adsSource points EDS and RDS at the ADS stream the resource arrived on.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// ringSize is Envoy's minimum_ring_size. Envoy gives each of N equal hosts
// ceil(min/N) entries; when that is exactly `entries` for every N, a host keeps
// the same entries as N changes, and a key moves only when its own host leaves or
// a new host's entry lands in front of it (~1/N of the keys). Envoy builds the
// ring from healthy hosts only (outside panic), so N counts those.
//
// min = entries × N would do, but then every health flip changes the cluster as
// well as its endpoints, and Envoy rebuilds the cluster. Any min with
// (entries−1)·N < min ≤ entries·N gives the same `entries` per host, so min is
// entries × ring.Bucket(N): the same for every N in a bucket, and the cluster
// changes only when N leaves it (at 256 entries per host, 162 of 1,000 health
// flips near 1,000 hosts change the cluster, 24 of 1,000 near 10,000; below 256
// hosts every flip still does).
func ringSize(lb config.LB, healthy int) uint64 {
	return ring.Size(lb.RingEntriesPerHost, lb.MinRingSize, lb.MaxRingSize, healthy)
}

// buildCluster makes a pool's EDS cluster with its load-balancing policy, circuit
// breakers and outlier detection. healthy is the number of instances Envoy will put
// on the ring.
func buildCluster(p *config.Pool, healthy int) (*clusterv3.Cluster, error) {
	c := &clusterv3.Cluster{
		Name:                 clusterName(p.Name),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig:   adsSource(),
			ServiceName: clusterName(p.Name),
		},
		ConnectTimeout: durationpb.New(p.ConnectTimeout),
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{
			HealthyPanicThreshold: &typev3.Percent{Value: *p.LB.PanicThresholdPercent},
		},
		CircuitBreakers: &clusterv3.CircuitBreakers{
			Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				Priority:           corev3.RoutingPriority_DEFAULT,
				MaxConnections:     wrapperspb.UInt32(p.CircuitBreakers.MaxConnections),
				MaxPendingRequests: wrapperspb.UInt32(p.CircuitBreakers.MaxPendingRequests),
				MaxRequests:        wrapperspb.UInt32(p.CircuitBreakers.MaxRequests),
				MaxRetries:         wrapperspb.UInt32(p.CircuitBreakers.MaxRetries),
			}},
		},
	}
	switch p.LB.Policy {
	case config.RingHash:
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
			MinimumRingSize: wrapperspb.UInt64(ringSize(p.LB, healthy)),
			MaximumRingSize: wrapperspb.UInt64(p.LB.MaxRingSize),
			HashFunction:    clusterv3.Cluster_RingHashLbConfig_XX_HASH,
		}}
	case config.Maglev:
		c.LbPolicy = clusterv3.Cluster_MAGLEV
		c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{
			TableSize: wrapperspb.UInt64(p.LB.TableSize),
		}}
	case config.RoundRobin:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	case config.LeastRequest:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	}
	if p.LB.Policy.Hashing() && p.LB.HashBalanceFactor > 0 {
		c.CommonLbConfig.ConsistentHashingLbConfig = &clusterv3.Cluster_CommonLbConfig_ConsistentHashingLbConfig{
			HashBalanceFactor: wrapperspb.UInt32(p.LB.HashBalanceFactor),
		}
	}
	if o := p.OutlierDetection; o.On() {
		c.OutlierDetection = &clusterv3.OutlierDetection{
			Consecutive_5Xx:    wrapperspb.UInt32(o.Consecutive5xx),
			Interval:           durationpb.New(o.Interval),
			BaseEjectionTime:   durationpb.New(o.BaseEjectionTime),
			MaxEjectionPercent: wrapperspb.UInt32(o.MaxEjectionPercent),
		}
		if o.ConsecutiveLocalFailures > 0 {
			c.OutlierDetection.SplitExternalLocalOriginErrors = true
			c.OutlierDetection.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(o.ConsecutiveLocalFailures)
		}
	}
	return c, nil
}
