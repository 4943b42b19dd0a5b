{{/*
Labels on every object: the kustomize base's (part-of) and Helm's own, which the
test comparing the chart with the base leaves out.
*/}}
{{- define "climesh.labels" -}}
app.kubernetes.io/part-of: climesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* An image reference from {repository, tag}. */}}
{{- define "climesh.image" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* The port of a host:port address. */}}
{{- define "climesh.port" -}}
{{ splitList ":" . | last }}
{{- end }}

{{/*
The xds-server's config: xdsServer.config plus what the chart decides — where
Consul is, where the mounted files are, and ext_authz through the xds-server's
Service in the release's namespace. Checks what only the chart can: the sidecars'
pool and Envoy's node group against the config.
*/}}
{{- define "climesh.config" -}}
{{- $v := .Values -}}
{{- $c := deepCopy $v.xdsServer.config -}}
{{- $pool := false -}}
{{- range $i, $p := $c.pools -}}
{{- if eq (toString $p.consul_service) $v.copilot.pool }}{{ $pool = true }}{{ end -}}
{{- end -}}
{{- if not $pool -}}
{{- fail (printf "copilot.pool: %q is the consul_service of no pool in xdsServer.config.pools" $v.copilot.pool) -}}
{{- end -}}
{{- range $i, $l := $c.listeners -}}
{{- if ne (toString $l.node_group) $v.envoy.nodeGroup -}}
{{- fail (printf "xdsServer.config.listeners[%d].node_group: %q, but Envoy runs as envoy.nodeGroup %q" $i (toString $l.node_group) $v.envoy.nodeGroup) -}}
{{- end -}}
{{- if gt (len (toString $l.name)) 15 -}}
{{- fail (printf "xdsServer.config.listeners[%d].name: %q names Envoy's container port, at most 15 characters" $i (toString $l.name)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "consul" (mergeOverwrite (default (dict) (get $c "consul")) (dict "address" $v.consul.address)) -}}
{{- $_ = set $c "identity" (mergeOverwrite (default (dict) (get $c "identity")) (dict "edge_credential_file" "/etc/climesh/edge/credential")) -}}
{{- $ext := printf "climesh-xds-server.%s.svc:%s" .Release.Namespace (include "climesh.port" $c.server.xds_address) -}}
{{- $_ = set $c "policy" (mergeOverwrite (default (dict) (get $c "policy")) (dict "source" "/etc/climesh/policy" "identity_keys_file" "/etc/climesh/identity/identity-keys.json" "ext_authz_address" $ext)) -}}
{{- toYaml $c -}}
{{- end }}

{{/* The policy's ConfigMap: the chart's, or the one policy.configMap names. */}}
{{- define "climesh.policyConfigMap" -}}
{{ default "climesh-policy" .Values.policy.configMap }}
{{- end }}
