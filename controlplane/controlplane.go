// Package controlplane is the xds-server's pipeline: discovery → coalesce →
// xds.Publisher, the ADS gRPC server, and the HTTP endpoints (/metrics, /healthz,
// /readyz, /debug/). It owns every goroutine it starts and stops them with its
// context. cmd/xds-server only parses flags and signals.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/decisionlog"
	"github.com/climesh/climesh/discovery"
	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/model"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/xds"
)

// Server runs the control plane for one config at a time; Reload swaps it.
type Server struct {
	log        *zap.Logger
	reg        *prometheus.Registry
	publisher  *xds.Publisher
	discMet    *discovery.Metrics
	reloads    chan *config.Config
	reloadErr  prometheus.Counter
	publishes  *prometheus.CounterVec
	edgePolicy *policy.Engine // the edge policy (nil when policy is off); set before serving

	mu        sync.Mutex
	cfg       *config.Config
	disc      *discovery.Discovery
	lastFleet model.Fleet
	lastErr   error
}

// New prepares a Server; Run starts it.
func New(cfg *config.Config, log *zap.Logger) *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := promauto.With(reg)
	return &Server{
		log:       log,
		reg:       reg,
		cfg:       cfg,
		publisher: xds.NewPublisher(log.Named("xds"), reg),
		discMet:   discovery.NewMetrics(reg),
		reloads:   make(chan *config.Config, 1),
		reloadErr: f.NewCounter(prometheus.CounterOpts{
			Name: "climesh_config_reload_errors_total", Help: "Config reloads refused; the running config stayed.",
		}),
		publishes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "climesh_controlplane_updates_total", Help: "Fleet or config updates handed to the publisher, by result.",
		}, []string{"result"}),
	}
}

// Publisher exposes the publisher, for tests and the debug view.
func (s *Server) Publisher() *xds.Publisher { return s.publisher }

// Reload validates nothing itself: pass a Config from config.Load. It replaces the
// running config; Consul pools keep their last known instances meanwhile.
func (s *Server) Reload(cfg *config.Config) {
	select {
	case <-s.reloads: // a newer reload replaces one not yet applied
	default:
	}
	s.reloads <- cfg
}

// ReloadFailed records a config that could not be loaded.
func (s *Server) ReloadFailed(err error) {
	s.reloadErr.Inc()
	s.log.Error("config reload refused; the running config stays", zap.Error(err))
}

// Run serves ADS and HTTP on the config's addresses until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	xdsLis, err := net.Listen("tcp", s.config().Server.XDSAddress)
	if err != nil {
		return fmt.Errorf("server.xds_address: %w", err)
	}
	httpLis, err := net.Listen("tcp", s.config().Server.HTTPAddress)
	if err != nil {
		xdsLis.Close()
		return fmt.Errorf("server.http_address: %w", err)
	}
	return s.Serve(ctx, xdsLis, httpLis)
}

// Serve is Run on listeners the caller made (tests use port 0).
func (s *Server) Serve(ctx context.Context, xdsLis, httpLis net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	creds, err := grpcCredentials(s.config().Server.TLS)
	if err != nil {
		xdsLis.Close()
		httpLis.Close()
		return err
	}
	grpcServer := grpc.NewServer(append(creds,
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.config().Server.Keepalive.Time, Timeout: s.config().Server.Keepalive.Timeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(1<<20),
	)...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(grpcServer, s.publisher.Server(ctx, s.config().Server.PushWindowBytes))
	if cfg := s.config(); cfg.Policy.On() {
		authz, err := s.startPolicy(ctx, cfg)
		if err != nil {
			xdsLis.Close()
			httpLis.Close()
			return err
		}
		authv3.RegisterAuthorizationServer(grpcServer, authz)
		s.edgePolicy = authz.Engine
	}
	httpServer := &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 5 * time.Second}

	errs := make(chan error, 3)
	go func() { errs <- grpcServer.Serve(xdsLis) }()
	go func() { errs <- httpServer.Serve(httpLis) }()
	go func() { errs <- s.loop(ctx) }()
	s.log.Info("serving", zap.String("xds_address", xdsLis.Addr().String()), zap.String("http_address", httpLis.Addr().String()),
		zap.Bool("tls", len(creds) > 0), zap.Bool("mtls", s.config().Server.TLS != nil && s.config().Server.TLS.ClientCAFile != ""))

	var first error
	select {
	case <-ctx.Done():
	case first = <-errs:
	}
	cancel()
	grpcServer.GracefulStop()
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	httpServer.Shutdown(shutdown)
	if errors.Is(first, http.ErrServerClosed) || errors.Is(first, context.Canceled) {
		first = nil
	}
	return first
}

// startPolicy loads the policy (it must compile at start), watches it for changes,
// and makes the ext_authz service. Later config reloads keep this policy source.
func (s *Server) startPolicy(ctx context.Context, cfg *config.Config) (*policy.ExtAuthz, error) {
	var opts []policy.Option
	if cfg.Policy.DataFile != "" {
		opts = append(opts, policy.WithData(cfg.Policy.DataFile))
	}
	if cfg.Policy.BundlePublicKeyFile != "" {
		key, err := os.ReadFile(cfg.Policy.BundlePublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("policy.bundle_public_key_file: %w", err)
		}
		opts = append(opts, policy.WithBundleSigning(policy.BundleSigning{PublicKeyPEM: key, Algorithm: cfg.Policy.BundleSigningAlgorithm}))
	}
	query := policy.DecisionQuery(cfg.Policy.DecisionPath)
	engine, err := policy.NewEngine(ctx, cfg.Policy.Source, []string{query}, s.log.Named("policy"), s.reg, opts...)
	if err != nil {
		return nil, fmt.Errorf("policy.source: %w", err)
	}
	keys, err := identity.OpenFile(cfg.Policy.IdentityKeysFile)
	if err != nil {
		return nil, fmt.Errorf("policy.identity_keys_file: %w", err)
	}
	go engine.Watch(ctx, cfg.Policy.WatchInterval)
	// A rotated key set (a Secret the kubelet updated) is read as often as the
	// policy: assertions are signed with its active key from then on.
	go keys.Watch(ctx, cfg.Policy.WatchInterval, func(changed bool, err error) {
		if err != nil {
			s.log.Warn("policy.identity_keys_file: keeping the last good key set", zap.Error(err))
		} else {
			s.log.Info("policy.identity_keys_file: a new key set is in use")
		}
	})
	claims := policy.Claims{User: cfg.JWT.UserClaim, Tenant: cfg.JWT.TenantClaim, Roles: cfg.JWT.RolesClaim}
	authz := policy.NewExtAuthz(engine, keys, claims, cfg.Policy.AssertionTTL, s.log.Named("extauthz"), s.reg)
	authz.Query = query
	if dl := cfg.Policy.DecisionLogs; dl != nil {
		sink, err := decisionSink(dl)
		if err != nil {
			return nil, err
		}
		host, _ := os.Hostname()
		authz.Decisions = decisionlog.New(ctx, sink, engine.Mask, decisionlog.Options{QueueSize: dl.QueueSize,
			Labels: map[string]string{"id": host, "app": "xds-server"}}, s.reg)
	}
	return authz, nil
}

// loop runs one Discovery per config; each coalesced change is published.
func (s *Server) loop(ctx context.Context) error {
	cfg := s.config()
	for {
		next, err := s.runConfig(ctx, cfg)
		if err != nil || next == nil {
			return err
		}
		cfg = next
		s.mu.Lock()
		s.cfg = cfg
		s.mu.Unlock()
		s.log.Info("config reloaded", zap.Int("pools", len(cfg.Pools)), zap.Int("listeners", len(cfg.Listeners)))
	}
}

// runConfig serves cfg until ctx ends (nil, nil) or a reload arrives (next, nil).
func (s *Server) runConfig(ctx context.Context, cfg *config.Config) (*config.Config, error) {
	src, err := consulSource(cfg)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	seed := s.lastFleet
	s.mu.Unlock()
	d, err := discovery.New(cfg, src, seed, s.log.Named("discovery"), s.discMet)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.disc = d
	s.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait() // after stop, below: defers run last-in first-out
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	wg.Go(func() { d.Run(dctx) })
	changes := discovery.Coalesce(dctx, d.Changed(), cfg.Server.Coalesce.Quiet, cfg.Server.Coalesce.MaxDelay)
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case next := <-s.reloads:
			return next, nil
		case <-changes:
			s.publish(ctx, cfg, d)
		}
	}
}

func (s *Server) publish(ctx context.Context, cfg *config.Config, d *discovery.Discovery) {
	if err := d.Ready(); err != nil {
		s.log.Debug("not publishing yet", zap.Error(err))
		return
	}
	fleet := d.Current()
	err := s.publisher.Update(ctx, cfg, fleet)
	s.mu.Lock()
	s.lastErr = err
	if err == nil {
		s.lastFleet = fleet
	}
	s.mu.Unlock()
	if err != nil {
		s.publishes.WithLabelValues("rejected").Inc()
		s.log.Error("update not published", zap.Error(err))
		return
	}
	s.publishes.WithLabelValues("ok").Inc()
}

func (s *Server) config() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// consulSource makes a Consul client when some pool needs one. The CONSUL_*
// environment variables (token, TLS) apply; consul.address wins over CONSUL_HTTP_ADDR.
func consulSource(cfg *config.Config) (discovery.Source, error) {
	needed := false
	for _, p := range cfg.Pools {
		needed = needed || p.ConsulService != ""
	}
	if !needed {
		return discovery.Source{}, nil
	}
	return discovery.ConsulSource(cfg.Consul)
}

// decisionSink is where policy.decision_logs sends decisions.
func decisionSink(dl *config.DecisionLogs) (decisionlog.Sink, error) {
	switch {
	case dl.Console:
		return &decisionlog.WriterSink{W: os.Stdout}, nil
	case dl.File != "":
		f, err := os.OpenFile(dl.File, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			return nil, fmt.Errorf("policy.decision_logs.file: %w", err)
		}
		return &decisionlog.WriterSink{W: f}, nil
	default:
		return &decisionlog.HTTPSink{URL: dl.URL}, nil
	}
}
