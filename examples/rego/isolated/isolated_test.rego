# Pattern 1, one CLI per user: tenant "solo" has the pool "isolated" to itself
# (sidecars run --mode isolated there: a CLI per verified user). The route sends
# x-climesh-tenant: solo to that pool; this data makes the edge admit only solo.
package examples.isolated_test

import rego.v1

import data.climesh.edge
import data.climesh.session

tunnel(sub, tenant, pool) := {
	"attributes": {"request": {"http": {"method": "GET", "path": "/v1/rpc", "headers": {}}}, "contextExtensions": {"pool": pool}},
	"jwt_payload": {"sub": sub, "tenant": tenant},
}

test_solo_users_reach_their_pool if {
	edge.allow.allowed with input as tunnel("sam", "solo", "isolated")
}

test_other_tenants_kept_out if {
	d := edge.allow with input as tunnel("alice", "acme", "isolated")
	not d.allowed
	d.http_status == 403
}

# Inside a user's own CLI the session rules still apply: a user owns their sessions.
test_own_sessions_only if {
	rec := {"owner": "sam", "tenant": "solo", "mode": "isolated", "members": []}
	session.decision.allow with input as {"user": "sam", "tenant": "solo", "roles": [], "method": "session.send", "session_id": "s1", "record": rec}
	not session.decision.allow with input as {"user": "sue", "tenant": "solo", "roles": [], "method": "session.send", "session_id": "s1", "record": rec}
}
