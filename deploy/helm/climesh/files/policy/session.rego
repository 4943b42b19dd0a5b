# Per-message decisions of climesh-sidecar (data.climesh.session.decision).
#
# input: user, tenant, roles (the verified caller); pool, mode (where the message
# arrived); kind (request or notification); method; session_id (params.sessionId);
# params (the whole params object, read strictly by the sidecar); record (the
# session's registry entry: owner, tenant, mode, members).
#
# Identity is (tenant, user): a user name is unique only within its tenant.
# Deny by default: methods, session options and built-in tools are allow-listed.
package climesh.session

import rego.v1

connection_methods := {
	"ping", "status.get", "models.list", "session.create", "session.list",
	"session.getLastId", "session.getForeground",
}

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

# What a chat needs on session.create and session.resume. Everything else —
# MCP servers, working and additional directories, config/skill/plugin/instruction
# paths, custom agents, file hooks, host git, GitHub tokens, cloud and remote
# sessions, extensions — makes the CLI run or reach something on its host, and
# is refused unless the pool's or tenant's data lists it in session_options.
chat_options := {
	"sessionId", "model", "clientName", "reasoningEffort", "reasoningSummary", "contextTier",
	"provider", "systemMessage", "tools", "availableTools", "excludedTools", "toolFilterPrecedence",
	"excludedBuiltinAgents", "streaming", "includeSubAgentStreamingEvents", "infiniteSessions",
	"requestPermission", "requestUserInput", "requestElicitation", "requestExitPlanMode",
	"requestAutoModeSwitch", "hooks", "commands", "envValueMode", "sessionLimits",
	"skipCustomInstructions", "enableCitations", "traceparent", "tracestate", "disableResume",
}

# What session.send may carry: a prompt and attachments that carry their data.
# File, directory and selection attachments name paths the CLI would read on its
# host; they need the pool's attachment_types.
send_options := {"sessionId", "prompt", "displayPrompt", "attachments", "mode", "agentMode", "traceparent", "tracestate"}

option_methods := {"session.create", "session.resume"}

default pool_data := {}

pool_data := data.climesh.pools[input.pool]

default tenant_data := {}

tenant_data := data.climesh.tenants[input.tenant]

# Each list of the pool's and the tenant's data, joined (a rule each: evaluated once).
listed_session_options := {x | some x in object.get(pool_data, "session_options", [])} | {x | some x in object.get(tenant_data, "session_options", [])}

listed_send_options := {x | some x in object.get(pool_data, "send_options", [])} | {x | some x in object.get(tenant_data, "send_options", [])}

listed_attachment_types := {x | some x in object.get(pool_data, "attachment_types", [])} | {x | some x in object.get(tenant_data, "attachment_types", [])}

listed_provider_base_urls := {trim_suffix(x, "/") | some x in object.get(pool_data, "provider_base_urls", [])} | {trim_suffix(x, "/") | some x in object.get(tenant_data, "provider_base_urls", [])}

listed_builtin_tools := {x | some x in object.get(pool_data, "builtin_tools", [])} | {x | some x in object.get(tenant_data, "builtin_tools", [])}

allowed_options := chat_options | listed_session_options if input.method in option_methods

allowed_options := send_options | listed_send_options if input.method == "session.send"

allowed_attachment_types := {"blob"} | listed_attachment_types

refused_options contains name if {
	allowed_options
	some name, _ in input.params
	not name in allowed_options
}

refused_options contains "attachments" if {
	input.method == "session.send"
	some a in input.params.attachments
	not a.type in allowed_attachment_types
}

# A session's model endpoint (provider.baseUrl) is a URL the CLI will POST to from
# its host: without a check, a caller points it at the host's loopback (the
# sidecar's admin port, Consul) or at a server of its own that then receives the
# CLI's system prompt. It must be one of provider_base_urls (pool or tenant data),
# exactly (a trailing slash aside): no prefixes, queries or fragments. A session
# that names no baseUrl uses the CLI's own (GitHub) endpoint.
refused_options contains "provider" if {
	input.method in option_methods
	url := input.params.provider.baseUrl
	not trim_suffix(url, "/") in listed_provider_base_urls
}

# Params the sidecar sets on create and resume, whatever the client sent. The
# CLI's custom instructions come from its own host (its home, its working
# directory's AGENTS.md and .github/copilot-instructions.md): skipped unless the
# pool's or tenant's data says custom_instructions: true.
set_params := {"skipCustomInstructions": true} if {
	input.method in option_methods
	not opens_custom_instructions
} else := {}

opens_custom_instructions if pool_data.custom_instructions == true

opens_custom_instructions if tenant_data.custom_instructions == true

# The CLI's own tools (shell, file read/write, web fetch...) act on the CLI's
# host, which tenants of a shared CLI share: none by default; a pool or tenant
# opens them by name in builtin_tools (["*"]: all of them, for isolated pools
# whose users the OS separates).
builtin_tools := sort(listed_builtin_tools)

is_admin if "admin" in input.roles

is_request if input.kind == "request"

has_session if {
	is_string(input.session_id)
	input.session_id != ""
}

has_record if is_object(input.record)

same_tenant if input.record.tenant == input.tenant

room := data.climesh.shared_sessions[input.session_id]

room_member if {
	room.tenant == input.tenant
	input.user in room.members
}

may_touch if {
	same_tenant
	input.record.owner == input.user
}

may_touch if {
	same_tenant
	input.user in input.record.members
}

may_touch if {
	same_tenant
	room_member
}

# A room listed in data is created by one of its members only.
may_create if not room

may_create if room_member

method_allowed if is_admin

method_allowed if {
	input.method in connection_methods
	not has_session
}

method_allowed if {
	input.method == "session.create"
	has_session
	not has_record
	may_create
}

method_allowed if {
	input.method in session_methods
	has_session
	may_touch
}

method_allowed if {
	input.method == "session.create"
	has_session
	may_touch
}

default allow := false

allow if {
	is_request
	method_allowed
	count(refused_options) == 0
}

# One refusal for a session that does not exist and one that is not the caller's:
# nothing tells them apart.
no_session := "access denied: no such session for this caller"

reason := "access denied: notifications are not accepted" if not is_request

else := no_session if {
	has_session
	has_record
	not may_touch
}

else := no_session if {
	has_session
	input.method in session_methods
	not has_record
}

else := no_session if {
	input.method == "session.create"
	has_session
	not may_create
}

else := sprintf("access denied: session option %q is not allowed here", [min(refused_options)]) if {
	count(refused_options) > 0
	method_allowed
}

else := sprintf("access denied: method %q is not allowed here", [input.method])

decision := {"allow": true, "reason": "allowed", "builtin_tools": builtin_tools, "set_params": set_params} if allow

else := {"allow": false, "reason": reason}
