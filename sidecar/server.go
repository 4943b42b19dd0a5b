// Package sidecar runs beside one Copilot CLI instance: it starts and supervises
// the CLI (or per-user CLIs, in isolated mode), registers the instance in Consul
// with a check that follows the CLI's ping, sweeps idle sessions, serves the admin
// listener, and drains on SIGTERM. The tunnels themselves — every frame, every
// decision — are package datapath's; this package builds it from the one typed
// Config (config.go) and runs it (server.go).
package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/climesh/climesh/config/secret"
	"github.com/climesh/climesh/decisionlog"
	"github.com/climesh/climesh/filewatch"
	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/periodic"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/lock"
	"github.com/climesh/climesh/session/registry"

	"github.com/climesh/climesh/sidecar/datapath"
)

// Version is reported in the Consul meta.
const Version = "0.1.0"

// Server is one climesh-sidecar: what New builds from a Config (the CLI, the
// relay and its stages, the listeners, the Consul registration, lock and
// sweeper), served by Run until its context ends or POST /drain.
type Server struct {
	cfg   Config
	log   *zap.Logger
	Relay *datapath.Relay

	child        *Child    // nil: an attached CLI, or isolated mode
	users        *UserPool // isolated mode only
	cliHome      string
	health       *Health                   // the CLI's ping: /readyz and the Consul check
	registration *Registration             // nil without --consul
	sweeper      *Sweeper                  // nil unless cfg.Sweeps()
	reaper       *Reaper                   // nil unless --consul-registration catalog
	moves        *moves                    // nil unless --rebalance
	draining     atomic.Bool               // the drain has begun: /readyz fails
	keys         *identity.File            // --identity-keys, read again when it changes (rotation)
	creds        *filewatch.File[[]string] // --edge-credential-file, likewise

	lis, adminLis net.Listener
	srv, adminSrv *http.Server
	drainNow      chan struct{}
	drainOnce     sync.Once
}

// New checks cfg (Validate) and builds the sidecar: it starts the child CLI (not
// in isolated mode), prepares the isolated users' directories, loads the identity
// keys, the policy and the credentials, binds both listeners and makes the
// Consul client. It serves nothing and registers nothing: Run does. ctx bounds
// the CLI's start and the policy's first load. Metrics go to reg. On error,
// whatever it started is stopped.
func New(ctx context.Context, cfg Config, log *zap.Logger, reg *prometheus.Registry) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, drainNow: make(chan struct{})}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	limits := jsonrpc.Limits{MaxHeaderBytes: jsonrpc.DefaultLimits.MaxHeaderBytes, MaxFrameBytes: cfg.MaxFrameBytes}
	cli := datapath.CLIDialer{Addr: cfg.CLIAddress, Token: cfg.CLIToken, Limits: limits}
	if cfg.CLICommand != "" && cfg.Mode != ModeIsolated {
		home := cfg.CLIHome
		if home == "" {
			if home, err = os.MkdirTemp("", "climesh-cli-home-"); err != nil {
				return nil, err
			}
		}
		if s.child, err = StartChild(ctx, cfg.CLICommand, home); err != nil {
			return nil, err
		}
		cli.Addr, cli.Token = s.child.Addr, s.child.Token
		s.cliHome = home
	}

	rl := datapath.NewRelay(log, cli, limits, reg)
	s.Relay = rl
	rl.Keepalive = cfg.Keepalive
	rl.TurnTimeout = cfg.TurnTimeout
	rl.SetCapacity(cfg.Capacity)
	if cfg.Mode == ModeIsolated {
		if s.users, err = cfg.userPool(log.Named("users")); err != nil {
			return nil, err
		}
		rl.Users = s.users
	}
	rl.Bounds = datapath.Bounds{Pending: cfg.MaxPending, Sessions: cfg.MaxTunnelSessions}
	rl.MaxTunnelsPerUser = cfg.MaxTunnelsPerUser
	if cfg.IdentityKeys != "" {
		if s.keys, err = identity.OpenFile(cfg.IdentityKeys); err != nil {
			return nil, fmt.Errorf("--identity-keys: %w", err)
		}
		rl.Keys = s.keys
	}
	if cfg.Policy != "" {
		var opts []policy.Option
		if cfg.PolicyData != "" {
			opts = append(opts, policy.WithData(cfg.PolicyData))
		}
		if cfg.PolicyBundleKey != "" {
			key, err := os.ReadFile(cfg.PolicyBundleKey)
			if err != nil {
				return nil, fmt.Errorf("--policy-bundle-key: %w", err)
			}
			opts = append(opts, policy.WithBundleSigning(policy.BundleSigning{PublicKeyPEM: key, Algorithm: cfg.PolicyBundleAlg}))
		}
		engine, err := policy.NewEngine(ctx, cfg.Policy, []string{policy.MessageQuery}, log.Named("policy"), reg, opts...)
		if err != nil {
			return nil, fmt.Errorf("--policy: %w", err)
		}
		rl.Policy = &datapath.Policy{Engine: engine, Registry: &registry.Memory{}, Instance: cfg.Instance(), Pool: cfg.Pool, Mode: cfg.Mode,
			RecordTTL: 2 * time.Second, LockWaitMax: cfg.LockWaitMax}
		if cfg.DecisionLog != "" || cfg.DecisionLogURL != "" {
			var sink decisionlog.Sink = &decisionlog.HTTPSink{URL: cfg.DecisionLogURL}
			switch cfg.DecisionLog {
			case "":
			case "-":
				sink = &decisionlog.WriterSink{W: os.Stdout}
			default:
				f, err := os.OpenFile(cfg.DecisionLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
				if err != nil {
					return nil, fmt.Errorf("--decision-log: %w", err)
				}
				sink = &decisionlog.WriterSink{W: f}
			}
			rl.Policy.Decisions = decisionlog.New(ctx, sink, engine.Mask, decisionlog.Options{
				Labels: map[string]string{"id": cfg.Instance(), "app": "climesh-sidecar"}}, reg)
		}
	}
	if cfg.EdgeCredentialFile != "" {
		s.creds, err = filewatch.Open(cfg.EdgeCredentialFile, func(path string, b []byte) ([]string, error) {
			return secret.LinesOf(path, b, secret.MinLength)
		})
		if err != nil {
			return nil, fmt.Errorf("--edge-credential-file %w", err)
		}
		rl.EdgeCredential = datapath.NewCredentials(s.creds.Current()...)
	} else {
		log.Warn("no --edge-credential-file: any client that reaches --listen can open a tunnel")
	}
	var adminCred string
	if cfg.AdminCredentialFile != "" {
		if adminCred, err = readSecret("--admin-credential-file", cfg.AdminCredentialFile, secret.MinLength); err != nil {
			return nil, err
		}
	}

	mux := http.NewServeMux()
	mux.Handle(cfg.Path, rl)
	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.health = &Health{Log: log.Named("health"), Interval: cfg.PingInterval, Failures: cfg.PingFailures, CLI: cli, Load: rl.Load}
	if rl.Users != nil {
		s.health.Probe = func(context.Context) error {
			_, err := exec.LookPath(cfg.CLICommand)
			return err
		}
	}
	// /healthz: the process serves (a liveness probe: restart me if not).
	// /readyz: route to me — the CLI answers its ping and no drain has begun (a
	// readiness probe, and what Consul's check says).
	admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	// /status: the per-message policy's state (policy.Status), 404 without --policy.
	admin.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		if rl.Policy == nil {
			http.Error(w, "no --policy", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"policy": rl.Policy.Engine.Status()})
	})
	admin.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := s.health.Current()
		switch {
		case s.draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case !ok:
			http.Error(w, why, http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ready")
		}
	})
	// Go's profiles, for an operator (and bench/datapath -profile): behind the
	// admin credential, like drain, since a profile shows the process's innards.
	admin.Handle("GET /debug/pprof/", AdminOnly(adminCred, http.HandlerFunc(pprof.Index)))
	admin.Handle("GET /debug/pprof/profile", AdminOnly(adminCred, http.HandlerFunc(pprof.Profile)))
	// POST /drain: take the instance out (admin listener only, credential if set).
	admin.Handle("POST /drain", AdminOnly(adminCred, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.drainOnce.Do(func() { close(s.drainNow) })
		fmt.Fprintln(w, "draining")
	})))
	if s.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	if s.adminLis, err = net.Listen("tcp", cfg.AdminListen); err != nil {
		return nil, fmt.Errorf("--admin-listen: %w", err)
	}
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.adminSrv = &http.Server{Handler: admin, ReadHeaderTimeout: 10 * time.Second}

	if cfg.Consul != "" {
		if err := s.consul(admin, adminCred, cli, reg); err != nil {
			return nil, err
		}
	}
	if cfg.Rebalance {
		if s.moves, err = s.newMoves(reg); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// userPool is isolated mode's pool of per-user CLIs, prepared (directories, UID
// map, the shared package).
func (c Config) userPool(log *zap.Logger) (*UserPool, error) {
	p := &UserPool{Command: c.CLICommand, Root: c.UsersRoot, Secrets: c.UserSecrets, Cap: c.MaxUsers, IdleAfter: c.UserIdle, Log: log,
		PkgCache: filepath.Join(c.UsersRoot, ".copilot-pkg")}
	if c.UserUIDs != "" {
		var err error
		if p.UIDs, err = ParseUIDRange(c.UserUIDs); err != nil {
			return nil, fmt.Errorf("--user-uids: %w", err)
		}
	}
	if c.UserEnv != "" {
		p.PassEnv = strings.Split(c.UserEnv, ",")
	}
	if err := p.Prepare(); err != nil {
		return nil, fmt.Errorf("--mode isolated: %w", err)
	}
	return p, nil
}

// consul wires what lives in Consul: the shared session registry (with a
// policy), the collab turn lock, the pool's sweeper and POST /sweep, and the
// instance's registration.
func (s *Server) consul(admin *http.ServeMux, adminCred string, cli datapath.CLIDialer, reg prometheus.Registerer) error {
	cfg, rl := s.cfg, s.Relay
	ccfg := api.DefaultConfig() // honours CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...
	ccfg.Address = cfg.Consul
	// Every call this client makes ends within --consul-timeout (the sidecar
	// makes no blocking queries): registration, checks, sessions, locks and
	// records alike, so that a stalled Consul never holds a goroutine.
	httpClient, err := api.NewHttpClient(ccfg.Transport, ccfg.TLSConfig)
	if err != nil {
		return fmt.Errorf("--consul: %w", err)
	}
	httpClient.Timeout = cfg.ConsulTimeout
	ccfg.HttpClient = httpClient
	client, err := api.NewClient(ccfg)
	if err != nil {
		return fmt.Errorf("--consul: %w", err)
	}
	var sessions registry.Registry
	locker := &lock.Locker{Client: client, Prefix: "climesh/locks/", TTL: cfg.LockTTL, LockDelay: cfg.LockDelay, Instance: cfg.Instance(),
		Timeout: cfg.ConsulTimeout}
	if cfg.ConsulRegistration == RegistrationCatalog {
		locker.Node = cfg.ConsulNodeName() // no agent: sessions live on the instance's own node
	}
	if rl.Policy != nil {
		staleAnswers := promauto.With(reg).NewCounter(prometheus.CounterOpts{
			Name: "climesh_sidecar_stale_records_total", Help: "Session records answered from memory because Consul did not answer within --consul-timeout.",
		})
		sessions = &registry.Resilient{
			Store:   &registry.Consul{KV: client.KV(), Prefix: "climesh/sessions/"},
			Timeout: cfg.ConsulTimeout, StaleFor: cfg.StaleRecords,
			OnStale: func(string, time.Duration) { staleAnswers.Inc() },
		}
		rl.Policy.Registry = sessions
		if cfg.Mode == ModeCollab {
			rl.Policy.Locker = locker
		}
	}
	if cfg.Sweeps() {
		swept := promauto.With(reg).NewCounter(prometheus.CounterOpts{
			Name: "climesh_sidecar_sessions_swept_total", Help: "Idle sessions this sidecar deleted as the pool's sweeper.",
		})
		s.sweeper = &Sweeper{Registry: sessions, Locker: locker, Relay: rl, Pool: cfg.Pool, Instance: cfg.Instance(),
			Log: s.log.Named("sweeper"), OnSwept: func(n int) { swept.Add(float64(n)) }}
		// POST /sweep[?ttl=2m]: the admin call; answers how many it deleted.
		admin.Handle("POST /sweep", AdminOnly(adminCred, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ttl := cfg.SessionTTL
			if v := r.URL.Query().Get("ttl"); v != "" {
				d, err := time.ParseDuration(v)
				if err != nil {
					http.Error(w, "ttl: "+err.Error(), http.StatusBadRequest)
					return
				}
				ttl = d
			}
			n, err := s.sweeper.Sweep(r.Context(), ttl)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, n)
		})))
	}
	_, port, _ := net.SplitHostPort(cfg.Listen)
	portNum, _ := strconv.Atoi(port) // Validate: a fixed port
	var backend Backend = &AgentBackend{Agent: client.Agent(), TTL: cfg.CheckTTL}
	if cfg.ConsulRegistration == RegistrationCatalog {
		backend = &CatalogBackend{Client: client, Node: cfg.ConsulNodeName(), SessionTTL: cfg.LivenessTTL, Log: s.log.Named("registration")}
		s.reaper = &Reaper{Client: client, Locker: locker, Pool: cfg.Pool, Instance: cfg.Instance(), Log: s.log.Named("reaper")}
	}
	s.registration = &Registration{
		Backend: backend, Log: s.log, Pool: cfg.Pool, InstanceID: cfg.Instance(), Address: cfg.AdvertiseAddress(), Port: portNum,
		Meta: map[string]string{"mode": cfg.Mode, "capacity": strconv.Itoa(cfg.Capacity), "version": Version},
	}
	s.health.Report = s.registration.Report
	return nil
}

// AdminAddr is the admin listener's address (--admin-listen may name port 0).
func (s *Server) AdminAddr() net.Addr { return s.adminLis.Addr() }

// readSecret reads a credential file: trimmed, at least least characters.
func readSecret(flagName, file string, least int) (string, error) {
	v, err := secret.ReadFile(file, least)
	if err != nil {
		return "", fmt.Errorf("%s %w", flagName, err)
	}
	return v, nil
}

// Run serves until ctx ends (SIGTERM) or POST /drain, then drains: it marks the
// instance draining in Consul (no new users), lets running turns finish (up to
// --drain-timeout), closes the tunnels, deregisters and stops the CLI. It
// registers the instance first; a registration Consul refuses is returned. Call
// it once.
func (s *Server) Run(ctx context.Context) error {
	cfg, rl, log := s.cfg, s.Relay, s.log
	ctx, cancel := context.WithCancel(ctx) // ends the watchers if Run returns early
	defer cancel()
	defer s.adminSrv.Close()
	if s.users != nil {
		go s.users.Run(ctx)
	}
	if rl.Policy != nil {
		go rl.Policy.Engine.Watch(ctx, cfg.PolicyWatch)
	}
	if s.creds != nil { // so is a rotated edge credential: every line is accepted
		go s.creds.Watch(ctx, cfg.PolicyWatch, func(changed bool, err error) {
			if err != nil {
				log.Warn("--edge-credential-file: keeping the credentials it held", zap.Error(err))
				return
			}
			rl.EdgeCredential.Set(s.creds.Current())
			log.Info("--edge-credential-file: new credentials accepted", zap.Int("count", len(s.creds.Current())))
		})
	}
	if s.keys != nil { // a rotated key set is checked as often as the policy
		go s.keys.Watch(ctx, cfg.PolicyWatch, func(changed bool, err error) {
			if err != nil {
				log.Warn("--identity-keys: keeping the last good key set", zap.Error(err))
			} else {
				log.Info("--identity-keys: a new key set is in use")
			}
		})
	}
	go s.srv.Serve(s.lis)
	go s.adminSrv.Serve(s.adminLis)
	if s.sweeper != nil && cfg.SweepInterval > 0 {
		go s.sweeper.Run(ctx, cfg.SweepInterval, cfg.SessionTTL)
	}
	if s.registration != nil {
		if err := s.registration.Register(); err != nil {
			s.close()
			return fmt.Errorf("register in consul at %s: %w", cfg.Consul, err)
		}
	}
	go s.health.Run(ctx)
	if s.moves != nil {
		go s.moves.run(ctx)
	}
	if s.reaper != nil {
		go periodic.Every(ctx, cfg.LivenessTTL, func() bool {
			if _, err := s.reaper.Reap(ctx); err != nil && ctx.Err() == nil {
				log.Warn("reaper", zap.Error(err))
			}
			return true
		})
	}
	log.Info("serving", zap.String("listen", cfg.Listen), zap.String("admin", cfg.AdminListen), zap.String("cli", rl.CLI.Addr), zap.String("pool", cfg.Pool))

	var supervised sync.WaitGroup
	superviseCtx, stopSupervisor := context.WithCancel(context.Background())
	if s.child != nil {
		sup := NewSupervisor(s.child, cfg.CLICommand, s.cliHome, rl, s.health, log)
		sup.OnRestart = rl.CLIRestarted
		s.child = nil // the supervisor stops it
		supervised.Go(func() { sup.Run(superviseCtx) })
	}
	select {
	case <-ctx.Done():
	case <-s.drainNow:
	}
	// Leave routing first (DRAINING in Consul, so in Envoy: no new users; not
	// ready for a platform that routes by readiness), let running turns finish,
	// then close tunnels so clients reconnect elsewhere.
	s.draining.Store(true)
	if s.registration != nil {
		if err := s.registration.SetDraining(); err != nil {
			log.Warn("mark draining in consul", zap.Error(err))
		}
	}
	start := time.Now()
	left := rl.Drain(context.Background(), cfg.DrainTimeout)
	log.Info("drained", zap.Duration("took", time.Since(start)), zap.Int("turns_cut", left))
	s.srv.Close()
	rl.Wait()
	if s.registration != nil {
		if err := s.registration.Deregister(); err != nil {
			log.Warn("deregister", zap.Error(err))
		}
	}
	stopSupervisor() // stops the CLI
	supervised.Wait()
	return nil
}

// close releases what New made when the sidecar will not run.
func (s *Server) close() {
	for _, srv := range []*http.Server{s.srv, s.adminSrv} {
		if srv != nil {
			srv.Close()
		}
	}
	for _, l := range []net.Listener{s.lis, s.adminLis} {
		if l != nil {
			l.Close() // a server that never served does not close it
		}
	}
	if s.child != nil {
		s.child.Stop(10 * time.Second)
		s.child = nil
	}
}
