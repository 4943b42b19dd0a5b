package config

import (
	"strings"
	"time"

	"github.com/climesh/climesh/protocol"
)

// Named defaults. Each is applied only where the operator left the field empty.
const (
	DefaultXDSAddress       = "127.0.0.1:18000"
	DefaultHTTPAddress      = "127.0.0.1:18001"
	DefaultCoalesceQuiet    = 10 * time.Millisecond
	DefaultCoalesceMaxDelay = 100 * time.Millisecond
	DefaultKeepaliveTime    = 30 * time.Second
	DefaultKeepaliveTimeout = 20 * time.Second
	DefaultPushWindowBytes  = 64 << 20
	DefaultNodeGroup        = "edge"

	DefaultConsulAddress  = "127.0.0.1:8500"
	DefaultConsulWaitTime = 5 * time.Minute
	DefaultConsulRetryMin = 250 * time.Millisecond
	DefaultConsulRetryMax = 10 * time.Second

	DefaultUserHeader    = protocol.HeaderUser
	DefaultTenantHeader  = protocol.HeaderTenant
	DefaultSessionHeader = protocol.HeaderSession

	DefaultListenerAddress = "127.0.0.1"
	DefaultListenerPath    = "/v1/rpc"
	DefaultIdleTimeout     = time.Hour

	DefaultPolicy         = RingHash
	DefaultHashKey        = HashUser
	DefaultRingEntries    = 256
	DefaultMaxRingSize    = 8 * 1024 * 1024
	DefaultMaglevTable    = 65537
	DefaultConnectTimeout = 2 * time.Second

	DefaultMaxConnections     = 1024
	DefaultMaxPendingRequests = 1024
	DefaultMaxRequests        = 1024
	DefaultMaxRetries         = 3

	DefaultUserClaim   = "sub"
	DefaultTenantClaim = "tenant"
	DefaultRolesClaim  = "roles"
	DefaultJWKSTimeout = 5 * time.Second
	DefaultJWKSCache   = 10 * time.Minute
	// DefaultTrustedCAFile is the system CA bundle of Debian, Ubuntu (Envoy's
	// own images) and Alpine.
	DefaultTrustedCAFile = "/etc/ssl/certs/ca-certificates.crt"
	DefaultPolicyWatch   = time.Second
	DefaultAuthzTimeout  = 200 * time.Millisecond
	DefaultDecisionPath  = "climesh/edge/allow"
	DefaultAssertionTTL  = time.Minute

	DefaultConsecutive5xx     = 5
	DefaultOutlierInterval    = 10 * time.Second
	DefaultBaseEjectionTime   = 30 * time.Second
	DefaultMaxEjectionPercent = 10
)

func (c *Config) applyDefaults() {
	s := &c.Server
	setString(&s.XDSAddress, DefaultXDSAddress)
	setString(&s.HTTPAddress, DefaultHTTPAddress)
	setDuration(&s.Coalesce.Quiet, DefaultCoalesceQuiet)
	setDuration(&s.Coalesce.MaxDelay, DefaultCoalesceMaxDelay)
	setDuration(&s.Keepalive.Time, DefaultKeepaliveTime)
	setDuration(&s.Keepalive.Timeout, DefaultKeepaliveTimeout)
	if s.PushWindowBytes == 0 {
		s.PushWindowBytes = DefaultPushWindowBytes
	}

	setString(&c.Consul.Address, DefaultConsulAddress)
	setDuration(&c.Consul.WaitTime, DefaultConsulWaitTime)
	setDuration(&c.Consul.RetryMin, DefaultConsulRetryMin)
	setDuration(&c.Consul.RetryMax, DefaultConsulRetryMax)

	setString(&c.Identity.UserHeader, DefaultUserHeader)
	setString(&c.Identity.TenantHeader, DefaultTenantHeader)
	setString(&c.Identity.SessionHeader, DefaultSessionHeader)

	setString(&c.JWT.UserClaim, DefaultUserClaim)
	setString(&c.JWT.TenantClaim, DefaultTenantClaim)
	setString(&c.JWT.RolesClaim, DefaultRolesClaim)
	for i := range c.JWT.Providers {
		if r := c.JWT.Providers[i].RemoteJWKS; r != nil {
			setDuration(&r.Timeout, DefaultJWKSTimeout)
			setDuration(&r.CacheDuration, DefaultJWKSCache)
			if strings.HasPrefix(r.URI, "https:") {
				setString(&r.TrustedCAFile, DefaultTrustedCAFile)
			}
		}
	}
	if c.Policy.On() {
		setDuration(&c.Policy.WatchInterval, DefaultPolicyWatch)
		setString(&c.Policy.DecisionPath, DefaultDecisionPath)
		setString(&c.Policy.ExtAuthzAddress, s.XDSAddress)
		setDuration(&c.Policy.Timeout, DefaultAuthzTimeout)
		setDuration(&c.Policy.AssertionTTL, DefaultAssertionTTL)
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		setString(&l.Address, DefaultListenerAddress)
		setString(&l.NodeGroup, DefaultNodeGroup)
		setString(&l.Path, DefaultListenerPath)
		setDuration(&l.IdleTimeout, DefaultIdleTimeout)
	}
	if len(c.Listeners) > 0 {
		setString(&s.DefaultNodeGroup, c.Listeners[0].NodeGroup)
	}
	for i := range c.Pools {
		c.Pools[i].applyDefaults()
	}
}

func (p *Pool) applyDefaults() {
	setString((*string)(&p.LB.Policy), string(DefaultPolicy))
	if p.LB.Policy.Hashing() {
		setString((*string)(&p.LB.HashKey), string(DefaultHashKey))
	}
	if p.LB.Policy == RingHash {
		if p.LB.MinRingSize == 0 {
			setUint64(&p.LB.RingEntriesPerHost, DefaultRingEntries)
		}
		setUint64(&p.LB.MaxRingSize, DefaultMaxRingSize)
	}
	if p.LB.Policy == Maglev {
		setUint64(&p.LB.TableSize, DefaultMaglevTable)
	}
	if p.LB.PanicThresholdPercent == nil {
		zero := 0.0
		p.LB.PanicThresholdPercent = &zero
	}
	setDuration(&p.ConnectTimeout, DefaultConnectTimeout)
	cb := &p.CircuitBreakers
	setUint32(&cb.MaxConnections, DefaultMaxConnections)
	setUint32(&cb.MaxPendingRequests, DefaultMaxPendingRequests)
	setUint32(&cb.MaxRequests, DefaultMaxRequests)
	setUint32(&cb.MaxRetries, DefaultMaxRetries)
	if o := p.OutlierDetection; o.On() {
		setUint32(&o.Consecutive5xx, DefaultConsecutive5xx)
		setDuration(&o.Interval, DefaultOutlierInterval)
		setDuration(&o.BaseEjectionTime, DefaultBaseEjectionTime)
		setUint32(&o.MaxEjectionPercent, DefaultMaxEjectionPercent)
	}
	for i := range p.Static {
		setString(&p.Static[i].Health, "healthy")
	}
}

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setDuration(p *time.Duration, v time.Duration) {
	if *p == 0 {
		*p = v
	}
}

func setUint32(p *uint32, v uint32) {
	if *p == 0 {
		*p = v
	}
}

func setUint64(p *uint64, v uint64) {
	if *p == 0 {
		*p = v
	}
}
