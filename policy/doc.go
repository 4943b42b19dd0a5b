// Package policy will embed OPA: the Rego policies in policies/rego/, the Envoy
// ext_authz v3 server and the per-message decisions of the sidecar. It is empty
// until the ownership issue; nothing imports it yet.
package policy
