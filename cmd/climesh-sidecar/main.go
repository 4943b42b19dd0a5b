// Command climesh-sidecar runs beside one Copilot CLI: it terminates climesh tunnels
// on --listen, relays them to the CLI with the CLI's own token, and keeps the
// instance registered in Consul with a check that follows the CLI's ping.
//
//	climesh-sidecar --listen 127.0.0.1:7001 --pool copilot --consul 127.0.0.1:8500 \
//	    --cli-command copilot --cli-home /var/lib/climesh/cli-1
//	climesh-sidecar ... --cli-address 127.0.0.1:4321   # token from $COPILOT_CONNECTION_TOKEN
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/lock"
	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/sidecar"
)

// version is reported in the Consul meta.
const version = "0.1.0"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "climesh-sidecar:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:7001", "`address` for tunnels (/v1/rpc) and nothing else")
	adminListen := flag.String("admin-listen", "127.0.0.1:7101", "`address` for /metrics, /healthz and the admin calls POST /drain and POST /sweep; a non-loopback address needs --admin-credential-file")
	adminCredFile := flag.String("admin-credential-file", "", "`file` with a secret the admin calls must carry (Authorization: Bearer ...); GET /metrics and /healthz stay open")
	maxPending := flag.Int("max-pending", sidecar.DefaultBounds.Pending, "most requests one tunnel may have awaiting the CLI's answer")
	maxSessions := flag.Int("max-tunnel-sessions", sidecar.DefaultBounds.Sessions, "most sessions one tunnel's decisions remember (records, visibility); past it they are decided again")
	maxUserTunnels := flag.Int("max-tunnels-per-user", 32, "most tunnels one (tenant, user) may hold open on this sidecar (0: no limit)")
	path := flag.String("path", "/v1/rpc", "tunnel `path`")
	pool := flag.String("pool", "copilot", "Consul service `name` (the climesh pool)")
	instanceID := flag.String("instance-id", "", "Consul service `id` (default: pool-port)")
	consulAddr := flag.String("consul", "", "Consul HTTP `address`; empty: do not register")
	advertise := flag.String("advertise", "", "`address` registered in Consul (default: the --listen host)")
	cliAddr := flag.String("cli-address", "", "attach to a running CLI at `host:port` (token from $COPILOT_CONNECTION_TOKEN)")
	cliCommand := flag.String("cli-command", "", "run the CLI as a child: the copilot `executable`")
	cliHome := flag.String("cli-home", "", "COPILOT_HOME for --cli-command (default: a new temp dir)")
	capacity := flag.Int("capacity", 50, "most sessions the CLI holds in memory; past it the least recently used idle one is released with session.destroy and resumed on demand (0: no cap; published in Consul meta)")
	interval := flag.Duration("ping-interval", 2*time.Second, "how often the CLI is pinged for the Consul check")
	ttl := flag.Duration("check-ttl", 6*time.Second, "Consul TTL check: critical if no passing ping for this long")
	keepalive := flag.Duration("keepalive", 30*time.Second, "ping each client this often so idle timers do not cut a long turn; a client that does not answer within 3x this (at least 10s) is dropped (0: off)")
	drainTimeout := flag.Duration("drain-timeout", 2*time.Minute, "on SIGTERM or POST /drain: longest wait for running turns before tunnels are closed")
	sessionTTL := flag.Duration("session-ttl", 30*time.Minute, "sessions idle longer than this are deleted (disk and registry) by the pool's sweeper")
	sweepEvery := flag.Duration("sweep-interval", time.Minute, "how often the pool's sweeper runs (one sidecar at a time, elected in Consul; 0: only POST /sweep)")
	credFile := flag.String("edge-credential-file", "", "`file` with the secret Envoy adds to tunnels (identity.edge_credential_file); tunnels without it are refused")
	keysFile := flag.String("identity-keys", "", "`file` with the keys that verify the edge's identity assertion (policy.identity_keys_file)")
	policySource := flag.String("policy", "", "Rego `dir` or bundle for per-message decisions (deny by default); needs --identity-keys")
	policyWatch := flag.Duration("policy-watch", time.Second, "how often --policy is checked for changes")
	logLevel := flag.String("log-level", "info", "log `level`")
	mode := flag.String("mode", "shared", "`mode`: shared (pattern 2), collab (pattern 3: shared sessions, one turn at a time) or isolated (pattern 1: one CLI per user)")
	usersRoot := flag.String("users-root", "", "isolated: `dir` holding each user's COPILOT_HOME (<dir>/<tenant>/<user>/home, mode 0700)")
	userSecrets := flag.String("user-secrets", "", "isolated: `dir` of <tenant>/<user>.env files (KEY=VALUE: GitHub token, provider key); never logged")
	userUIDs := flag.String("user-uids", "", "isolated: `range` FIRST-LAST of UIDs, one per (tenant, user); each CLI runs under its own UID and GID with a home only it can read (the sidecar must run as root); empty: users are separated by directory permissions only")
	userEnv := flag.String("user-env", "", "isolated: comma-separated `names` of the sidecar's environment variables each CLI also gets (a proxy, a CA bundle); nothing else of the sidecar's environment is passed")
	maxUsers := flag.Int("max-users", 20, "isolated: most CLIs at once; past it the least recently used idle one is stopped, or the tunnel refused")
	userIdle := flag.Duration("user-idle", 10*time.Minute, "isolated: stop a user's CLI after this long without a tunnel")
	lockTTL := flag.Duration("lock-ttl", 10*time.Second, "collab: Consul session TTL of a turn lock (a crashed holder frees it within this)")
	lockDelay := flag.Duration("lock-delay", time.Second, "collab: Consul lock-delay after a holder's session is invalidated")
	lockWaitMax := flag.Duration("lock-wait-max", 5*time.Minute, "collab: longest wait a caller may ask for (x-climesh-lock-wait)")
	maxFrame := flag.Int("max-frame-bytes", jsonrpc.DefaultLimits.MaxFrameBytes, "largest JSON-RPC message accepted")
	flag.Parse()

	if (*cliAddr == "") == (*cliCommand == "") {
		return errors.New("give exactly one of --cli-address and --cli-command")
	}
	if *mode == "isolated" && (*cliCommand == "" || *usersRoot == "" || *keysFile == "") {
		return errors.New("--mode isolated needs --cli-command, --users-root and --identity-keys (a CLI per verified user)")
	}
	host, portStr, err := net.SplitHostPort(*listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", *listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return fmt.Errorf("--listen %q: want a fixed port", *listen)
	}
	if *instanceID == "" {
		*instanceID = *pool + "-" + portStr
	}
	if *advertise == "" {
		*advertise = host
	}
	if *policySource != "" && *keysFile == "" {
		return errors.New("--policy needs --identity-keys: per-message decisions need a verified caller")
	}
	zc := zap.NewProductionConfig()
	if zc.Level, err = zap.ParseAtomicLevel(*logLevel); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	zc.DisableStacktrace = true
	log, err := zc.Build(zap.WithCaller(false))
	if err != nil {
		return err
	}
	log = log.Named("sidecar").With(zap.String("instance", *instanceID))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	limits := jsonrpc.Limits{MaxHeaderBytes: jsonrpc.DefaultLimits.MaxHeaderBytes, MaxFrameBytes: *maxFrame}
	cli := sidecar.CLIDialer{Addr: *cliAddr, Token: os.Getenv("COPILOT_CONNECTION_TOKEN"), Limits: limits}
	var child *sidecar.Child
	if *cliCommand != "" && *mode != "isolated" {
		home := *cliHome
		if home == "" {
			if home, err = os.MkdirTemp("", "climesh-cli-home-"); err != nil {
				return err
			}
		}
		if child, err = sidecar.StartChild(ctx, *cliCommand, home); err != nil {
			return err
		}
		cli.Addr, cli.Token = child.Addr, child.Token
		*cliHome = home
	} else if *cliAddr != "" && cli.Token == "" {
		return errors.New("--cli-address needs $COPILOT_CONNECTION_TOKEN: the CLI must not run without a token")
	}

	reg := prometheus.NewRegistry()
	relay := sidecar.NewRelay(log, cli, limits, reg)
	relay.Keepalive = *keepalive
	if *capacity < 0 {
		return fmt.Errorf("--capacity %d: want 0 (no cap) or more", *capacity)
	}
	relay.SetCapacity(*capacity)
	if *mode != "shared" && *mode != "collab" && *mode != "isolated" {
		return fmt.Errorf("--mode %q: want shared, collab or isolated", *mode)
	}
	if *mode == "isolated" {
		relay.Users = &sidecar.UserPool{Command: *cliCommand, Root: *usersRoot, Secrets: *userSecrets, Cap: *maxUsers, IdleAfter: *userIdle, Log: log.Named("users"),
			PkgCache: filepath.Join(*usersRoot, ".copilot-pkg")}
		if *userUIDs != "" {
			if relay.Users.UIDs, err = sidecar.ParseUIDRange(*userUIDs); err != nil {
				return fmt.Errorf("--user-uids: %w", err)
			}
		}
		if *userEnv != "" {
			relay.Users.PassEnv = strings.Split(*userEnv, ",")
		}
		if err := relay.Users.Prepare(); err != nil {
			return fmt.Errorf("--mode isolated: %w", err)
		}
		go relay.Users.Run(ctx)
	}
	relay.Instance, relay.Pool, relay.Mode, relay.RecordTTL, relay.LockWaitMax = *instanceID, *pool, *mode, 2*time.Second, *lockWaitMax
	if *maxPending <= 0 || *maxSessions <= 0 || *maxUserTunnels < 0 {
		return fmt.Errorf("--max-pending %d, --max-tunnel-sessions %d: want more than 0; --max-tunnels-per-user %d: want 0 or more", *maxPending, *maxSessions, *maxUserTunnels)
	}
	relay.Bounds = sidecar.Bounds{Pending: *maxPending, Sessions: *maxSessions}
	relay.MaxTunnelsPerUser = *maxUserTunnels
	if *keysFile != "" {
		if relay.Keys, err = identity.LoadKeys(*keysFile); err != nil {
			return fmt.Errorf("--identity-keys: %w", err)
		}
	}
	if *policySource != "" {
		if relay.Engine, err = policy.NewEngine(ctx, *policySource, []string{policy.MessageQuery}, log.Named("policy"), reg); err != nil {
			return fmt.Errorf("--policy: %w", err)
		}
		go relay.Engine.Watch(ctx, *policyWatch)
		relay.Registry = &registry.Memory{}
	}
	if *credFile != "" {
		b, err := os.ReadFile(*credFile)
		if err != nil {
			return fmt.Errorf("--edge-credential-file: %w", err)
		}
		if relay.EdgeCredential = strings.TrimSpace(string(b)); relay.EdgeCredential == "" {
			return fmt.Errorf("--edge-credential-file %s is empty", *credFile)
		}
	} else {
		log.Warn("no --edge-credential-file: any client that reaches --listen can open a tunnel")
	}
	adminCred, err := readAdminCredential(*adminListen, *adminCredFile)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(*path, relay)
	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	drainNow := make(chan struct{})
	var drainOnce sync.Once
	// POST /drain: take the instance out (admin listener only, credential if set).
	admin.Handle("POST /drain", sidecar.AdminOnly(adminCred, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		drainOnce.Do(func() { close(drainNow) })
		fmt.Fprintln(w, "draining")
	})))
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	adminLis, err := net.Listen("tcp", *adminListen)
	if err != nil {
		return fmt.Errorf("--admin-listen: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(lis)
	adminSrv := &http.Server{Handler: admin, ReadHeaderTimeout: 10 * time.Second}
	go adminSrv.Serve(adminLis)
	defer adminSrv.Close()

	var registration *sidecar.Registration
	if *consulAddr != "" {
		ccfg := api.DefaultConfig() // honours CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...
		ccfg.Address = *consulAddr
		client, err := api.NewClient(ccfg)
		if err != nil {
			return fmt.Errorf("--consul: %w", err)
		}
		if relay.Engine != nil {
			relay.Registry = &registry.Consul{KV: client.KV(), Prefix: "climesh/sessions/"}
		}
		locker := &lock.Locker{Client: client, Prefix: "climesh/locks/", TTL: *lockTTL, LockDelay: *lockDelay, Instance: *instanceID}
		if *mode == "collab" {
			relay.Locker = locker
		}
		if relay.Engine != nil && relay.Users == nil {
			swept := promauto.With(reg).NewCounter(prometheus.CounterOpts{
				Name: "climesh_sidecar_sessions_swept_total", Help: "Idle sessions this sidecar deleted as the pool's sweeper.",
			})
			sweeper := &sidecar.Sweeper{Registry: relay.Registry, Locker: locker, Relay: relay, Pool: *pool, Instance: *instanceID,
				Log: log.Named("sweeper"), OnSwept: func(n int) { swept.Add(float64(n)) }}
			if *sweepEvery > 0 {
				go sweeper.Run(ctx, *sweepEvery, *sessionTTL)
			}
			// POST /sweep[?ttl=2m]: the admin call; answers how many it deleted.
			admin.Handle("POST /sweep", sidecar.AdminOnly(adminCred, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ttl := *sessionTTL
				if v := r.URL.Query().Get("ttl"); v != "" {
					d, err := time.ParseDuration(v)
					if err != nil {
						http.Error(w, "ttl: "+err.Error(), http.StatusBadRequest)
						return
					}
					ttl = d
				}
				n, err := sweeper.Sweep(r.Context(), ttl)
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				fmt.Fprintln(w, n)
			})))
		}
		registration = &sidecar.Registration{
			Agent: client.Agent(), Log: log, Pool: *pool, InstanceID: *instanceID, Address: *advertise, Port: port,
			Meta: map[string]string{"mode": *mode, "capacity": strconv.Itoa(*capacity), "version": version},
			TTL:  *ttl, Interval: *interval, CLI: cli, Load: relay.Load,
		}
		if relay.Users != nil {
			registration.Probe = func(context.Context) error {
				_, err := exec.LookPath(*cliCommand)
				return err
			}
		}
		if err := registration.Register(); err != nil {
			return fmt.Errorf("register in consul at %s: %w", *consulAddr, err)
		}
		go registration.Run(ctx)
	}
	log.Info("serving", zap.String("listen", *listen), zap.String("admin", *adminListen), zap.String("cli", cli.Addr), zap.String("pool", *pool))

	var supervised sync.WaitGroup
	superviseCtx, stopSupervisor := context.WithCancel(context.Background())
	if child != nil {
		sup := sidecar.NewSupervisor(child, *cliCommand, *cliHome, relay, registration, log)
		sup.OnRestart = relay.CLIRestarted
		supervised.Go(func() { sup.Run(superviseCtx) })
	}
	select {
	case <-ctx.Done():
	case <-drainNow:
	}
	// Leave routing first (DRAINING in Consul, so in Envoy: no new users), let
	// running turns finish, then close tunnels so clients reconnect elsewhere.
	if registration != nil {
		if err := registration.SetDraining(); err != nil {
			log.Warn("mark draining in consul", zap.Error(err))
		}
	}
	start := time.Now()
	left := relay.Drain(context.Background(), *drainTimeout)
	log.Info("drained", zap.Duration("took", time.Since(start)), zap.Int("turns_cut", left))
	srv.Close()
	relay.Wait()
	if registration != nil {
		if err := registration.Deregister(); err != nil {
			log.Warn("deregister", zap.Error(err))
		}
	}
	stopSupervisor() // stops the CLI
	supervised.Wait()
	return nil
}

// readAdminCredential reads --admin-credential-file; without one, the admin
// listener must be loopback (whoever reaches it can drain the instance).
func readAdminCredential(addr, file string) (string, error) {
	if file == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return "", fmt.Errorf("--admin-listen %q: %w", addr, err)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return "", fmt.Errorf("--admin-listen %q is not loopback: give --admin-credential-file, or whoever reaches it can drain the instance", addr)
		}
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--admin-credential-file: %w", err)
	}
	cred := strings.TrimSpace(string(b))
	if len(cred) < 16 {
		return "", fmt.Errorf("--admin-credential-file %s: want a secret of at least 16 characters", file)
	}
	return cred, nil
}
