# Pattern 1, one CLI per user: tenant "solo" has the pool "isolated" to itself
# (sidecars run --mode isolated there: a CLI per verified user). The route sends
# x-climesh-tenant: solo to that pool; this data makes the edge admit only solo.
#
# Since the OS separates each user's CLI, the pool's data opens what a shared CLI
# must refuse: all of the CLI's built-in tools (builtin_tools ["*"]), host session
# options (working directories, MCP servers) and file attachments. The shared pool
# "copilot" opens none of them.
package examples.isolated_test

import rego.v1

import data.climesh.edge
import data.climesh.session

no_session := "access denied: no such session for this caller"

tunnel(sub, tenant, pool) := {
	"attributes": {"request": {"http": {"method": "GET", "path": "/v1/rpc", "headers": {}}}, "contextExtensions": {"pool": pool}},
	"identity": {"user": sub, "tenant": tenant},
}

msg(user, tenant, pool, method, params, rec) := {
	"user": user, "tenant": tenant, "roles": [],
	"pool": pool, "mode": {"isolated": "isolated", "copilot": "shared"}[pool], "kind": "request",
	"method": method, "session_id": params.sessionId, "params": params, "record": rec,
}

# sam (tenant solo) in their own CLI, and alice (tenant acme) in the shared pool.
sam(method, params, rec) := msg("sam", "solo", "isolated", method, params, rec)

alice(method, params, rec) := msg("alice", "acme", "copilot", method, params, rec)

sams_session := {"owner": "sam", "tenant": "solo", "mode": "isolated", "members": []}

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
	send := {"sessionId": "s1", "prompt": "hi"}
	session.decision.allow with input as sam("session.send", send, sams_session)
	d := session.decision with input as msg("sue", "solo", "isolated", "session.send", send, sams_session)
	not d.allow
	d.reason == no_session

	# sue learns no more than if s1 did not exist.
	unknown := session.decision with input as msg("sue", "solo", "isolated", "session.send", send, null)
	unknown.reason == d.reason
}

# Identity is (tenant, user): a "sam" of another tenant is someone else.
test_same_user_name_in_another_tenant_is_refused if {
	d := session.decision with input as msg("sam", "acme", "isolated", "session.send", {"sessionId": "s1", "prompt": "hi"}, sams_session)
	not d.allow
	d.reason == no_session
}

test_isolated_pool_opens_all_builtin_tools if {
	create := {"sessionId": "n1", "model": "gpt-5"}
	d := session.decision with input as sam("session.create", create, null)
	d.allow
	d.builtin_tools == ["*"]
	shared := session.decision with input as alice("session.create", create, null)
	shared.allow
	shared.builtin_tools == []
}

test_isolated_pool_opens_more_session_options if {
	create := {"sessionId": "n1", "workingDirectory": "/home/sam/project", "mcpServers": {"fs": {"command": "mcp-fs"}}}
	session.decision.allow with input as sam("session.create", create, null)
	d := session.decision with input as alice("session.create", create, null)
	not d.allow
	d.reason == `access denied: session option "mcpServers" is not allowed here`
}

# What the data does not list stays refused, even in one's own CLI.
test_unlisted_options_still_refused if {
	d := session.decision with input as sam("session.create", {"sessionId": "n1", "gitHubToken": "ghp_x"}, null)
	not d.allow
	d.reason == `access denied: session option "gitHubToken" is not allowed here`
}

test_file_attachments_in_own_cli_only if {
	send := {"sessionId": "s1", "prompt": "review", "attachments": [{"type": "file", "path": "/home/sam/project/main.go"}]}
	session.decision.allow with input as sam("session.send", send, sams_session)
	alices_session := {"owner": "alice", "tenant": "acme", "mode": "shared", "members": []}
	d := session.decision with input as alice("session.send", send, alices_session)
	not d.allow
	d.reason == `access denied: session option "attachments" is not allowed here`
}
