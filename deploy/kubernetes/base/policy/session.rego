# Per-message decisions in the sidecar: which JSON-RPC methods a caller may send to a
# shared CLI, and which sessions they may touch. Deny by default: a method not
# listed here — including any a newer CLI adds — is refused.
#
# input: {user, tenant, roles, method, session_id, record}
#   record: the session registry entry {owner, tenant, mode, members, ...}, or null
#           when the session is unknown to the registry.
# Result: decision = {"allow": bool, "reason": string}.
package climesh.session

import rego.v1

# Methods that touch no particular session and no other tenant.
connection_methods := {
	"ping", "status.get", "models.list", "session.create", "session.list",
	"session.getLastId", "session.getForeground",
}

# Methods that act on the session named by params.sessionId: the turn itself, and
# what the Copilot SDKs (Go v1.0.11, Node v1.0.14) send while a turn runs (answers to tool calls,
# permission and input requests). Server-reaching session methods — MCP servers,
# extensions, filesystem paths, credentials, LSP — are not listed, so they are denied.
session_methods := {
	"session.resume", "session.send", "session.abort", "session.getMessages",
	"session.getMetadata", "session.delete", "session.destroy", "session.detach", "session.log",
	"session.setForeground",
	"session.model.getCurrent", "session.model.list", "session.model.switchTo",
	"session.mode.get", "session.mode.set", "session.name.get", "session.name.set",
	"session.metadata.snapshot", "session.metadata.isProcessing",
	"session.eventLog.registerInterest", "session.eventLog.releaseInterest",
	"session.eventLog.read", "session.eventLog.tail",
	"session.tools.handlePendingToolCall", "session.tools.getCurrentMetadata",
	"session.permissions.handlePendingPermissionRequest",
	"session.commands.handlePendingCommand",
	"session.ui.elicitation", "session.ui.handlePendingElicitation", "session.ui.handlePendingUserInput",
	"session.ui.handlePendingExitPlanMode", "session.ui.handlePendingAutoModeSwitch",
}

is_admin if "admin" in input.roles

has_session if {
	is_string(input.session_id)
	input.session_id != ""
}

has_record if is_object(input.record)

# The owner, and members of a shared session (pattern 3), may touch it.
may_touch if input.record.owner == input.user

may_touch if input.user in input.record.members

# Shared sessions (pattern 3): members listed in data, by session id.
may_touch if input.user in data.climesh.shared_sessions[input.session_id].members

default allow := false

allow if is_admin

allow if {
	input.method in connection_methods
	not has_session
}

# Creating a session under a new id, or re-creating one's own.
allow if {
	input.method == "session.create"
	has_session
	not has_record
}

allow if {
	input.method in session_methods
	has_session
	may_touch
}

allow if {
	input.method == "session.create"
	has_session
	may_touch
}

# Why a call is refused; evaluated only for refusals.
reason := "access denied: session belongs to another user" if {
	has_session
	has_record
	not may_touch
}

else := sprintf("access denied: unknown session %q", [input.session_id]) if {
	has_session
	input.method in session_methods
	not has_record
}

else := sprintf("access denied: method %q is not allowed here", [input.method])

decision := {"allow": true, "reason": "allowed"} if allow

else := {"allow": false, "reason": reason}
