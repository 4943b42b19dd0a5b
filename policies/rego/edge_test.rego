package climesh.edge_test

import rego.v1

import data.climesh.edge

# req is the input ext_authz gives for a caller (input.identity: its user,
# tenant and roles, whatever the token's claims are called).
req(identity, pool) := {
	"attributes": {"request": {"http": {"method": "GET", "path": "/v1/rpc", "headers": {}}}, "contextExtensions": {"pool": pool}},
	"identity": identity,
}

test_open_pool_admits_any_tenant if {
	edge.allow.allowed with input as req({"user": "alice", "tenant": "acme"}, "copilot")
}

test_dedicated_pool_admits_its_tenant if {
	edge.allow.allowed with input as req({"user": "alice", "tenant": "acme"}, "acme-dedicated")
}

test_dedicated_pool_refuses_other_tenant if {
	d := edge.allow with input as req({"user": "bob", "tenant": "globex"}, "acme-dedicated")
	not d.allowed
	d.http_status == 403
	contains(d.body, `tenant "globex" may not use pool "acme-dedicated"`)
}

test_admin_uses_any_pool if {
	edge.allow.allowed with input as req({"user": "root", "tenant": "ops", "roles": ["admin"]}, "acme-dedicated")
}

test_no_identity_is_401 if {
	d := edge.allow with input as req({}, "copilot")
	not d.allowed
	d.http_status == 401
}

test_unknown_pool_refused if {
	not edge.allow.allowed with input as req({"user": "alice", "tenant": "acme"}, "nowhere")
}
