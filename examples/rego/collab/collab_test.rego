# Pattern 3, a shared session: the seed's "team-project-review", rebuilt without a
# Redis lock. The room and its members come from data (hot-reloaded: edit the
# file, no restart); a room belongs to one tenant, and only its members may create
# it, so nobody can take its id first. The route hashes x-climesh-session so every
# member reaches the same CLI, and the collab-mode sidecar's Consul lock lets one
# member's turn run at a time.
package examples.collab_test

import rego.v1

import data.climesh.edge
import data.climesh.session

room_id := "team-project-review"

# Every refusal about a session reads the same, whether the session is someone
# else's or does not exist: a caller cannot probe for room ids.
no_session := "access denied: no such session for this caller"

# The registry's record once alice has created the room.
room := {"owner": "alice", "tenant": "acme", "mode": "collab", "members": []}

msg(user, tenant, method, sid, rec) := {
	"user": user, "tenant": tenant, "roles": [],
	"pool": "collab", "mode": "collab", "kind": "request",
	"method": method, "session_id": sid, "params": {"sessionId": sid}, "record": rec,
}

# A message of an acme user to the room, as it exists.
in_room(user, method) := msg(user, "acme", method, room_id, room)

test_only_acme_reaches_the_pool if {
	edge.allow.allowed with input as {"attributes": {"contextExtensions": {"pool": "collab"}}, "identity": {"user": "bob", "tenant": "acme"}}
	not edge.allow.allowed with input as {"attributes": {"contextExtensions": {"pool": "collab"}}, "identity": {"user": "bob", "tenant": "globex"}}
}

test_a_member_creates_the_room if {
	session.decision.allow with input as msg("bob", "acme", "session.create", room_id, null)
}

test_a_non_member_cannot_create_the_room if {
	d := session.decision with input as msg("mallory", "acme", "session.create", room_id, null)
	not d.allow
	d.reason == no_session
}

test_members_take_turns_in_the_room if {
	every user in ["alice", "bob", "carol"] {
		session.decision.allow with input as in_room(user, "session.send")
	}
}

test_non_members_refused_like_an_unknown_session if {
	in_room_refusal := session.decision with input as in_room("mallory", "session.send")
	unknown := session.decision with input as msg("mallory", "acme", "session.send", "no-such-room", null)
	not in_room_refusal.allow
	not unknown.allow
	in_room_refusal.reason == no_session
	unknown.reason == no_session
}

# Identity is (tenant, user): "bob" of globex is not the member "bob" of acme; he
# may neither join the room nor create it.
test_same_user_name_in_another_tenant_is_refused if {
	d := session.decision with input as msg("bob", "globex", "session.send", room_id, room)
	not d.allow
	d.reason == no_session
	not session.decision.allow with input as msg("bob", "globex", "session.create", room_id, null)
}

# An id the data does not list is an ordinary session: its creator's alone.
test_unlisted_ids_are_ordinary_sessions if {
	session.decision.allow with input as msg("mallory", "acme", "session.create", "mallorys-notes", null)
	notes := {"owner": "mallory", "tenant": "acme", "mode": "collab", "members": []}
	not session.decision.allow with input as msg("alice", "acme", "session.send", "mallorys-notes", notes)
}

test_membership_is_data if {
	rooms := {room_id: {"tenant": "acme", "members": ["dave"]}}
	session.decision.allow with input as in_room("dave", "session.send") with data.climesh.shared_sessions as rooms
	not session.decision.allow with input as in_room("bob", "session.send") with data.climesh.shared_sessions as rooms
}
