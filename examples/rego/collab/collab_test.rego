# Pattern 3, a shared session: the seed's "team-project-review", rebuilt without a
# Redis lock. Members come from data (hot-reloaded: edit the file, no restart); the
# route hashes x-climesh-session so every member reaches the same CLI, and the
# collab-mode sidecar's Consul lock lets one member's turn run at a time.
package examples.collab_test

import rego.v1

import data.climesh.session

room := {"owner": "alice", "tenant": "acme", "mode": "collab", "members": []}

msg(user, method) := {"user": user, "tenant": "acme", "roles": [], "method": method, "session_id": "team-project-review", "record": room}

test_members_take_turns_in_the_room if {
	every user in ["alice", "bob", "carol"] {
		session.decision.allow with input as msg(user, "session.send")
	}
}

test_non_members_refused if {
	d := session.decision with input as msg("mallory", "session.send")
	not d.allow
}

test_membership_is_data if {
	session.decision.allow with input as msg("dave", "session.send")
		with data.climesh.shared_sessions as {"team-project-review": {"members": ["dave"]}}
}
