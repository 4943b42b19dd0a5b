package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/climesh/climesh/config/field"
)

// Sentinel kinds of validation error, matched with errors.Is; the four that every
// binary's config shares are package field's.
var (
	ErrRequired     = field.ErrRequired
	ErrOutOfRange   = field.ErrOutOfRange
	ErrUnknownValue = errors.New("unknown value")
	ErrDuplicate    = errors.New("duplicate")
	ErrConflict     = field.ErrConflict
	ErrUnknownRef   = errors.New("unknown reference")
	ErrMalformed    = field.ErrMalformed
)

// FieldError names the field at fault, the value and why.
type FieldError struct {
	Field  string
	Value  any
	Kind   error
	Detail string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.Field)
	b.WriteString(": ")
	b.WriteString(e.Kind.Error())
	if e.Value != nil {
		fmt.Fprintf(&b, " %q", fmt.Sprint(e.Value))
	}
	if e.Detail != "" {
		b.WriteString(" (")
		b.WriteString(e.Detail)
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap lets errors.Is match both the kind and ErrInvalid.
func (e *FieldError) Unwrap() []error { return []error{e.Kind, ErrInvalid} }

// Largest sizes Envoy accepts.
const (
	maxRingSize      = 8 * 1024 * 1024
	minBalanceFactor = 100
)

// MaxMaglevTable is the largest Maglev table Envoy accepts.
const MaxMaglevTable = 5000011

var (
	namePattern   = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)
	headerPattern = regexp.MustCompile(`^[a-z0-9!#$%&'*+.^_|~-]+$`)
)

type validator struct{ errs []error }

func (v *validator) add(field string, value any, kind error, detail string) {
	v.errs = append(v.errs, &FieldError{Field: field, Value: value, Kind: kind, Detail: detail})
}

func (v *validator) addr(field, value string) {
	if _, _, err := net.SplitHostPort(value); err != nil {
		v.add(field, value, ErrMalformed, "want host:port")
	}
}

func (v *validator) positive(field string, d time.Duration) {
	if d <= 0 {
		v.add(field, d, ErrOutOfRange, "want a positive duration")
	}
}

// decisionPath is a rule's path under data, as OPA-Envoy's path setting.
var decisionPath = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$`)

// Validate checks a defaulted Config. Load calls it; call it again after editing one.
func (c *Config) Validate() error {
	v := &validator{}
	v.addr("server.xds_address", c.Server.XDSAddress)
	v.addr("server.http_address", c.Server.HTTPAddress)
	v.positive("server.coalesce.quiet", c.Server.Coalesce.Quiet)
	if c.Server.Coalesce.MaxDelay < c.Server.Coalesce.Quiet {
		v.add("server.coalesce.max_delay", c.Server.Coalesce.MaxDelay, ErrOutOfRange, "must be at least server.coalesce.quiet")
	}
	// gRPC would raise a shorter time to its floor of 1s without a word.
	if c.Server.Keepalive.Time < time.Second {
		v.add("server.keepalive.time", c.Server.Keepalive.Time, ErrOutOfRange, "want at least 1s")
	}
	v.positive("server.keepalive.timeout", c.Server.Keepalive.Timeout)
	if c.Server.PushWindowBytes < 1<<20 {
		v.add("server.push_window_bytes", c.Server.PushWindowBytes, ErrOutOfRange, "want at least 1048576 (1 MiB)")
	}
	v.addr("consul.address", c.Consul.Address)
	v.positive("consul.wait_time", c.Consul.WaitTime)
	v.positive("consul.retry_min", c.Consul.RetryMin)
	if c.Consul.RetryMax < c.Consul.RetryMin {
		v.add("consul.retry_max", c.Consul.RetryMax, ErrOutOfRange, "must be at least consul.retry_min")
	}
	c.Identity.validate(v)
	c.JWT.validate(v)
	if strings.HasPrefix(c.Policy.Source, "http://") || strings.HasPrefix(c.Policy.Source, "https://") {
		if c.Policy.BundlePublicKeyFile == "" {
			v.add("policy.bundle_public_key_file", nil, ErrRequired, "policy.source is a bundle service: its bundles must be signed, and verified with this key")
		}
		if u, err := url.Parse(c.Policy.Source); err != nil || u.Host == "" || !strings.HasSuffix(u.Path, ".tar.gz") {
			v.add("policy.source", c.Policy.Source, ErrMalformed, "a bundle service is the URL of a .tar.gz bundle")
		} else if u.Scheme == "http" && !loopback(u.Hostname()) {
			v.add("policy.source", c.Policy.Source, ErrMalformed, "plain http is accepted on loopback only; use https")
		}
	} else if c.Policy.BundlePublicKeyFile != "" {
		v.add("policy.bundle_public_key_file", c.Policy.BundlePublicKeyFile, ErrConflict, "needs policy.source to be a bundle service (an http(s) URL)")
	}
	if c.Policy.On() && !decisionPath.MatchString(c.Policy.DecisionPath) {
		v.add("policy.decision_path", c.Policy.DecisionPath, ErrMalformed, "want rule names separated by slashes, e.g. envoy/authz/allow")
	}
	if dl := c.Policy.DecisionLogs; dl != nil {
		n := 0
		for _, on := range []bool{dl.Console, dl.File != "", dl.URL != ""} {
			if on {
				n++
			}
		}
		if n != 1 {
			v.add("policy.decision_logs", nil, ErrConflict, "want exactly one of console, file, url")
		}
		if dl.URL != "" {
			if u, err := url.Parse(dl.URL); err != nil || u.Host == "" || u.Scheme != "https" && !(u.Scheme == "http" && loopback(u.Hostname())) {
				v.add("policy.decision_logs.url", dl.URL, ErrMalformed, "want https (http on loopback only)")
			}
		}
		if dl.QueueSize < 0 {
			v.add("policy.decision_logs.queue_size", dl.QueueSize, ErrOutOfRange, "want 0 (default 10000) or more")
		}
	}
	switch c.Policy.BundleSigningAlgorithm {
	case "", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512":
	default:
		v.add("policy.bundle_signing_algorithm", c.Policy.BundleSigningAlgorithm, ErrUnknownValue, "want one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512")
	}
	if c.Policy.DataFile != "" && !c.Policy.On() {
		v.add("policy.data_file", c.Policy.DataFile, ErrConflict, "needs policy.source: the data is merged into a policy")
	}
	c.validateTLS(v)
	if c.Policy.On() {
		v.addr("policy.ext_authz_address", c.Policy.ExtAuthzAddress)
		v.positive("policy.timeout", c.Policy.Timeout)
		v.positive("policy.assertion_ttl", c.Policy.AssertionTTL)
		if c.Policy.IdentityKeysFile == "" {
			v.add("policy.identity_keys_file", nil, ErrRequired, "the edge signs an identity assertion for the sidecars")
		}
		if len(c.JWT.Providers) == 0 && !c.Identity.TrustClientHeaders {
			v.add("jwt.providers", nil, ErrRequired, "policy needs a verified identity: add a JWT provider")
		}
	}
	if len(c.Listeners) == 0 {
		v.add("listeners", nil, ErrRequired, "at least one listener")
	}
	if len(c.Pools) == 0 {
		v.add("pools", nil, ErrRequired, "at least one pool")
	}
	pools := map[string]bool{}
	for i := range c.Pools {
		p := &c.Pools[i]
		field := fmt.Sprintf("pools[%d]", i)
		if pools[p.Name] {
			v.add(field+".name", p.Name, ErrDuplicate, "pool names must be unique")
		}
		pools[p.Name] = true
		p.validate(v, field)
	}
	names, binds := map[string]bool{}, map[string]string{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		field := fmt.Sprintf("listeners[%d]", i)
		if names[l.Name] {
			v.add(field+".name", l.Name, ErrDuplicate, "listener names must be unique")
		}
		names[l.Name] = true
		bind := net.JoinHostPort(l.Address, fmt.Sprint(l.Port))
		if other, ok := binds[bind]; ok {
			v.add(field+".port", l.Port, ErrDuplicate, "listener "+other+" binds "+bind+" already")
		}
		binds[bind] = l.Name
		l.validate(v, field, pools)
	}
	if len(v.errs) == 0 {
		return nil
	}
	return errors.Join(v.errs...)
}

// validateTLS: a server certificate needs its key; with TLS on, Envoy's
// ext_authz cluster needs a CA to verify the server, and with mTLS a client
// certificate of its own.
func (c *Config) validateTLS(v *validator) {
	if t := c.Server.TLS; t != nil {
		if t.CertFile == "" {
			v.add("server.tls.cert_file", nil, ErrRequired, "the xds-server's certificate (PEM)")
		}
		if t.KeyFile == "" {
			v.add("server.tls.key_file", nil, ErrRequired, "the certificate's private key (PEM)")
		}
	}
	a := c.Policy.ExtAuthzTLS
	switch {
	case a == nil && c.Server.TLS != nil && c.Policy.On():
		v.add("policy.ext_authz_tls", nil, ErrRequired, "server.tls is on: Envoy's ext_authz cluster must speak TLS too (trusted_ca_file; cert_file and key_file for mTLS)")
	case a == nil:
	case c.Server.TLS == nil:
		v.add("policy.ext_authz_tls", nil, ErrConflict, "needs server.tls: the ext_authz service is served on the xds-server's gRPC port")
	default:
		if a.TrustedCAFile == "" {
			v.add("policy.ext_authz_tls.trusted_ca_file", nil, ErrRequired, "the CA Envoy verifies the xds-server with")
		}
		if (a.CertFile == "") != (a.KeyFile == "") {
			v.add("policy.ext_authz_tls.cert_file", a.CertFile, ErrConflict, "cert_file and key_file go together")
		}
		if c.Server.TLS.ClientCAFile != "" && a.CertFile == "" {
			v.add("policy.ext_authz_tls.cert_file", nil, ErrRequired, "server.tls.client_ca_file asks every client for a certificate")
		}
	}
}

func (id *Identity) validate(v *validator) {
	seen := map[string]string{}
	headers := map[string]string{
		"identity.user_header": id.UserHeader, "identity.tenant_header": id.TenantHeader, "identity.session_header": id.SessionHeader,
	}
	if id.PinHeader != "" {
		headers["identity.pin_header"] = id.PinHeader
	}
	for _, field := range slices.Sorted(maps.Keys(headers)) {
		h := headers[field]
		if !headerPattern.MatchString(h) {
			v.add(field, h, ErrMalformed, "want a lower-case HTTP header name")
		}
		if other, ok := seen[h]; ok {
			v.add(field, h, ErrDuplicate, "also used by "+other)
		}
		seen[h] = field
	}
}

func (j *JWT) validate(v *validator) {
	names := map[string]bool{}
	for i, p := range j.Providers {
		f := fmt.Sprintf("jwt.providers[%d]", i)
		if !namePattern.MatchString(p.Name) {
			v.add(f+".name", p.Name, ErrMalformed, "want lower-case letters, digits, '.', '_' or '-'")
		}
		if names[p.Name] {
			v.add(f+".name", p.Name, ErrDuplicate, "provider names must be unique")
		}
		names[p.Name] = true
		if p.Issuer == "" {
			v.add(f+".issuer", nil, ErrRequired, "")
		}
		switch {
		case p.LocalJWKSFile == "" && p.RemoteJWKS == nil:
			v.add(f, p.Name, ErrRequired, "a provider needs local_jwks_file or remote_jwks")
		case p.LocalJWKSFile != "" && p.RemoteJWKS != nil:
			v.add(f+".remote_jwks", nil, ErrConflict, "local_jwks_file and remote_jwks exclude each other")
		case p.RemoteJWKS != nil:
			u, err := url.Parse(p.RemoteJWKS.URI)
			switch {
			case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "":
				v.add(f+".remote_jwks.uri", p.RemoteJWKS.URI, ErrMalformed, "want an http(s) URL")
			case u.Scheme == "http" && !loopback(u.Hostname()):
				v.add(f+".remote_jwks.uri", p.RemoteJWKS.URI, ErrMalformed, "want https: keys fetched in clear could be swapped on the way (http only on loopback)")
			case u.Scheme == "http" && p.RemoteJWKS.TrustedCAFile != "":
				v.add(f+".remote_jwks.trusted_ca_file", p.RemoteJWKS.TrustedCAFile, ErrConflict, "needs an https uri")
			}
		}
	}
}

// loopback reports whether host is localhost or a loopback address.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

func (l *Listener) validate(v *validator, field string, pools map[string]bool) {
	if !namePattern.MatchString(l.Name) {
		v.add(field+".name", l.Name, ErrMalformed, "want lower-case letters, digits, '.', '_' or '-'")
	}
	if _, err := netip.ParseAddr(l.Address); err != nil {
		v.add(field+".address", l.Address, ErrMalformed, "want an IP address")
	}
	if l.Port < 1 || l.Port > 65535 {
		v.add(field+".port", l.Port, ErrOutOfRange, "want 1-65535")
	}
	if !namePattern.MatchString(l.NodeGroup) {
		v.add(field+".node_group", l.NodeGroup, ErrMalformed, "want lower-case letters, digits, '.', '_' or '-'")
	}
	if !strings.HasPrefix(l.Path, "/") {
		v.add(field+".path", l.Path, ErrMalformed, "want an absolute path")
	}
	v.positive(field+".idle_timeout", l.IdleTimeout)
	if len(l.Routes) == 0 {
		v.add(field+".routes", nil, ErrRequired, "at least one route")
	}
	for j, r := range l.Routes {
		rf := fmt.Sprintf("%s.routes[%d]", field, j)
		if r.Pool == "" {
			v.add(rf+".pool", nil, ErrRequired, "")
		} else if !pools[r.Pool] {
			v.add(rf+".pool", r.Pool, ErrUnknownRef, "no pool of that name")
		}
		if r.When == nil {
			if j != len(l.Routes)-1 {
				v.add(rf+".when", nil, ErrRequired, "only the last route may match everything; later routes would never match")
			}
		} else if !headerPattern.MatchString(r.When.Header) {
			v.add(rf+".when.header", r.When.Header, ErrMalformed, "want a lower-case HTTP header name")
		}
	}
}

func (p *Pool) validate(v *validator, field string) {
	if !namePattern.MatchString(p.Name) {
		v.add(field+".name", p.Name, ErrMalformed, "want lower-case letters, digits, '.', '_' or '-'")
	}
	switch {
	case p.ConsulService == "" && len(p.Static) == 0:
		v.add(field, p.Name, ErrRequired, "a pool needs a source: consul_service or static")
	case p.ConsulService != "" && len(p.Static) > 0:
		v.add(field+".static", nil, ErrConflict, "consul_service and static exclude each other")
	}
	ids := map[string]bool{}
	for j, s := range p.Static {
		sf := fmt.Sprintf("%s.static[%d]", field, j)
		if s.ID == "" {
			v.add(sf+".id", nil, ErrRequired, "")
		} else if ids[s.ID] {
			v.add(sf+".id", s.ID, ErrDuplicate, "instance ids must be unique in a pool")
		}
		ids[s.ID] = true
		if _, err := netip.ParseAddr(s.Address); err != nil {
			v.add(sf+".address", s.Address, ErrMalformed, "want an IP address")
		}
		if s.Port < 1 || s.Port > 65535 {
			v.add(sf+".port", s.Port, ErrOutOfRange, "want 1-65535")
		}
		switch s.Health {
		case "healthy", "draining", "unhealthy":
		default:
			v.add(sf+".health", s.Health, ErrUnknownValue, "want healthy|draining|unhealthy")
		}
	}
	p.LB.validate(v, field+".lb")
	v.positive(field+".connect_timeout", p.ConnectTimeout)
	if o := p.OutlierDetection; o.On() {
		of := field + ".outlier_detection"
		v.positive(of+".interval", o.Interval)
		v.positive(of+".base_ejection_time", o.BaseEjectionTime)
		if o.MaxEjectionPercent > 100 {
			v.add(of+".max_ejection_percent", o.MaxEjectionPercent, ErrOutOfRange, "want 0-100")
		}
	}
}

func (lb *LB) validate(v *validator, field string) {
	switch lb.Policy {
	case RingHash, Maglev, RoundRobin, LeastRequest:
	default:
		v.add(field+".policy", lb.Policy, ErrUnknownValue, "want ring_hash|maglev|round_robin|least_request")
		return
	}
	if !lb.Policy.Hashing() {
		if lb.HashKey != "" || lb.HashBalanceFactor != 0 {
			v.add(field+".hash_key", lb.HashKey, ErrConflict, "hash_key and hash_balance_factor need policy ring_hash or maglev")
		}
	} else {
		switch lb.HashKey {
		case HashUser, HashSession, HashTenant:
		default:
			v.add(field+".hash_key", lb.HashKey, ErrUnknownValue, "want user|session|tenant")
		}
		if lb.HashBalanceFactor != 0 && lb.HashBalanceFactor < minBalanceFactor {
			v.add(field+".hash_balance_factor", lb.HashBalanceFactor, ErrOutOfRange, "want 0 (off) or at least 100")
		}
	}
	if lb.Policy != RingHash && (lb.MinRingSize != 0 || lb.MaxRingSize != 0 || lb.RingEntriesPerHost != 0) {
		v.add(field+".min_ring_size", lb.MinRingSize, ErrConflict, "ring sizes need policy ring_hash")
	}
	if lb.Policy == RingHash {
		if lb.MinRingSize != 0 && lb.RingEntriesPerHost != 0 {
			v.add(field+".ring_entries_per_host", lb.RingEntriesPerHost, ErrConflict, "ring_entries_per_host and min_ring_size exclude each other")
		}
		if lb.RingEntriesPerHost > 65536 {
			v.add(field+".ring_entries_per_host", lb.RingEntriesPerHost, ErrOutOfRange, "want at most 65536")
		}
		if lb.MaxRingSize > maxRingSize {
			v.add(field+".max_ring_size", lb.MaxRingSize, ErrOutOfRange, fmt.Sprintf("want at most %d", maxRingSize))
		}
		if lb.MinRingSize > lb.MaxRingSize {
			v.add(field+".min_ring_size", lb.MinRingSize, ErrOutOfRange, "must not exceed max_ring_size")
		}
	}
	if lb.Policy != Maglev && lb.TableSize != 0 {
		v.add(field+".table_size", lb.TableSize, ErrConflict, "table_size needs policy maglev")
	}
	if lb.Policy == Maglev && !ValidMaglevTableSize(lb.TableSize) {
		v.add(field+".table_size", lb.TableSize, ErrOutOfRange, fmt.Sprintf("want a prime no larger than %d", MaxMaglevTable))
	}
	if p := lb.PanicThresholdPercent; p != nil && (*p < 0 || *p > 100) {
		v.add(field+".panic_threshold_percent", *p, ErrOutOfRange, "want 0-100")
	}
}

// ValidMaglevTableSize reports whether n is a table size Envoy's Maglev takes:
// a prime no larger than MaxMaglevTable.
func ValidMaglevTableSize(n uint64) bool { return n <= MaxMaglevTable && isPrime(n) }

func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
