package climesh.session_test

import rego.v1

import data.climesh.session

alice_rec := {"owner": "alice", "tenant": "acme", "mode": "shared", "members": []}

team_rec := {"owner": "alice", "tenant": "acme", "mode": "collab", "members": ["carol"]}

msg(user, method, sid, rec) := {"user": user, "tenant": "acme", "roles": [], "method": method, "session_id": sid, "record": rec}

test_owner_may_touch if {
	every m in ["session.resume", "session.send", "session.getMessages", "session.delete", "session.abort"] {
		session.decision.allow with input as msg("alice", m, "s1", alice_rec)
	}
}

test_other_user_refused_with_reason if {
	every m in ["session.resume", "session.send", "session.getMessages", "session.getMetadata", "session.delete", "session.destroy", "session.detach"] {
		d := session.decision with input as msg("bob", m, "s1", alice_rec)
		not d.allow
		d.reason == "access denied: session belongs to another user"
	}
}

test_members_of_shared_session if {
	session.decision.allow with input as msg("carol", "session.send", "s2", team_rec)
	not session.decision.allow with input as msg("bob", "session.send", "s2", team_rec)
}

test_connection_methods if {
	every m in ["ping", "status.get", "models.list", "session.create", "session.list"] {
		session.decision.allow with input as msg("bob", m, null, null)
	}
}

test_server_wide_methods_denied_by_default if {
	every m in ["account.logout", "plugins.install", "mcp.config.set", "runtime.shutdown", "sessions.deleteAll", "some.future.method"] {
		d := session.decision with input as msg("bob", m, null, null)
		not d.allow
		d.reason == sprintf("access denied: method %q is not allowed here", [m])
	}
}

test_create_with_new_id_allowed_taken_id_refused if {
	session.decision.allow with input as msg("bob", "session.create", "fresh", null)
	d := session.decision with input as msg("bob", "session.create", "s1", alice_rec)
	not d.allow
	d.reason == "access denied: session belongs to another user"
}

test_unknown_session if {
	d := session.decision with input as msg("bob", "session.resume", "ghost", null)
	not d.allow
	d.reason == `access denied: unknown session "ghost"`
}

test_unlisted_method_naming_own_session_denied if {
	not session.decision.allow with input as msg("alice", "session.fork", "s1", alice_rec)
}

test_admin_may_do_anything if {
	session.decision.allow with input as {"user": "root", "roles": ["admin"], "method": "plugins.install", "session_id": null, "record": null}
	session.decision.allow with input as {"user": "root", "roles": ["admin"], "method": "session.delete", "session_id": "s1", "record": alice_rec}
}

test_sdk_turn_methods_for_owner_only if {
	session.decision.allow with input as msg("alice", "session.tools.handlePendingToolCall", "s1", alice_rec)
	not session.decision.allow with input as msg("bob", "session.tools.handlePendingToolCall", "s1", alice_rec)
}

test_server_reaching_session_methods_denied_even_for_owner if {
	every m in ["session.mcp.startServer", "session.extensions.enable", "session.permissions.paths.add", "session.gitHubAuth.setCredentials"] {
		not session.decision.allow with input as msg("alice", m, "s1", alice_rec)
	}
}

test_members_from_data if {
	rec := {"owner": "olga", "mode": "collab", "members": []}
	session.decision.allow with input as msg("mia", "session.send", "team-room", rec)
		with data.climesh.shared_sessions as {"team-room": {"members": ["mia"]}}
	not session.decision.allow with input as msg("nils", "session.send", "team-room", rec)
		with data.climesh.shared_sessions as {"team-room": {"members": ["mia"]}}
}
