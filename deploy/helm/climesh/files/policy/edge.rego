# Edge admission: who may open a tunnel to which pool. Evaluated by the xds-server's
# ext_authz server for every tunnel, with the OPA-Envoy plugin's input
# (input.attributes.request.http..., input.parsed_path, input.parsed_query,
# input.version) plus input.jwt_payload (the token Envoy's jwt_authn verified),
# input.identity (its user, tenant and roles, read by the claim names the config
# gives: jwt.user_claim, tenant_claim, roles_claim) and the route's pool in
# input.attributes.contextExtensions.pool.
#
# Result: the OPA-Envoy object form. climesh adds the signed identity assertion to
# every allowed tunnel itself.
package climesh.edge

import rego.v1

identity := input.identity

pool := input.attributes.contextExtensions.pool

tenant := identity.tenant

# Admins may use every pool.
admitted if "admin" in identity.roles

# A pool admits the tenants data.climesh.pools[pool].tenants lists ("*": every tenant).
admitted if tenant in data.climesh.pools[pool].tenants

admitted if {
	identity.user
	"*" in data.climesh.pools[pool].tenants
}

allow := {"allowed": true} if {
	identity.user
	admitted
} else := {"allowed": false, "http_status": 401, "body": "climesh: no verified identity"} if {
	not identity.user
} else := {"allowed": false, "http_status": 403, "body": sprintf("climesh: tenant %q may not use pool %q", [tenant, pool])}
