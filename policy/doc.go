// Package policy embeds OPA: it loads Rego policies and data (a directory or an
// OPA bundle), hot-reloads them, and evaluates prepared queries. Every decision
// fails closed: an evaluation error, an undefined result or a result of the wrong
// shape denies, and is counted. The Envoy ext_authz server (extauthz.go) and the
// sidecar's per-message checks use it through Engine.
package policy
