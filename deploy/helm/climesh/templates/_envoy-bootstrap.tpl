{{/*
Envoy's bootstrap: who it is (node.cluster = its climesh node group) and where the
xds-server is; everything else comes over ADS (delta).
*/}}
{{- define "climesh.envoyBootstrap" -}}
node:
  cluster: {{ .Values.envoy.nodeGroup }}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: {{ include "climesh.envoyAdminPort" . }}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: climesh-xds}}]
    set_node_on_first_message_only: true
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  listeners:
    # Prometheus scrapes Envoy here (the pod's prometheus.io/port), as Envoy Gateway's
    # bootstrap has it: this listener routes GET /stats/prometheus, and nothing else, to
    # the admin, which stays on the pod's loopback.
    - name: envoy-stats
      address: {socket_address: {address: 0.0.0.0, port_value: {{ include "climesh.envoyStatsPort" . }}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: envoy-stats
                # One request per connection: a scraper's kept-alive connection would
                # count as open and hold the shutdown-manager's drain.
                common_http_protocol_options: {max_requests_per_connection: 1}
                route_config:
                  name: envoy-stats
                  virtual_hosts:
                    - name: envoy-stats
                      domains: ["*"]
                      routes:
                        - match: {path: /stats/prometheus, headers: [{name: ":method", string_match: {exact: GET}}]}
                          route: {cluster: envoy-admin}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
    - name: climesh-xds
      type: STRICT_DNS
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
      load_assignment:
        cluster_name: climesh-xds
        endpoints:
          - lb_endpoints:
              - endpoint: {address: {socket_address: {address: climesh-xds-server.{{ .Release.Namespace }}.svc, port_value: {{ include "climesh.port" .Values.xdsServer.config.server.xds_address }}}}}
    # The admin, for the stats listener only.
    - name: envoy-admin
      type: STATIC
      connect_timeout: 0.25s
      load_assignment:
        cluster_name: envoy-admin
        endpoints:
          - lb_endpoints:
              - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{ include "climesh.envoyAdminPort" . }}}}}
{{- end }}

{{/* Envoy's admin: the pod's loopback only (the shutdown-manager drains through it). */}}
{{- define "climesh.envoyAdminPort" -}}
9901
{{- end }}
{{- define "climesh.envoyAdmin" -}}
127.0.0.1:{{ include "climesh.envoyAdminPort" . }}
{{- end }}

{{/* Envoy's stats listener (Prometheus): GET /stats/prometheus, routed to the admin. */}}
{{- define "climesh.envoyStatsPort" -}}
19001
{{- end }}

{{/* The shutdown-manager's port: Envoy's preStop hook GETs /shutdown there. */}}
{{- define "climesh.shutdownPort" -}}
19002
{{- end }}
