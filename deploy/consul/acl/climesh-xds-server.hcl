# ACL policy of the xds-server: read the pools' health and the liveness keys.
# The end-to-end tests run the xds-server with exactly this policy.

# The pools' Consul services (rename to your pools' consul_service names).
service_prefix "copilot" {
  policy = "read"
}

# Health results list only nodes the token may read: the sidecars' own nodes
# with --consul-registration catalog. With client agents (agent registration)
# the instances sit on the Kubernetes nodes' names: use node_prefix "" instead.
node_prefix "climesh-" {
  policy = "read"
}

# Which instances are alive (catalog registration).
key_prefix "climesh/live/" {
  policy = "read"
}
