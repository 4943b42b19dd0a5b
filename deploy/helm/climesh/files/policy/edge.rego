# Edge admission: who may open a tunnel to which pool. Evaluated by the xds-server's
# ext_authz server for every tunnel, with an input shaped like the OPA-Envoy plugin's
# (input.attributes.request.http..., input.parsed_path, input.parsed_query) plus
# input.jwt_payload (the token Envoy's jwt_authn verified) and the route's pool in
# input.attributes.contextExtensions.pool.
#
# Result: the OPA-Envoy object form. climesh adds the signed identity assertion to
# every allowed tunnel itself.
package climesh.edge

import rego.v1

claims := input.jwt_payload

pool := input.attributes.contextExtensions.pool

tenant := claims.tenant

# Admins may use every pool.
admitted if "admin" in claims.roles

# A pool admits the tenants data.climesh.pools[pool].tenants lists ("*": every tenant).
admitted if tenant in data.climesh.pools[pool].tenants

admitted if {
	claims.sub
	"*" in data.climesh.pools[pool].tenants
}

allow := {"allowed": true} if {
	claims.sub
	admitted
} else := {"allowed": false, "http_status": 401, "body": "climesh: no verified identity"} if {
	not claims.sub
} else := {"allowed": false, "http_status": 403, "body": sprintf("climesh: tenant %q may not use pool %q", [tenant, pool])}
