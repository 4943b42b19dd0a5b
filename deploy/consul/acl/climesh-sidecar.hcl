# ACL policy of climesh-sidecar with --consul-registration catalog (no client
# agents: the consul-k8s default). The least it needs; the end-to-end tests run
# the sidecars with exactly this policy (test/e2e/agentless_test.go).
#
# Each instance is a catalog node of its own, climesh-<instance id> (--consul-node).
node_prefix "climesh-" {
  policy = "write" # its node, service and check; its sessions live on it
}

# The pools' Consul services. Rename to your pools' consul_service names (the
# shipped manifests' pool is copilot; deploy/kubernetes's tests check the match).
service_prefix "copilot" {
  policy = "write"
}

# Its liveness session and its lock sessions, all on its own node.
session_prefix "climesh-" {
  policy = "write"
}

# climesh/live/ (liveness keys), climesh/sessions/ (who owns each session),
# climesh/locks/ (collab turns, the sweeper, the reaper).
key_prefix "climesh/" {
  policy = "write"
}
