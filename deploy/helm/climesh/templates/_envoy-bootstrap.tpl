{{/*
Envoy's bootstrap: who it is (node.cluster = its climesh node group) and where the
xds-server is; everything else comes over ADS (delta).
*/}}
{{- define "climesh.envoyBootstrap" -}}
node:
  cluster: {{ .Values.envoy.nodeGroup }}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: climesh-xds}}]
    set_node_on_first_message_only: true
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
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
{{- end }}
