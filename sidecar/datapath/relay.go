// Package datapath is the sidecar's tunnel data path: it terminates tunnels,
// dials the local CLI once per tunnel, authenticates to it with the CLI's
// connection token (which clients never learn), and takes every frame, read once,
// through a pipeline of stages (pipeline.go) — local answers, policy, capacity,
// the collab lock, turns and metrics — each way. What keeps the instance alive
// around it (the CLI child, Consul registration, the sweeper, isolated mode's
// per-user CLIs, the drain sequence) is package sidecar's.
package datapath

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/sidecar/rebalance"
	"github.com/climesh/climesh/tunnel"
)

// Relay serves tunnels on one path.
type Relay struct {
	Log    *zap.Logger
	CLI    CLIDialer
	Limits jsonrpc.Limits
	// Keepalive pings the client this often, so that a tunnel stays busy while
	// a long turn is silent and no idle timer on the way (Envoy's stream idle
	// timeout, a load balancer's) cuts it. 0 turns it off.
	Keepalive time.Duration
	// Keys verify the edge's identity assertion (x-climesh-identity); when set, a
	// tunnel without a valid one is refused.
	Keys identity.Verifier
	// Policy decides every message (deny by default); nil relays everything.
	Policy *Policy
	// Users, in isolated mode, runs one CLI per caller; CLI is then only a
	// template for its limits.
	Users UserCLIs
	// EdgeCredential, when set, must arrive in x-climesh-edge-credential: only
	// Envoy adds it, so a client that dials the sidecar directly is refused.
	EdgeCredential *Credentials
	// Bounds limit each tunnel's tables; MaxTunnelsPerUser the tunnels one
	// (tenant, user) holds open here (0: no limit).
	Bounds            Bounds
	MaxTunnelsPerUser int
	// TurnTimeout ends a turn that runs longer (see turnDeadline); 0: never.
	TurnTimeout time.Duration
	// Capacity caps the sessions the CLI holds (see Capacity); nil: no cap.
	// Isolated mode has one CLI per user and no cap of this kind.
	Capacity *Capacity
	// HashKey is the identity the pool's ring hashes (config.HashKey: user,
	// tenant or session): a tunnel's key for rebalancing (Tunnels).
	HashKey string
	// TunnelOpened and TunnelClosed, when set, hear of every tunnel that
	// opens (with its hash key) and closes (the mover).
	TunnelOpened func(id uint64, key string)
	TunnelClosed func(id uint64, at time.Time)

	metrics  *relayMetrics
	wg       sync.WaitGroup
	mu       sync.Mutex
	open     map[*tunnel.Conn]*openTunnel
	nextID   uint64
	perUser  map[string]int
	draining bool
	turns    turns
}

type relayMetrics struct {
	tunnels  prometheus.Gauge
	messages *prometheus.CounterVec
	refused  *prometheus.CounterVec
	decision prometheus.Histogram
	inFlight prometheus.Gauge
	turn     prometheus.Histogram
	// turnTimeouts: turns ended by TurnTimeout
	turnTimeouts prometheus.Counter
	errors       *prometheus.CounterVec
	lockWait     prometheus.Histogram
	drains       prometheus.Counter
	restarts     prometheus.Counter
	active       prometheus.Gauge
	evicted      prometheus.Counter
	resumed      prometheus.Counter
}

// NewRelay registers its metrics on reg.
func NewRelay(log *zap.Logger, cli CLIDialer, limits jsonrpc.Limits, reg prometheus.Registerer) *Relay {
	m := metricsOn{promauto.With(reg)}
	rl := &Relay{
		Log: log, CLI: cli, Limits: limits, open: map[*tunnel.Conn]*openTunnel{},
		metrics: &relayMetrics{
			tunnels:      m.gauge("tunnels", "Open tunnels."),
			messages:     m.counters("messages_total", "Messages relayed, by direction (to_cli, to_client).", "direction"),
			refused:      m.counters("refused_total", "Tunnels or messages refused, by reason.", "reason"),
			decision:     m.histogram("decision_seconds", "Per-message policy decision time (registry lookup included).", 0.00001, 16),
			inFlight:     m.gauge("turns_in_flight", "Turns running through this sidecar."),
			turn:         m.histogram("turn_seconds", "From an accepted session.send to its session.idle or session.error.", 0.01, 16),
			turnTimeouts: m.counter("turns_timed_out_total", "Turns that ran past --turn-timeout: the CLI was asked to abort them and the client told."),
			errors:       m.counters("jsonrpc_errors_total", "JSON-RPC error answers from the CLI, by code.", "code"),
			lockWait:     m.histogram("lock_wait_seconds", "Time a shared session's turn waited for its lock (busy answers included).", 0.001, 18),
			drains:       m.counter("drains_total", "Drains begun."),
			restarts:     m.counter("cli_restarts_total", "Child CLI restarts."),
			active:       m.gauge("active_sessions", "Sessions the CLI holds in memory (attached on an open tunnel)."),
			evicted:      m.counter("evictions_total", "Idle sessions released with session.destroy because the CLI was at --capacity."),
			resumed:      m.counter("resumes_on_demand_total", "Released sessions resumed when their client named them again."),
		},
	}
	rl.turns.gauge = rl.metrics.inFlight.Set
	return rl
}

// metricsOn makes the sidecar's metrics, each named climesh_sidecar_<name>.
type metricsOn struct{ f promauto.Factory }

func (m metricsOn) gauge(name, help string) prometheus.Gauge {
	return m.f.NewGauge(prometheus.GaugeOpts{Name: "climesh_sidecar_" + name, Help: help})
}

func (m metricsOn) counter(name, help string) prometheus.Counter {
	return m.f.NewCounter(prometheus.CounterOpts{Name: "climesh_sidecar_" + name, Help: help})
}

func (m metricsOn) counters(name, help, label string) *prometheus.CounterVec {
	return m.f.NewCounterVec(prometheus.CounterOpts{Name: "climesh_sidecar_" + name, Help: help}, []string{label})
}

// histogram has exponential buckets from start, doubling, count of them.
func (m metricsOn) histogram(name, help string, start float64, count int) prometheus.Histogram {
	return m.f.NewHistogram(prometheus.HistogramOpts{Name: "climesh_sidecar_" + name, Help: help, Buckets: prometheus.ExponentialBuckets(start, 2, count)})
}

// SetCapacity caps the CLI's active sessions at n (0: no cap) and feeds the
// session metrics.
func (rl *Relay) SetCapacity(n int) {
	rl.Capacity = &Capacity{Max: n, Log: rl.Log, Evicted: rl.metrics.evicted.Inc, Resumed: rl.metrics.resumed.Inc,
		Changed: func(n int) { rl.metrics.active.Set(float64(n)) }}
}

// ServeHTTP accepts one tunnel and relays it until either side closes.
func (rl *Relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rl.Draining() {
		rl.metrics.refused.WithLabelValues("draining").Inc()
		http.Error(w, "climesh sidecar: draining; connect to another instance", http.StatusServiceUnavailable)
		return
	}
	if rl.EdgeCredential != nil && !rl.EdgeCredential.Accepts(r.Header.Get(protocol.HeaderEdgeCredential)) {
		rl.metrics.refused.WithLabelValues("edge_credential").Inc()
		http.Error(w, "climesh sidecar: missing or wrong edge credential: tunnels come through the edge", http.StatusUnauthorized)
		return
	}
	var caller identity.Claims
	if rl.Keys != nil {
		var err error
		if caller, err = rl.Keys.Verify(r.Header.Get(protocol.HeaderIdentity), time.Now()); err != nil {
			rl.metrics.refused.WithLabelValues("identity").Inc()
			http.Error(w, "climesh sidecar: "+err.Error(), http.StatusUnauthorized)
			return
		}
	}
	userKey := caller.Tenant + "/" + caller.User
	if !rl.enterUser(userKey) {
		rl.metrics.refused.WithLabelValues("user_tunnels").Inc()
		http.Error(w, fmt.Sprintf("climesh sidecar: too many tunnels for this user (limit %d)", rl.MaxTunnelsPerUser), http.StatusTooManyRequests)
		return
	}
	defer rl.leaveUser(userKey)
	c, err := tunnel.Accept(w, r, rl.Limits.MaxFrameBytes)
	if err != nil {
		rl.metrics.refused.WithLabelValues("upgrade").Inc()
		return // Accept has answered the HTTP request
	}
	ot := &openTunnel{key: rl.hashKey(caller, r.Header), opened: time.Now(), movable: features(r.Header)[protocol.FeatureMove]}
	rl.track(c, ot)
	defer rl.untrack(c)
	rl.wg.Add(1)
	defer rl.wg.Done()
	log := rl.Log.With(zap.String("remote", r.RemoteAddr), zap.String("tenant", caller.Tenant), zap.String("user", caller.User))
	ctx := r.Context()

	dialer := rl.Dialer()
	if rl.Users != nil {
		d, release, err := rl.Users.Acquire(ctx, caller.Tenant, caller.User)
		if err != nil {
			rl.metrics.refused.WithLabelValues("user_cli").Inc()
			log.Warn("no CLI for this user", zap.Error(err))
			rl.answerAll(ctx, c, protocol.CodeUnavailable, err.Error())
			return
		}
		defer release()
		d.Limits, d.Timeout = dialer.Limits, dialer.Timeout
		dialer = d
	}
	cli, err := dialer.Dial(ctx)
	if err != nil {
		// Answer what the client asks with the cause, then close: no hang.
		rl.metrics.refused.WithLabelValues("cli_unavailable").Inc()
		log.Warn("tunnel without a CLI", zap.Error(err))
		rl.answerAll(ctx, c, protocol.CodeUnavailable, err.Error())
		return
	}
	defer cli.Close()
	var guard *Guard
	if rl.Policy != nil {
		guard = rl.Policy.guardFor(caller, log, rl.Bounds, r.Header.Get(protocol.HeaderLockWait))
		defer guard.Close()
	}
	rl.relay(ctx, log, c, cli, guard)
}

// openTunnel is what the relay keeps of an open tunnel for rebalancing.
type openTunnel struct {
	id      uint64
	key     string    // the identity the pool's ring hashes
	opened  time.Time // accepted
	movable bool      // the client follows protocol.MethodMove
}

func (rl *Relay) track(c *tunnel.Conn, ot *openTunnel) {
	rl.mu.Lock()
	rl.nextID++
	ot.id = rl.nextID
	rl.open[c] = ot
	rl.metrics.tunnels.Inc()
	rl.mu.Unlock()
	if rl.TunnelOpened != nil {
		rl.TunnelOpened(ot.id, ot.key)
	}
}

func (rl *Relay) untrack(c *tunnel.Conn) {
	rl.mu.Lock()
	ot := rl.open[c]
	delete(rl.open, c)
	rl.metrics.tunnels.Dec()
	rl.mu.Unlock()
	if ot != nil && rl.TunnelClosed != nil {
		rl.TunnelClosed(ot.id, time.Now())
	}
}

// hashKey is the value Envoy hashes to place this tunnel on the pool's ring.
func (rl *Relay) hashKey(caller identity.Claims, h http.Header) string {
	switch rl.HashKey {
	case "tenant":
		return caller.Tenant
	case "session":
		return h.Get(protocol.HeaderSession)
	default:
		return caller.User
	}
}

// features is the set a client announced in protocol.HeaderFeatures.
func features(h http.Header) map[string]bool {
	out := map[string]bool{}
	for _, v := range h.Values(protocol.HeaderFeatures) {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out[f] = true
			}
		}
	}
	return out
}

// Tunnels lists the open tunnels for the mover (package rebalance).
func (rl *Relay) Tunnels() []rebalance.Tunnel {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	out := make([]rebalance.Tunnel, 0, len(rl.open))
	for _, ot := range rl.open {
		out = append(out, rebalance.Tunnel{ID: ot.id, Key: ot.key, Opened: ot.opened, Movable: ot.movable})
	}
	return out
}

// moveNotice is protocol.MethodMove as the client gets it.
var moveNotice = []byte(`{"jsonrpc":"2.0","method":"` + protocol.MethodMove + `","params":{}}`)

// askTimeout bounds writing a move to a client: one that does not read holds
// nobody else up.
const askTimeout = time.Second

// AskToMove sends tunnel id's client protocol.MethodMove; false when the
// tunnel is gone (or its client cannot be written to within askTimeout).
func (rl *Relay) AskToMove(id uint64) bool {
	rl.mu.Lock()
	var conn *tunnel.Conn
	for c, ot := range rl.open {
		if ot.id == id && ot.movable {
			conn = c
		}
	}
	rl.mu.Unlock()
	if conn == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
	defer cancel()
	return conn.Write(ctx, moveNotice) == nil
}

// enterUser counts a tunnel of user, or refuses it past MaxTunnelsPerUser.
func (rl *Relay) enterUser(user string) bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.MaxTunnelsPerUser > 0 && rl.perUser[user] >= rl.MaxTunnelsPerUser {
		return false
	}
	if rl.perUser == nil {
		rl.perUser = map[string]int{}
	}
	rl.perUser[user]++
	return true
}

func (rl *Relay) leaveUser(user string) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.perUser[user]--; rl.perUser[user] <= 0 {
		delete(rl.perUser, user)
	}
}

// CloseAll closes every open tunnel with reason (clients reconnect elsewhere).
func (rl *Relay) CloseAll(reason string) {
	rl.mu.Lock()
	conns := make([]*tunnel.Conn, 0, len(rl.open))
	for c := range rl.open {
		conns = append(conns, c)
	}
	rl.mu.Unlock()
	for _, c := range conns {
		c.Close(reason)
	}
}

// Wait blocks until every tunnel handler has returned.
func (rl *Relay) Wait() { rl.wg.Wait() }

// Load describes the instance's load for its Consul check:
// "active_sessions=N capacity=M turns_in_flight=T tunnels=U".
func (rl *Relay) Load() string {
	active, max := 0, 0
	if rl.Capacity != nil {
		active, max = rl.Capacity.Active(), rl.Capacity.Max
	}
	rl.mu.Lock()
	tunnels := len(rl.open)
	rl.mu.Unlock()
	return fmt.Sprintf("active_sessions=%d capacity=%d turns_in_flight=%d tunnels=%d", active, max, rl.turns.Running(), tunnels)
}

// CLIRestarted counts a child CLI restart.
func (rl *Relay) CLIRestarted() { rl.metrics.restarts.Inc() }

// SetCLI points new tunnels at a CLI, after a restart.
func (rl *Relay) SetCLI(addr, token string) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.CLI.Addr, rl.CLI.Token = addr, token
}

// Dialer reaches the CLI new tunnels use (the sweeper deletes through it).
func (rl *Relay) Dialer() CLIDialer {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return rl.CLI
}

// UserCLIs gives each caller a CLI of their own (isolated mode: the sidecar's
// UserPool): the dialer of the caller's CLI, and a release for when the tunnel
// closes.
type UserCLIs interface {
	Acquire(ctx context.Context, tenant, user string) (CLIDialer, func(), error)
}
