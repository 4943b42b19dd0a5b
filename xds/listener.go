package xds

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
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
		AccessLog:                 []*accesslogv3.AccessLog{edgeAccessLog()},
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

// edgeAccessLog writes one JSON line per tunnel to Envoy's stdout, with the
// edge policy's decision id (the ext_authz filter's dynamic metadata), so that
// a refusal a user reports is found in the access log and in the xds-server's
// decision log by the same id.
func edgeAccessLog() *accesslogv3.AccessLog {
	format, _ := structpb.NewStruct(map[string]any{
		"start_time":     "%START_TIME%",
		"method":         "%REQ(:METHOD)%",
		"path":           "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
		"response_code":  "%RESPONSE_CODE%",
		"response_flags": "%RESPONSE_FLAGS%",
		"duration_ms":    "%DURATION%",
		"upstream_host":  "%UPSTREAM_HOST%",
		"user":           "%REQ(X-CLIMESH-USER)%",
		"tenant":         "%REQ(X-CLIMESH-TENANT)%",
		"request_id":     "%REQ(X-REQUEST-ID)%",
		"decision_id":    "%DYNAMIC_METADATA(" + extAuthzFilterName + ":decision_id)%",
	})
	// Deterministic: the format is a map, and a version is a hash of the bytes.
	cfg := &anypb.Any{}
	anypb.MarshalFrom(cfg, &streamv3.StdoutAccessLog{AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
		Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: format},
	}}}, deterministic)
	return &accesslogv3.AccessLog{Name: "envoy.access_loggers.stdout", ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: cfg}}
}
