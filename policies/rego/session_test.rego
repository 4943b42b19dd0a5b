package climesh.session_test

import rego.v1

import data.climesh.session

alice_rec := {"owner": "alice", "tenant": "acme", "mode": "shared", "members": []}

team_rec := {"owner": "alice", "tenant": "acme", "mode": "collab", "members": ["carol"]}

msg(user, method, sid, rec) := {
	"user": user, "tenant": "acme", "roles": [], "pool": "copilot", "mode": "shared", "kind": "request",
	"method": method, "session_id": sid, "record": rec, "params": {"sessionId": sid},
}

with_params(m, p) := object.union(m, {"params": p})

no_session := "access denied: no such session for this caller"

test_owner_may_touch if {
	every m in ["session.resume", "session.send", "session.getMessages", "session.delete", "session.abort"] {
		session.decision.allow with input as msg("alice", m, "s1", alice_rec)
	}
}

test_other_user_refused_like_unknown_session if {
	every m in ["session.resume", "session.send", "session.getMessages", "session.getMetadata", "session.delete", "session.destroy", "session.detach"] {
		foreign := session.decision with input as msg("bob", m, "s1", alice_rec)
		unknown := session.decision with input as msg("bob", m, "ghost", null)
		not foreign.allow
		not unknown.allow
		foreign.reason == no_session
		unknown.reason == no_session
	}
}

test_same_user_name_in_another_tenant_is_another_user if {
	other := object.union(msg("alice", "session.send", "s1", alice_rec), {"tenant": "globex"})
	d := session.decision with input as other
	not d.allow
	d.reason == no_session
	collab := object.union(msg("carol", "session.send", "s2", team_rec), {"tenant": "globex"})
	not session.decision.allow with input as collab
}

test_members_of_shared_session if {
	session.decision.allow with input as msg("carol", "session.send", "s2", team_rec)
	not session.decision.allow with input as msg("bob", "session.send", "s2", team_rec)
}

test_connection_methods if {
	every m in ["ping", "status.get", "models.list", "session.create", "session.list"] {
		session.decision.allow with input as object.union(msg("bob", m, null, null), {"params": {}})
	}
}

test_notifications_refused if {
	every m in ["session.send", "ping", "session.create"] {
		d := session.decision with input as object.union(msg("alice", m, "s1", alice_rec), {"kind": "notification"})
		not d.allow
		d.reason == "access denied: notifications are not accepted"
	}
}

test_server_wide_methods_denied_by_default if {
	every m in ["account.logout", "plugins.install", "mcp.config.set", "runtime.shutdown", "sessions.deleteAll", "some.future.method"] {
		d := session.decision with input as object.union(msg("bob", m, null, null), {"params": {}})
		not d.allow
		d.reason == sprintf("access denied: method %q is not allowed here", [m])
	}
}

test_create_with_new_id_allowed_taken_id_refused if {
	session.decision.allow with input as msg("bob", "session.create", "fresh", null)
	d := session.decision with input as msg("bob", "session.create", "s1", alice_rec)
	not d.allow
	d.reason == no_session
}

test_unlisted_method_naming_own_session_denied if {
	not session.decision.allow with input as msg("alice", "session.fork", "s1", alice_rec)
}

test_admin_may_use_any_method if {
	session.decision.allow with input as {"user": "root", "roles": ["admin"], "kind": "request", "method": "plugins.install", "params": {}}
	session.decision.allow with input as {"user": "root", "roles": ["admin"], "kind": "request", "method": "session.delete", "session_id": "s1", "record": alice_rec, "params": {"sessionId": "s1"}}
}

test_admin_still_bound_by_session_options if {
	req := {"user": "root", "roles": ["admin"], "kind": "request", "pool": "copilot", "method": "session.create", "session_id": "x", "params": {"sessionId": "x", "mcpServers": {}}}
	not session.decision.allow with input as req
}

test_sdk_turn_methods_for_owner_only if {
	session.decision.allow with input as msg("alice", "session.tools.handlePendingToolCall", "s1", alice_rec)
	not session.decision.allow with input as msg("bob", "session.tools.handlePendingToolCall", "s1", alice_rec)
}

test_server_reaching_session_methods_denied_even_for_owner if {
	every m in ["session.mcp.startServer", "session.extensions.enable", "session.permissions.paths.add", "session.gitHubAuth.setCredentials", "session.options.update"] {
		not session.decision.allow with input as msg("alice", m, "s1", alice_rec)
	}
}

test_rooms_from_data if {
	rec := {"owner": "olga", "tenant": "acme", "mode": "collab", "members": []}
	rooms := {"team-room": {"tenant": "acme", "members": ["mia", "olga"]}}
	session.decision.allow with input as msg("mia", "session.send", "team-room", rec) with data.climesh.shared_sessions as rooms
	not session.decision.allow with input as msg("nils", "session.send", "team-room", rec) with data.climesh.shared_sessions as rooms
}

test_room_created_by_members_only if {
	rooms := {"team-room": {"tenant": "acme", "members": ["mia"]}}
	session.decision.allow with input as msg("mia", "session.create", "team-room", null) with data.climesh.shared_sessions as rooms
	d := session.decision with input as msg("nils", "session.create", "team-room", null) with data.climesh.shared_sessions as rooms
	not d.allow
	d.reason == no_session
	other_tenant := object.union(msg("mia", "session.create", "team-room", null), {"tenant": "globex"})
	not session.decision.allow with input as other_tenant with data.climesh.shared_sessions as rooms
}

# Session options: what a chat needs passes; what reaches the host does not.
test_chat_options_allowed if {
	p := {
		"sessionId": "n1", "model": "gpt", "provider": {"type": "openai", "baseUrl": "http://model", "apiKey": "k"},
		"systemMessage": {"content": "be brief"}, "tools": [{"name": "lookup"}], "availableTools": null,
		"streaming": true, "requestPermission": true, "envValueMode": "direct", "includeSubAgentStreamingEvents": true,
	}
	d := session.decision with input as with_params(msg("bob", "session.create", "n1", null), p)
		with data.climesh.pools as {"copilot": {"provider_base_urls": ["http://model"]}}
	d.allow
	d.builtin_tools == []
}

test_host_options_refused if {
	every opt in [
		"mcpServers", "workingDirectory", "additionalDirectories", "configDir", "customAgents", "agent",
		"skillDirectories", "pluginDirectories", "instructionDirectories", "enableFileHooks",
		"enableHostGitOperations", "gitHubToken", "cloud", "remoteSession", "extensionSdkPath",
		"enableConfigDiscovery", "embeddingCacheStorage", "largeOutput", "McpServers",
	] {
		every method in ["session.create", "session.resume"] {
			rec := {"session.create": null, "session.resume": alice_rec}[method]
			d := session.decision with input as with_params(msg("alice", method, "s1", rec), {"sessionId": "s1", opt: {}})
			not d.allow
			d.reason == sprintf("access denied: session option %q is not allowed here", [opt])
		}
	}
}

test_pool_data_opens_an_option if {
	req := with_params(msg("alice", "session.create", "n2", null), {"sessionId": "n2", "mcpServers": {}})
	session.decision.allow with input as req with data.climesh.pools as {"copilot": {"session_options": ["mcpServers"]}}
	not session.decision.allow with input as req with data.climesh.pools as {"other": {"session_options": ["mcpServers"]}}
}

test_send_attachments_with_paths_refused if {
	blob := with_params(msg("alice", "session.send", "s1", alice_rec), {"sessionId": "s1", "prompt": "hi", "attachments": [{"type": "blob", "data": "aGk=", "mimeType": "text/plain"}]})
	session.decision.allow with input as blob
	every t in ["file", "directory", "selection"] {
		req := with_params(msg("alice", "session.send", "s1", alice_rec), {"sessionId": "s1", "prompt": "hi", "attachments": [{"type": t, "path": "/etc/passwd"}]})
		d := session.decision with input as req
		not d.allow
		d.reason == `access denied: session option "attachments" is not allowed here`
	}
	unknown := with_params(msg("alice", "session.send", "s1", alice_rec), {"sessionId": "s1", "prompt": "hi", "requestHeaders": {}})
	not session.decision.allow with input as unknown
}

test_provider_base_urls if {
	pools := {"copilot": {"provider_base_urls": ["http://127.0.0.1:9000/v1"]}}
	every url in ["http://127.0.0.1:9000/v1", "http://127.0.0.1:9000/v1/"] {
		ok := with_params(msg("alice", "session.create", "n3", null), {"sessionId": "n3", "provider": {"baseUrl": url}})
		session.decision.allow with input as ok with data.climesh.pools as pools
	}
	every url in [
		"http://127.0.0.1:8500/v1", "http://127.0.0.1:9000/v1/../../drain", "http://127.0.0.1:9000/v1?x=",
		"http://127.0.0.1:9000/v1#", "http://127.0.0.1:9000/v1x", "http://127.0.0.1:7101/sweep?ttl=1ns&x=",
	] {
		elsewhere := with_params(msg("alice", "session.create", "n3", null), {"sessionId": "n3", "provider": {"baseUrl": url}})
		d := session.decision with input as elsewhere with data.climesh.pools as pools
		not d.allow
		d.reason == `access denied: session option "provider" is not allowed here`
	}
}

test_provider_base_url_refused_without_a_list if {
	req := with_params(msg("alice", "session.create", "n3", null), {"sessionId": "n3", "provider": {"type": "openai", "baseUrl": "https://api.example.com/v1"}})
	not session.decision.allow with input as req
	no_url := with_params(msg("alice", "session.create", "n3", null), {"sessionId": "n3", "model": "gpt"})
	session.decision.allow with input as no_url
}

test_custom_instructions_skipped_unless_opened if {
	req := msg("alice", "session.create", "n5", null)
	d := session.decision with input as req
	d.set_params == {"skipCustomInstructions": true}
	opened := session.decision with input as req with data.climesh.pools as {"copilot": {"custom_instructions": true}}
	opened.set_params == {}
	send := session.decision with input as msg("alice", "session.send", "s1", alice_rec)
	send.set_params == {}
}

test_builtin_tools_from_pool_and_tenant if {
	req := msg("alice", "session.create", "n4", null)
	d := session.decision with input as req with data.climesh.pools as {"copilot": {"builtin_tools": ["view"]}}
		with data.climesh.tenants as {"acme": {"builtin_tools": ["grep"]}}
	d.builtin_tools == ["grep", "view"]
	other := session.decision with input as object.union(req, {"tenant": "globex"}) with data.climesh.pools as {"copilot": {"builtin_tools": ["view"]}}
		with data.climesh.tenants as {"acme": {"builtin_tools": ["grep"]}}
	other.builtin_tools == ["view"]
}
