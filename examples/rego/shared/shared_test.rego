# Pattern 2, a shared CLI with sessions isolated per user: every tenant uses the
# pool "copilot"; the session registry records each session's owner and tenant,
# and the per-message policy lets only that (tenant, user) — or an admin — touch it.
#
# The CLI's host is shared by every tenant, so the pool's data opens nothing that
# reaches it: no built-in tools, no host session options, no path attachments.
package examples.shared_test

import rego.v1

import data.climesh.edge
import data.climesh.session

# Every refusal about a session reads the same, whether the session is someone
# else's or does not exist: a caller cannot probe for other users' session ids.
no_session := "access denied: no such session for this caller"

alice_session := {"owner": "alice", "tenant": "acme", "mode": "shared", "members": []}

# A request as the sidecar of pool "copilot" sees it: the verified caller (user,
# tenant, roles), where it arrived, the message, and the registry's record.
msg(user, tenant, roles, method, sid, rec) := {
	"user": user, "tenant": tenant, "roles": roles,
	"pool": "copilot", "mode": "shared", "kind": "request",
	"method": method, "session_id": sid, "params": {"sessionId": sid}, "record": rec,
}

alice(method) := msg("alice", "acme", [], method, "s1", alice_session)

bob(method, sid, rec) := msg("bob", "acme", [], method, sid, rec)

with_params(m, p) := object.union(m, {"params": p})

test_any_tenant_enters if {
	edge.allow.allowed with input as {"attributes": {"contextExtensions": {"pool": "copilot"}}, "identity": {"user": "bob", "tenant": "globex"}}
}

test_owner_uses_their_session if {
	every m in ["session.resume", "session.send", "session.getMessages", "session.detach", "session.delete"] {
		session.decision.allow with input as alice(m)
	}
}

test_foreign_and_unknown_sessions_are_refused_alike if {
	foreign := session.decision with input as bob("session.getMessages", "s1", alice_session)
	unknown := session.decision with input as bob("session.getMessages", "no-such-id", null)
	not foreign.allow
	not unknown.allow
	foreign.reason == no_session
	unknown.reason == no_session
}

# Identity is (tenant, user): "alice" of globex is not "alice" of acme.
test_same_user_name_in_another_tenant_is_refused if {
	d := session.decision with input as msg("alice", "globex", [], "session.send", "s1", alice_session)
	not d.allow
	d.reason == no_session
}

test_a_taken_session_id_cannot_be_created_again if {
	session.decision.allow with input as bob("session.create", "bobs-new-chat", null)
	d := session.decision with input as bob("session.create", "s1", alice_session)
	not d.allow
	d.reason == no_session
}

test_admin_may_read_any_session if {
	session.decision.allow with input as msg("root", "acme", ["admin"], "session.getMessages", "s1", alice_session)
}

test_server_wide_methods_denied if {
	d := session.decision with input as with_params(msg("alice", "acme", [], "sessions.deleteAll", null, null), {})
	not d.allow
	d.reason == `access denied: method "sessions.deleteAll" is not allowed here`
}

test_notifications_refused if {
	d := session.decision with input as object.union(alice("session.send"), {"kind": "notification"})
	not d.allow
	d.reason == "access denied: notifications are not accepted"
}

# A chat's options pass, and the decision opens none of the CLI's own tools.
test_chat_session_gets_no_builtin_tools if {
	d := session.decision with input as with_params(bob("session.create", "n1", null), {"sessionId": "n1", "model": "gpt-5", "streaming": true})
	d.allow
	d.builtin_tools == []
}

# Options that make the CLI reach its (shared) host are refused by name.
test_host_options_refused if {
	every opt in ["workingDirectory", "mcpServers", "gitHubToken"] {
		d := session.decision with input as with_params(bob("session.create", "n1", null), {"sessionId": "n1", opt: {}})
		not d.allow
		d.reason == sprintf("access denied: session option %q is not allowed here", [opt])
	}
}

test_attachments_carry_their_data if {
	blob := {"sessionId": "s1", "prompt": "summarise", "attachments": [{"type": "blob", "data": "aGk=", "mimeType": "text/plain"}]}
	session.decision.allow with input as with_params(alice("session.send"), blob)
	path := {"sessionId": "s1", "prompt": "summarise", "attachments": [{"type": "file", "path": "/etc/passwd"}]}
	not session.decision.allow with input as with_params(alice("session.send"), path)
}
