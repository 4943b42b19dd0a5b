// Package config is climesh's configuration: the YAML an operator writes for the
// xds-server, parsed once, defaulted by name and validated so that every error names
// the field and the value at fault. config imports nothing of climesh's but its own
// leaves (field, secret).
package config

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/climesh/climesh/config/secret"
)

// Config is the whole xds-server configuration.
type Config struct {
	Server    Server     `yaml:"server"`
	Consul    Consul     `yaml:"consul"`
	Identity  Identity   `yaml:"identity"`
	Listeners []Listener `yaml:"listeners"`
	Pools     []Pool     `yaml:"pools"`
	JWT       JWT        `yaml:"jwt"`
	Policy    EdgePolicy `yaml:"policy"`
}

// JWT is Envoy's jwt_authn: the providers whose tokens the edge accepts. With no
// provider, no token is verified (and only trust_client_headers can name a user).
type JWT struct {
	Providers []JWTProvider `yaml:"providers"`
	// Claims name the claims that become the identity headers and assertion.
	UserClaim   string `yaml:"user_claim"`
	TenantClaim string `yaml:"tenant_claim"`
	RolesClaim  string `yaml:"roles_claim"`
}

// JWTProvider is one issuer. Exactly one of LocalJWKSFile and RemoteJWKS.
type JWTProvider struct {
	Name          string      `yaml:"name"`
	Issuer        string      `yaml:"issuer"`
	Audiences     []string    `yaml:"audiences"`
	LocalJWKSFile string      `yaml:"local_jwks_file"`
	RemoteJWKS    *RemoteJWKS `yaml:"remote_jwks"`
	// LocalJWKS is the file's content, read by ResolveFiles.
	LocalJWKS string `yaml:"-"`
}

// RemoteJWKS is fetched by Envoy. Over https (required but on loopback) Envoy
// verifies the server's certificate against TrustedCAFile and checks that it names
// the URI's host: a JWKS is what every token is verified with, so whoever could
// serve it could mint any identity.
type RemoteJWKS struct {
	URI           string        `yaml:"uri"`
	Timeout       time.Duration `yaml:"timeout"`
	CacheDuration time.Duration `yaml:"cache_duration"`
	// TrustedCAFile is a PEM bundle on Envoy's host (Envoy's
	// validation_context.trusted_ca); default the system bundle,
	// DefaultTrustedCAFile.
	TrustedCAFile string `yaml:"trusted_ca_file"`
}

// EdgePolicy is OPA at the edge: the ext_authz decision (served by the
// xds-server) and the identity assertion the edge adds for the sidecars.
type EdgePolicy struct {
	// Source is a directory of Rego and data files, an OPA bundle (.tar.gz), the
	// word builtin (the policies/rego this binary was built with), or the URL of
	// a bundle service (https; http on loopback only), polled every
	// WatchInterval with ETag, each bundle verified against BundlePublicKeyFile
	// before it serves. Empty: no ext_authz filter.
	Source string `yaml:"source"`
	// BundlePublicKeyFile is the PEM public key that signed a bundle service's
	// bundles (required with one: an unsigned bundle is refused), and
	// BundleSigningAlgorithm its algorithm (default RS256, as `opa build` signs).
	BundlePublicKeyFile    string `yaml:"bundle_public_key_file"`
	BundleSigningAlgorithm string `yaml:"bundle_signing_algorithm"`
	// DecisionLogs, when set, logs every edge decision in OPA's decision log
	// format, masked by the policy's system.log.mask rule.
	DecisionLogs *DecisionLogs `yaml:"decision_logs"`
	// DecisionPath is the rule ext_authz asks, as OPA-Envoy's path setting:
	// slash-separated under data (default climesh/edge/allow; envoy/authz/allow
	// is OPA-Envoy's own default).
	DecisionPath string `yaml:"decision_path"`
	// DataFile is a JSON or YAML data file merged into the source's data (it may
	// add values, not replace them): an operator's pools and tenants beside the
	// built-in rules. Watched like the source.
	DataFile      string        `yaml:"data_file"`
	WatchInterval time.Duration `yaml:"watch_interval"`
	// ExtAuthzAddress is where Envoy reaches the xds-server's ext_authz gRPC
	// service (the ADS port); default server.xds_address.
	ExtAuthzAddress string        `yaml:"ext_authz_address"`
	Timeout         time.Duration `yaml:"timeout"`
	// IdentityKeysFile holds the keys that sign identity assertions (shared with
	// the sidecars' --identity-keys).
	IdentityKeysFile string        `yaml:"identity_keys_file"`
	AssertionTTL     time.Duration `yaml:"assertion_ttl"`
	// ExtAuthzTLS is what Envoy's ext_authz cluster uses when server.tls is on
	// (required then): the same files as its bootstrap's xDS cluster.
	ExtAuthzTLS *UpstreamTLS `yaml:"ext_authz_tls"`
}

// DecisionLogs is where decisions go: exactly one of Console (stdout), File
// (appended) or URL (a decision log service: POSTs of gzipped JSON arrays, as
// OPA's logs plugin sends). QueueSize bounds the events waiting to be written;
// past it they are dropped and counted.
type DecisionLogs struct {
	Console   bool   `yaml:"console"`
	File      string `yaml:"file"`
	URL       string `yaml:"url"`
	QueueSize int    `yaml:"queue_size"`
}

// On reports whether the edge runs ext_authz.
func (p EdgePolicy) On() bool { return p.Source != "" }

// Server is the xds-server's own listening addresses and batching.
type Server struct {
	// XDSAddress serves ADS (gRPC) to Envoy.
	XDSAddress string `yaml:"xds_address"`
	// HTTPAddress serves /metrics, /healthz, /readyz and /debug/.
	HTTPAddress string `yaml:"http_address"`
	// Coalesce batches bursts of fleet changes into one snapshot.
	Coalesce Coalesce `yaml:"coalesce"`
	// DefaultNodeGroup receives Envoy nodes whose --service-cluster names no group.
	DefaultNodeGroup string `yaml:"default_node_group"`
	// TLS, when set, serves the gRPC port (xDS and ext_authz) over TLS only.
	TLS *ServerTLS `yaml:"tls"`
	// Keepalive is how the server finds Envoys that went away without closing
	// their streams.
	Keepalive Keepalive `yaml:"keepalive"`
	// PushWindowBytes bounds the bytes of large xDS responses (64 KiB and
	// more) sent and not yet answered by their Envoys, across all streams: a
	// change to a large pool reaches a thousand Envoys in turns, not all queued
	// at once. Read at start.
	PushWindowBytes int64 `yaml:"push_window_bytes"`
}

// Keepalive pings an idle connection every Time and closes it when the answer
// has not come within Timeout. The timeout is generous on purpose: an Envoy
// busy applying a large update, or a server busy sending one to a thousand
// Envoys, answers late, and a stream closed then costs a full resync.
type Keepalive struct {
	Time    time.Duration `yaml:"time"`
	Timeout time.Duration `yaml:"timeout"`
}

// ServerTLS is the xds-server's certificate for its gRPC port, and with
// ClientCAFile mutual TLS: an Envoy must present a certificate that CA signed.
// Read at start (restart to rotate).
type ServerTLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// UpstreamTLS is how Envoy reaches a TLS server: files on Envoy's host, as in
// its bootstrap's xDS cluster. TrustedCAFile verifies the server, whose
// certificate must also name the host Envoy dials; CertFile and KeyFile are
// Envoy's client certificate, for mutual TLS.
type UpstreamTLS struct {
	TrustedCAFile string `yaml:"trusted_ca_file"`
	CertFile      string `yaml:"cert_file"`
	KeyFile       string `yaml:"key_file"`
}

// Coalesce waits for Quiet without a change, but never longer than MaxDelay after
// the first change of a burst.
type Coalesce struct {
	Quiet    time.Duration `yaml:"quiet"`
	MaxDelay time.Duration `yaml:"max_delay"`
}

// Consul is where discovery finds pool services.
type Consul struct {
	// Address of the Consul HTTP API (host:port). CONSUL_HTTP_TOKEN and the other
	// CONSUL_* variables the Consul CLI reads are honoured too.
	Address    string `yaml:"address"`
	Datacenter string `yaml:"datacenter"`
	// WaitTime bounds each blocking query.
	WaitTime time.Duration `yaml:"wait_time"`
	// RetryMin and RetryMax bound the jittered backoff after an error.
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
}

// Identity names the headers that carry who is calling. Envoy removes them from
// every client request; only a filter climesh configures may set them.
type Identity struct {
	UserHeader    string `yaml:"user_header"`
	TenantHeader  string `yaml:"tenant_header"`
	SessionHeader string `yaml:"session_header"`
	// TrustClientHeaders keeps the headers a client sends. Only for local
	// development, or behind a proxy that already strips and sets them.
	TrustClientHeaders bool `yaml:"trust_client_headers"`
	// EdgeCredentialFile holds a secret that Envoy adds to every tunnel it
	// forwards (header x-climesh-edge-credential) and that sidecars require, so
	// that a client dialling a sidecar directly gets nothing.
	EdgeCredentialFile string `yaml:"edge_credential_file"`
	// EdgeCredential is the file's content, read by ResolveFiles.
	EdgeCredential string `yaml:"-"`
	// PinHeader, when set, turns on Envoy's stateful_session filter with this
	// header: the upgrade response names the instance a tunnel reached, and a
	// reconnect that sends it back goes to that instance while it is healthy
	// (climesh-connect does), even if the ring has changed since. For pools
	// without shared session storage. Empty: off.
	PinHeader string `yaml:"pin_header"`
}

// ReferencedFiles are the files ResolveFiles reads — the local JWKS files and the
// edge credential — which the xds-server watches: a change to one reloads the
// config, as SIGHUP does (a rotated key set or credential needs no restart).
func (c *Config) ReferencedFiles() []string {
	var out []string
	for _, p := range c.JWT.Providers {
		if p.LocalJWKSFile != "" {
			out = append(out, p.LocalJWKSFile)
		}
	}
	if f := c.Identity.EdgeCredentialFile; f != "" {
		out = append(out, f)
	}
	return out
}

// ResolveFiles reads the files the config names (Load does no I/O). Call it after
// Load, and again on every reload.
func (c *Config) ResolveFiles() error {
	for i := range c.JWT.Providers {
		p := &c.JWT.Providers[i]
		if p.LocalJWKSFile == "" {
			continue
		}
		jwks, err := ReadJWKS(p.LocalJWKSFile)
		if err != nil {
			return &FieldError{Field: fmt.Sprintf("jwt.providers[%d].local_jwks_file", i), Value: p.LocalJWKSFile, Kind: ErrMalformed, Detail: err.Error()}
		}
		p.LocalJWKS = jwks
	}
	if f := c.Identity.EdgeCredentialFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("%w: identity.edge_credential_file: %v", ErrInvalid, err)
		}
		// The first line is what Envoy sends; a second one is what the sidecars
		// also accept while the credential rotates (they read every line).
		lines, err := secret.CheckLines(b, secret.MinLength)
		if err != nil {
			kind := ErrOutOfRange
			if errors.Is(err, secret.ErrPlaceholder) {
				kind = ErrMalformed
			}
			return &FieldError{Field: "identity.edge_credential_file", Value: f, Kind: kind, Detail: err.Error()}
		}
		c.Identity.EdgeCredential = lines[0]
	}
	return nil
}

// ReadJWKS reads a JWKS file and refuses one that verifies nothing: not a JSON
// key set, no keys (the shipped placeholder is {"keys": []}), or a placeholder.
func ReadJWKS(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if secret.IsPlaceholder(b) {
		return "", fmt.Errorf("is %w (it contains %q): put your issuer's public keys in it", secret.ErrPlaceholder, secret.Marker)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return "", fmt.Errorf("is not a JWKS: %v", err)
	}
	if len(set.Keys) == 0 {
		return "", errors.New(`holds no keys (the shipped placeholder is {"keys": []}): put your issuer's public keys in it`)
	}
	return string(b), nil
}

// Listener is one Envoy listener accepting WebSocket tunnels.
type Listener struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	Port    int    `yaml:"port"`
	// NodeGroup is the Envoy --service-cluster that receives this listener.
	NodeGroup string `yaml:"node_group"`
	// Path is the tunnel path (exact match).
	Path string `yaml:"path"`
	// IdleTimeout closes a tunnel that carried no bytes for this long. Agent turns
	// can be silent for minutes, so the default is generous.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// Routes are tried in order; a route without When matches everything.
	Routes []Route `yaml:"routes"`
}

// Route sends matching tunnels to a pool.
type Route struct {
	Pool string       `yaml:"pool"`
	When *HeaderMatch `yaml:"when"`
}

// HeaderMatch matches a header by exact value, or by presence when Exact is empty.
type HeaderMatch struct {
	Header string `yaml:"header"`
	Exact  string `yaml:"exact"`
}

// Pool is a set of CLI instances, from Consul or listed statically.
type Pool struct {
	Name string `yaml:"name"`
	// ConsulService names the Consul service whose instances form the pool.
	ConsulService string `yaml:"consul_service"`
	// Static lists instances directly (no Consul needed).
	Static           []StaticInstance  `yaml:"static"`
	LB               LB                `yaml:"lb"`
	ConnectTimeout   time.Duration     `yaml:"connect_timeout"`
	CircuitBreakers  CircuitBreakers   `yaml:"circuit_breakers"`
	OutlierDetection *OutlierDetection `yaml:"outlier_detection"`
}

// StaticInstance is an instance named in the config file.
type StaticInstance struct {
	ID      string            `yaml:"id"`
	Address string            `yaml:"address"`
	Port    int               `yaml:"port"`
	Health  string            `yaml:"health"`
	Tags    []string          `yaml:"tags"`
	Meta    map[string]string `yaml:"meta"`
}

// LB is how Envoy picks an instance.
type LB struct {
	Policy  Policy  `yaml:"policy"`
	HashKey HashKey `yaml:"hash_key"`
	// RingEntriesPerHost (ring_hash, the default) gives every healthy instance the
	// same number of ring entries however many instances there are, so that adding
	// one moves only the users it takes (about 1/N). Envoy's fixed ring size gives
	// each host size/N entries instead, and a change of N also moves users between
	// the hosts that stayed.
	RingEntriesPerHost uint64 `yaml:"ring_entries_per_host"`
	// MinRingSize fixes the ring's minimum size the way Envoy does (excludes
	// ring_entries_per_host). MaxRingSize caps either.
	MinRingSize uint64 `yaml:"min_ring_size"`
	MaxRingSize uint64 `yaml:"max_ring_size"`
	// TableSize is maglev's lookup table size (a prime).
	TableSize uint64 `yaml:"table_size"`
	// HashBalanceFactor bounds an instance's load to factor/100 of the average
	// (bounded-load consistent hashing); 0 turns it off.
	HashBalanceFactor uint32 `yaml:"hash_balance_factor"`
	// PanicThresholdPercent: below this share of healthy hosts Envoy routes to all
	// hosts. 0 (the default) turns panic routing off: a dead CLI never takes users.
	PanicThresholdPercent *float64 `yaml:"panic_threshold_percent"`
}

// Policy is an Envoy load-balancing policy.
type Policy string

// The load-balancing policies.
const (
	RingHash     Policy = "ring_hash"
	Maglev       Policy = "maglev"
	RoundRobin   Policy = "round_robin"
	LeastRequest Policy = "least_request"
)

// Hashing reports whether the policy uses a hash key.
func (p Policy) Hashing() bool { return p == RingHash || p == Maglev }

// HashKey names the identity a hashing pool sticks on.
type HashKey string

// The hash keys.
const (
	HashUser    HashKey = "user"
	HashSession HashKey = "session"
	HashTenant  HashKey = "tenant"
)

// CircuitBreakers are Envoy's default-priority thresholds for the pool's cluster.
type CircuitBreakers struct {
	MaxConnections     uint32 `yaml:"max_connections"`
	MaxPendingRequests uint32 `yaml:"max_pending_requests"`
	MaxRequests        uint32 `yaml:"max_requests"`
	MaxRetries         uint32 `yaml:"max_retries"`
}

// OutlierDetection ejects instances that fail connections. Ejection is decided by
// each Envoy alone, so with several Envoys it can make hashing differ between them.
type OutlierDetection struct {
	Enabled                  *bool         `yaml:"enabled"`
	Consecutive5xx           uint32        `yaml:"consecutive_5xx"`
	ConsecutiveLocalFailures uint32        `yaml:"consecutive_local_origin_failures"`
	Interval                 time.Duration `yaml:"interval"`
	BaseEjectionTime         time.Duration `yaml:"base_ejection_time"`
	MaxEjectionPercent       uint32        `yaml:"max_ejection_percent"`
}

// On reports whether outlier detection is configured and enabled.
func (o *OutlierDetection) On() bool { return o != nil && (o.Enabled == nil || *o.Enabled) }

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML is the embedded configuration the demo runs on.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// ErrInvalid is wrapped by every validation error Load returns.
var ErrInvalid = errors.New("invalid config")

// Load parses YAML, rejects unknown fields, applies defaults and validates.
func Load(data []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty document", ErrInvalid)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrInvalid)
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Pool finds a pool by name.
func (c *Config) Pool(name string) (*Pool, bool) {
	for i := range c.Pools {
		if c.Pools[i].Name == name {
			return &c.Pools[i], true
		}
	}
	return nil, false
}

// NodeGroups lists every node group a listener names, in first-seen order.
func (c *Config) NodeGroups() []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range c.Listeners {
		if !seen[l.NodeGroup] {
			seen[l.NodeGroup] = true
			out = append(out, l.NodeGroup)
		}
	}
	return out
}

// HeaderFor returns the identity header a hash key reads.
func (id Identity) HeaderFor(k HashKey) string {
	switch k {
	case HashTenant:
		return id.TenantHeader
	case HashSession:
		return id.SessionHeader
	default:
		return id.UserHeader
	}
}

// Headers lists the identity headers a client may never set. The session header
// is not one: it names the shared session a client wants (a routing hint), and
// whether the caller may use that session is decided by policy on every message.
func (id Identity) Headers() []string {
	return []string{id.UserHeader, id.TenantHeader}
}
