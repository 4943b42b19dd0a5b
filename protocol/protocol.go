// Package protocol names what climesh and its peers agree on, in one place: the
// Copilot CLI's JSON-RPC methods and session events that climesh acts on, the
// error codes climesh answers with, and the HTTP headers of the edge and its
// tunnels, and the keys a sidecar publishes in Consul for the control plane. It holds
// names (and OwnMethod, which says whose namespace a name is in), no behaviour,
// and imports nothing of climesh, so
// that every package (sidecar, connector, policy, control plane, tests) can use
// it without depending on another's internals.
package protocol

import "strings"

// Methods of the CLI's JSON-RPC API that climesh reads, answers or sends.
const (
	MethodConnect         = "connect"          // authenticates a connection with the CLI's token
	MethodPing            = "ping"             // liveness
	MethodRuntimeShutdown = "runtime.shutdown" // ends "its" CLI, as a stdio SDK believes

	MethodSessionCreate        = "session.create"
	MethodSessionResume        = "session.resume"
	MethodSessionSend          = "session.send"
	MethodSessionAbort         = "session.abort"
	MethodSessionDestroy       = "session.destroy" // releases a session from memory; its state stays on disk
	MethodSessionDetach        = "session.detach"
	MethodSessionDelete        = "session.delete" // deletes a session's state
	MethodSessionList          = "session.list"
	MethodSessionGetMessages   = "session.getMessages"
	MethodSessionGetMetadata   = "session.getMetadata"
	MethodSessionGetForeground = "session.getForeground"
	MethodSessionGetLastID     = "session.getLastId"

	// MethodSessionEvent is the CLI's notification carrying one session event.
	MethodSessionEvent = "session.event"

	// MethodMove is climesh's own notification, from a sidecar to a
	// climesh-connect that announced FeatureMove: the tunnel's key now has
	// another home (the fleet changed), or its instance drains. The connector
	// moves at its first moment with nothing in flight — no request of the
	// application's unanswered, no turn it started running, no request of the
	// CLI's awaiting the application — at once or when that ends: it closes
	// the tunnel, reconnects without its pin (the ring decides) and resumes
	// every session there, holding the application's calls meanwhile. Never
	// forwarded to the application; never taken from a CLI (OwnMethod).
	MethodMove = "climesh/move"
)

// OwnMethod reports whether method is in climesh's own namespace ("climesh/"):
// only a sidecar sends those to a client, so one from a CLI is dropped and a
// client never mistakes what a CLI sent for climesh's word.
func OwnMethod(method string) bool { return strings.HasPrefix(method, "climesh/") }

// FeatureMove is the HeaderFeatures value of a client that follows MethodMove.
const FeatureMove = "move"

// Session event types that end a turn.
const (
	EventSessionIdle  = "session.idle"
	EventSessionError = "session.error"
)

// Error codes climesh answers with, beside JSON-RPC's own (-32700 parse error,
// -32600 invalid request, -32602 invalid params) and the CLI's (-32601 unknown
// method, -32603 internal, -32001 authentication required, -32002 authentication
// failed).
const (
	CodeUnavailable  = -32010 // the edge or the CLI cannot be reached
	CodeRefused      = -32011 // the edge refused the tunnel (status and reason in data)
	CodeAccessDenied = -32012 // the policy refused this call; the CLI never saw it
	CodeSessionBusy  = -32013 // a shared session's turn is running (holder and since in data)
)

// HTTP headers on the edge and its tunnels, in lower case as Envoy's config
// and HTTP/2 spell them (net/http's Header.Get and Set accept any case).
const (
	HeaderAuthorization = "authorization"
	// HeaderUser, HeaderTenant and HeaderSession are the defaults of the control
	// plane's identity.*_header settings: Envoy writes the verified user and
	// tenant, and a collab client names its shared session.
	HeaderUser    = "x-climesh-user"
	HeaderTenant  = "x-climesh-tenant"
	HeaderSession = "x-climesh-session"
	// HeaderDecisionID names the edge policy's decision in a refusal (and in the
	// xds-server's decision log).
	HeaderDecisionID = "x-climesh-decision-id"
	// HeaderIdentity carries the edge's signed identity assertion to the sidecar.
	HeaderIdentity = "x-climesh-identity"
	// HeaderEdgeCredential carries the secret only Envoy adds, so that a client
	// dialling a sidecar directly is refused.
	HeaderEdgeCredential = "x-climesh-edge-credential"
	// HeaderLockWait is how long a caller will wait for a busy shared session.
	HeaderLockWait = "x-climesh-lock-wait"
	// HeaderPin names the instance a tunnel reached, as Envoy's stateful_session
	// filter encodes it on the upgrade response; sent back on a reconnect, it asks
	// Envoy for the same instance while that instance is healthy.
	HeaderPin = "x-climesh-host"
	// HeaderFeatures lists (comma-separated) the climesh behaviours a client
	// follows; a sidecar uses none a client did not announce.
	HeaderFeatures = "x-climesh-features"
)

// What a sidecar publishes in Consul and the control plane's discovery reads.
const (
	// ConsulMetaDraining is the service meta key a sidecar sets to "true" while
	// it drains: discovery turns it into DRAINING in Envoy.
	ConsulMetaDraining = "draining"
	// ConsulMetaLiveness is the service meta key of an instance registered
	// through the catalog, where no agent runs a TTL check: its value is a KV key
	// under ConsulLivePrefix that the sidecar's Consul session holds. The
	// instance is alive only while that key exists; Consul deletes it when the
	// session expires (a sidecar that died stops renewing it).
	ConsulMetaLiveness = "climesh-liveness"
	ConsulLivePrefix   = "climesh/live/"
)
