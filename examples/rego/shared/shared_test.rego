# Pattern 2, a shared CLI with sessions isolated per user: every tenant uses the
# pool "copilot"; the session registry records each session's owner and the
# per-message policy lets only the owner (or an admin) touch it.
package examples.shared_test

import rego.v1

import data.climesh.edge
import data.climesh.session

alice_session := {"owner": "alice", "tenant": "acme", "mode": "shared", "members": []}

msg(user, roles, method, rec) := {"user": user, "tenant": "acme", "roles": roles, "method": method, "session_id": "s1", "record": rec}

test_any_tenant_enters if {
	edge.allow.allowed with input as {"attributes": {"contextExtensions": {"pool": "copilot"}}, "jwt_payload": {"sub": "bob", "tenant": "globex"}}
}

test_owner_uses_their_session if {
	every m in ["session.resume", "session.send", "session.getMessages", "session.detach", "session.delete"] {
		session.decision.allow with input as msg("alice", [], m, alice_session)
	}
}

test_others_are_refused_with_a_reason if {
	d := session.decision with input as msg("bob", [], "session.getMessages", alice_session)
	not d.allow
	d.reason == "access denied: session belongs to another user"
}

test_admin_may_read_any_session if {
	session.decision.allow with input as msg("root", ["admin"], "session.getMessages", alice_session)
}

test_server_wide_methods_denied if {
	not session.decision.allow with input as msg("alice", [], "sessions.deleteAll", null)
}
