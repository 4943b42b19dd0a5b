package xds

import (
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/climesh/climesh/config"
)

// buildListener makes an edge listener: one HTTP connection manager that accepts
// WebSocket upgrades and takes its routes over ADS.
func buildListener(l *config.Listener, c *config.Config) (*listenerv3.Listener, error) {
	var filters []*hcmv3.HttpFilter
	for _, f := range httpFilters(c) {
		hf, err := f.build()
		if err != nil {
			return nil, err
		}
		filters = append(filters, hf)
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: l.Name,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeConfigName(l.Name),
		}},
		HttpFilters:    filters,
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		// A tunnel carries an agent turn that may stay silent for minutes.
		StreamIdleTimeout: durationpb.New(l.IdleTimeout),
		RequestTimeout:    durationpb.New(0),
		UseRemoteAddress:  wrapperspb.Bool(true),
		NormalizePath:     wrapperspb.Bool(true),
		MergeSlashes:      true,
		// x_climesh_user must not pass for x-climesh-user anywhere downstream.
		CommonHttpProtocolOptions: headersWithUnderscoresRejected(),
	}
	a, err := anypb.New(hcm)
	if err != nil {
		return nil, err
	}
	lis := &listenerv3.Listener{
		Name:    listenerName(l.Name),
		Address: socketAddress(l.Address, l.Port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a},
			}},
		}},
	}
	return lis, nil
}
