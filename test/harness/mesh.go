package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/test/modeldouble"
)

// Mesh is climesh's whole data path on loopback, real everywhere but the model:
// Consul, the xds-server, Envoy, N sidecars each with its own real CLI, and
// climesh-connect in TCP mode. The first sidecar runs its CLI as a child
// (--cli-command); the others attach to a CLI started beside them (--cli-address).
type Mesh struct {
	Dir         string
	Model       *modeldouble.Server
	Consul      *Consul
	XDS         *XDSServer
	Envoy       *Envoy
	EdgeURL     string
	ConnectAddr string            // climesh-connect --listen
	Connect     *Proc             // that climesh-connect
	Homes       map[string]string // instance id -> COPILOT_HOME
	CLIs        map[string]*CLI   // attached CLIs, by instance id
	Taps        map[string]*Tap   // taps between a sidecar and its CLI, by instance id
	Sidecars    map[string]*Sidecar
	Credential  string
	Issuer      *Issuer
	Keys        *identity.Keys
	PolicyDir   string // a copy of policies/rego the mesh runs on; edit it to change decisions
	DecisionLog string // the xds-server's decision log (MeshOptions.DecisionLog)
	// SidecarDecisionLogs are the copilot pool's sidecars' decision logs, by
	// instance id (MeshOptions.DecisionLog).
	SidecarDecisionLogs map[string]string
	CollabHome          string
	UsersRoot           string
	// UserSecrets is the isolated pool's --user-secrets directory: each
	// <tenant>/<user>.env there gives that user's CLI CLIMESH_TEST_SECRET=<UserSecret>.
	UserSecrets string
	BoundedHome string
	// SidecarArgs are the flags every mesh sidecar gets (credential, keys, policy),
	// for tests that add instances.
	SidecarArgs []string
	// SidecarEnv is the environment every mesh sidecar gets (an agentless
	// mesh's Consul token).
	SidecarEnv []string
	scratch    []ScratchPool
	stops      []func()
}

// MeshOptions shape a Mesh.
type MeshOptions struct {
	Instances   int           // sidecars (default 2)
	IdleTimeout time.Duration // listener idle_timeout (default 1h)
	Keepalive   time.Duration // sidecar --keepalive (default its own)
	AttachAll   bool          // every sidecar attaches to a CLI with a known token
	// Collab adds a pool "collab" of this many collab-mode sidecars whose CLIs
	// share one COPILOT_HOME (shared storage), routed by x-climesh-session.
	Collab int
	// Isolated adds a pool "isolated" (pattern 1) of one isolated-mode sidecar,
	// dedicated to tenants "solo" and "solo-b": one CLI per (tenant, user) under
	// UsersRoot, each under its own UID (IsolatedUIDs) when the tests run as root.
	Isolated bool
	// Scratch names pools that start empty, each dedicated to the tenant of the
	// same name (routed on x-climesh-tenant): a test that drains, kills or grows
	// instances starts a pool of its own with StartPool and stops it after.
	Scratch []ScratchPool
	// Bounded adds a pool "bounded" of this many shared-mode sidecars with shared
	// session storage, dedicated to tenant "bounded", hashed on the user with
	// hash_balance_factor BoundedFactor; its first instance has --capacity 5.
	Bounded int
	// Hostile adds a pool "hostile" of one shared-mode sidecar, logging at debug,
	// attached to its CLI through a Tap (Taps["hostile-0"]); tenants acme and
	// globex reach it with the request header x-climesh-target: hostile.
	Hostile bool
	// Agentless runs Consul as a server only, ACLs on (deny by default), with
	// session_ttl_min 1s: the sidecars register through the catalog
	// (--consul-registration catalog, --liveness-ttl LivenessTTL) and the
	// sidecars and the xds-server each hold a token of the shipped least-privilege
	// policies (deploy/consul/acl).
	Agentless bool
	// BundleService, when set, is given the policy directory the mesh wrote
	// (policies/rego and the mesh's data) and returns a bundle service's URL
	// and the PEM public key file its bundles are signed with: the xds-server
	// and every sidecar then take their policy from that service instead of the
	// directory.
	BundleService func(policyDir string) (url, publicKeyFile string, err error)
	// DecisionLog has the xds-server log every edge decision to a file
	// (Mesh.DecisionLog) and each copilot-pool sidecar every per-message
	// decision to one of its own (Mesh.SidecarDecisionLogs), masked by the
	// policy's system.log.mask.
	DecisionLog bool
	// TurnTimeout is the sidecars' --turn-timeout (default their own).
	TurnTimeout time.Duration
	// PersistentConsul runs Consul as a server with a data directory, so that
	// a restart keeps its state (ConsulOptions.Persistent).
	PersistentConsul bool
}

// LivenessTTL is an agentless mesh's --liveness-ttl.
const LivenessTTL = 2 * time.Second

// ScratchPool is a pool of MeshOptions.Scratch: Name is the pool and its
// tenant; HashKey what its ring hashes on ("user" unless set, "session" for
// a collab pool).
type ScratchPool struct {
	Name, HashKey string
	Policy        string // lb.policy: ring_hash (default) or maglev
}

// HostileTarget is the header value that routes a tunnel to the hostile pool.
const HostileTarget = "hostile"

// BoundedCapacity is the --capacity of the bounded pool's first instance, and
// BoundedFactor the pool's hash_balance_factor.
const (
	BoundedCapacity = 5
	BoundedFactor   = 125
)

// MeshCredential is the edge credential every test mesh uses.
const MeshCredential = "edge-credential-for-tests"

// InstanceID names the i-th instance: cli-a, cli-b, ...
func InstanceID(i int) string { return "cli-" + string(rune('a'+i)) }

// StartMesh starts everything and waits until Envoy routes to every sidecar.
func StartMesh(ctx context.Context, o MeshOptions) (m *Mesh, err error) {
	if o.Instances == 0 {
		o.Instances = 2
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = time.Hour
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "climesh-mesh-")
	if err != nil {
		return nil, err
	}
	m = &Mesh{Dir: dir, Homes: map[string]string{}, CLIs: map[string]*CLI{}, Sidecars: map[string]*Sidecar{}, Taps: map[string]*Tap{}, Credential: MeshCredential}
	m.stops = append(m.stops, func() { os.RemoveAll(dir) })
	// Traversable (not listable) by the isolated pool's per-user UIDs, whose homes are inside.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if m.Model, err = modeldouble.Start(); err != nil {
		return m, err
	}
	m.stops = append(m.stops, m.Model.Close)
	var xdsEnv []string
	if o.Agentless {
		if m.Consul, err = StartConsulWith(ctx, dir, ConsulOptions{ACL: true, SessionTTLMin: time.Second}); err != nil {
			return m, err
		}
		m.stops = append(m.stops, m.Consul.Close)
		sidecarToken, err := m.Consul.PolicyToken("climesh-sidecar", "deploy/consul/acl/climesh-sidecar.hcl")
		if err != nil {
			return m, err
		}
		xdsToken, err := m.Consul.PolicyToken("climesh-xds-server", "deploy/consul/acl/climesh-xds-server.hcl")
		if err != nil {
			return m, err
		}
		m.SidecarEnv, xdsEnv = []string{"CONSUL_HTTP_TOKEN=" + sidecarToken}, []string{"CONSUL_HTTP_TOKEN=" + xdsToken}
	} else {
		if m.Consul, err = StartConsulWith(ctx, dir, ConsulOptions{Persistent: o.PersistentConsul}); err != nil {
			return m, err
		}
		m.stops = append(m.stops, m.Consul.Close)
	}
	credFile := filepath.Join(dir, "edge-credential")
	if err = os.WriteFile(credFile, []byte(MeshCredential+"\n"), 0o600); err != nil {
		return m, err
	}
	if m.Issuer, err = NewIssuer(dir); err != nil {
		return m, err
	}
	keysFile := filepath.Join(dir, "identity-keys.json")
	if m.Keys, err = WriteKeys(keysFile); err != nil {
		return m, err
	}
	m.PolicyDir = filepath.Join(dir, "policy")
	if err = copyPolicies(m.PolicyDir); err != nil {
		return m, err
	}
	// Tenant-dedicated pools: "solo" has the isolated pool to itself.
	// Every pool's sessions may name the model double as their provider, and nothing else.
	if err = os.WriteFile(filepath.Join(m.PolicyDir, "data.json"), []byte(strings.NewReplacer("MODEL", strconv.Quote(m.Model.URL), "SCRATCH", scratchData(o.Scratch, m.Model.URL)).Replace(`{"climesh": {"pools": {
  "copilot": {"tenants": ["acme", "globex"], "provider_base_urls": [MODEL]},
  "collab": {"tenants": ["acme", "globex"], "provider_base_urls": [MODEL]},
  "isolated": {"tenants": ["solo", "solo-b"], "provider_base_urls": [MODEL]},
  "bounded": {"tenants": ["bounded"], "provider_base_urls": [MODEL]},
  SCRATCH
  "hostile": {"tenants": ["acme", "globex"], "provider_base_urls": [MODEL]}}}}`)), 0o644); err != nil {
		return m, err
	}
	copilotBin, err := Tool("copilot")
	if err != nil {
		return m, err
	}
	policySource, bundleLine, bundleKey := m.PolicyDir, "", []string{}
	if o.BundleService != nil {
		url, key, err := o.BundleService(m.PolicyDir)
		if err != nil {
			return m, fmt.Errorf("bundle service: %w", err)
		}
		policySource, bundleLine = url, fmt.Sprintf("  bundle_public_key_file: %s\n", key)
		bundleKey = []string{"--policy-bundle-key", key}
	}
	if o.DecisionLog {
		m.DecisionLog = filepath.Join(dir, "decisions.log")
		bundleLine += fmt.Sprintf("  decision_logs: {file: %s}\n", m.DecisionLog)
	}
	extra := append([]string{"--edge-credential-file", credFile, "--identity-keys", keysFile, "--policy", policySource, "--policy-watch", "100ms"}, bundleKey...)
	if o.Keepalive > 0 {
		extra = append(extra, "--keepalive", o.Keepalive.String())
	}
	if o.TurnTimeout > 0 {
		extra = append(extra, "--turn-timeout", o.TurnTimeout.String())
	}
	if o.Agentless {
		extra = append(extra, "--consul-registration", "catalog", "--liveness-ttl", LivenessTTL.String())
	}
	m.SidecarArgs = extra
	for i := range o.Instances {
		id := InstanceID(i)
		so := SidecarOptions{ID: id, Pool: "copilot", ConsulAddr: m.Consul.Addr, Extra: extra, Env: m.SidecarEnv}
		if o.DecisionLog {
			if m.SidecarDecisionLogs == nil {
				m.SidecarDecisionLogs = map[string]string{}
			}
			m.SidecarDecisionLogs[id] = filepath.Join(dir, "decisions-"+id+".log")
			so.Extra = append(append([]string{}, extra...), "--decision-log", m.SidecarDecisionLogs[id])
		}
		if i == 0 && !o.AttachAll {
			m.Homes[id] = filepath.Join(dir, id+"-home")
			so.CLICommand, so.CLIHome = copilotBin, m.Homes[id]
		} else {
			cli, err := StartCLI(ctx, dir, id, fmt.Sprintf("%s-secret-token-0123456789", id))
			if err != nil {
				return m, err
			}
			m.stops = append(m.stops, cli.Close)
			m.CLIs[id], m.Homes[id] = cli, cli.Home
			so.CLIAddr, so.CLIToken = cli.Addr, cli.Token
		}
		sc, err := StartSidecar(ctx, dir, so)
		if err != nil {
			return m, err
		}
		m.stops = append(m.stops, sc.Close)
		m.Sidecars[id] = sc
	}
	m.CollabHome = filepath.Join(dir, "collab-home")
	for i := range o.Collab {
		id := fmt.Sprintf("collab-%d", i)
		sc, err := StartSidecar(ctx, dir, SidecarOptions{ID: id, Pool: "collab", ConsulAddr: m.Consul.Addr,
			CLICommand: copilotBin, CLIHome: m.CollabHome, Extra: append(append([]string{}, extra...), "--mode", "collab", "--lock-ttl", "10s", "--lock-delay", "1s", "--log-level", "debug")})
		if err != nil {
			return m, err
		}
		m.stops = append(m.stops, sc.Close)
		m.Sidecars[id] = sc
		m.Homes[id] = m.CollabHome
	}
	m.scratch = o.Scratch
	m.BoundedHome = filepath.Join(dir, "bounded-home")
	for i := range o.Bounded {
		id := fmt.Sprintf("bounded-%d", i)
		args := append(append([]string{}, extra...), "--capacity", "50")
		if i == 0 {
			args[len(args)-1] = fmt.Sprint(BoundedCapacity)
		}
		sc, err := StartSidecar(ctx, dir, SidecarOptions{ID: id, Pool: "bounded", ConsulAddr: m.Consul.Addr, CLICommand: copilotBin, CLIHome: m.BoundedHome, Extra: args})
		if err != nil {
			return m, err
		}
		m.stops = append(m.stops, sc.Close)
		m.Sidecars[id] = sc
	}
	if o.Hostile {
		cli, err := StartCLI(ctx, dir, "hostile-0", "hostile-0-secret-token-0123456789")
		if err != nil {
			return m, err
		}
		m.stops = append(m.stops, cli.Close)
		tap, err := StartTap(cli.Addr)
		if err != nil {
			return m, err
		}
		m.stops = append(m.stops, tap.Close)
		m.CLIs["hostile-0"], m.Homes["hostile-0"], m.Taps["hostile-0"] = cli, cli.Home, tap
		sc, err := StartSidecar(ctx, dir, SidecarOptions{ID: "hostile-0", Pool: "hostile", ConsulAddr: m.Consul.Addr,
			CLIAddr: tap.Addr, CLIToken: cli.Token, Extra: append(append([]string{}, extra...), "--log-level", "debug")})
		if err != nil {
			return m, err
		}
		m.stops = append(m.stops, sc.Close)
		m.Sidecars["hostile-0"] = sc
	}
	m.UsersRoot = filepath.Join(dir, "users")
	if o.Isolated {
		usersBin := copilotBin
		if os.Geteuid() == 0 { // the per-user UIDs must reach the binary, wherever the checkout is
			if usersBin, err = ExecutableByAll(copilotBin, dir, "copilot-for-users"); err != nil {
				return m, err
			}
		}
		if m.UserSecrets, err = writeUserSecrets(dir); err != nil {
			return m, err
		}
		sc, err := StartSidecar(ctx, dir, SidecarOptions{ID: "isolated-0", Pool: "isolated", ConsulAddr: m.Consul.Addr, CLICommand: usersBin,
			Extra: append(append([]string{}, extra...), append(isolatedArgs(m.UsersRoot), "--user-secrets", m.UserSecrets)...)})
		if err != nil {
			return m, err
		}
		m.stops = append(m.stops, sc.Close)
		m.Sidecars["isolated-0"] = sc
	}
	lport, err := FreePort()
	if err != nil {
		return m, err
	}
	if m.XDS, err = StartXDSServer(ctx, dir, fmt.Sprintf(`consul: {address: %s, retry_min: 50ms, retry_max: 500ms}
identity:
  edge_credential_file: %s
  pin_header: x-climesh-host
jwt:
  providers: [{name: test, issuer: %q, audiences: [%s], local_jwks_file: %s}]
policy:
  source: %q
%s  identity_keys_file: %s
  watch_interval: 100ms
listeners:
  - name: edge
    port: %d
    idle_timeout: %s
    routes:
      - {pool: hostile, when: {header: x-climesh-target, exact: hostile}}
      - {pool: isolated, when: {header: x-climesh-tenant, exact: solo}}
      - {pool: isolated, when: {header: x-climesh-tenant, exact: solo-b}}
%s      - {pool: bounded, when: {header: x-climesh-tenant, exact: bounded}}
      - {pool: collab, when: {header: x-climesh-session}}
      - {pool: copilot}
pools:
  - {name: hostile, consul_service: hostile, lb: {policy: ring_hash, hash_key: user}}
  - {name: isolated, consul_service: isolated, lb: {policy: ring_hash, hash_key: user}}
  - {name: bounded, consul_service: bounded, lb: {policy: ring_hash, hash_key: user, hash_balance_factor: %d}}
%s  - {name: copilot, consul_service: copilot, lb: {policy: ring_hash, hash_key: user}}
  - {name: collab, consul_service: collab, lb: {policy: ring_hash, hash_key: session}}
`, m.Consul.Addr, credFile, m.Issuer.Issuer, m.Issuer.Audience, m.Issuer.JWKSPath, policySource, bundleLine, keysFile, lport, o.IdleTimeout,
		scratchRoutes(o.Scratch), BoundedFactor, scratchPools(o.Scratch)), xdsEnv...); err != nil {
		return m, err
	}
	m.stops = append(m.stops, m.XDS.Close)
	if m.Envoy, err = StartEnvoy(ctx, dir, m.XDS.XDSAddr, EnvoyOptions{NodeID: "mesh-envoy"}); err != nil {
		return m, err
	}
	m.stops = append(m.stops, m.Envoy.Close)
	m.EdgeURL = fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", lport)
	err = Poll(ctx, 50*time.Millisecond, func() error {
		hosts, err := m.Envoy.Hosts("pool/copilot")
		if err != nil {
			return err
		}
		healthy := 0
		for _, h := range hosts {
			if h.Health == "HEALTHY" {
				healthy++
			}
		}
		if collab, _ := m.Envoy.Hosts("pool/collab"); o.Collab > 0 && countHealthy(collab) != o.Collab {
			return fmt.Errorf("envoy sees collab %v", collab)
		}
		if bounded, _ := m.Envoy.Hosts("pool/bounded"); o.Bounded > 0 && countHealthy(bounded) != o.Bounded {
			return fmt.Errorf("envoy sees bounded %v", bounded)
		}
		if hostile, _ := m.Envoy.Hosts("pool/hostile"); o.Hostile && countHealthy(hostile) != 1 {
			return fmt.Errorf("envoy sees hostile %v", hostile)
		}
		if healthy != o.Instances {
			return fmt.Errorf("envoy sees %v", hosts)
		}
		return nil
	})
	if err != nil {
		return m, fmt.Errorf("sidecars never became healthy in envoy: %w", err)
	}
	p, addr, err := StartConnect(ctx, dir, "connect-tcp", m.EdgeURL)
	if err != nil {
		return m, err
	}
	m.stops = append(m.stops, func() { p.Stop(time.Second) })
	m.ConnectAddr, m.Connect = addr, p
	return m, nil
}

// IsolatedUIDs is the UID range of the isolated pool's per-user CLIs, when the
// tests run as root (the sidecar needs root to switch).
const IsolatedUIDs = "201000-201099"

// IsolatedUsers are the (tenant, user) pairs the isolated pool holds secrets for.
var IsolatedUsers = [][2]string{{"solo", "ivy"}, {"solo", "max"}, {"solo-b", "ivy"}}

// UserSecret is the value of CLIMESH_TEST_SECRET that the isolated pool gives
// the CLI of user of tenant, and only that CLI.
func UserSecret(tenant, user string) string { return "secret-of-" + tenant + "-" + user }

// writeUserSecrets lays out a --user-secrets directory (0700, read by the
// sidecar only) with one <tenant>/<user>.env per IsolatedUsers.
func writeUserSecrets(dir string) (string, error) {
	root := filepath.Join(dir, "user-secrets")
	for _, tu := range IsolatedUsers {
		if err := os.MkdirAll(filepath.Join(root, tu[0]), 0o700); err != nil {
			return "", err
		}
		line := "CLIMESH_TEST_SECRET=" + UserSecret(tu[0], tu[1]) + "\n"
		if err := os.WriteFile(filepath.Join(root, tu[0], tu[1]+".env"), []byte(line), 0o600); err != nil {
			return "", err
		}
	}
	return root, os.Chmod(root, 0o700)
}

func isolatedArgs(root string) []string {
	args := []string{"--mode", "isolated", "--users-root", root, "--user-idle", "2s", "--max-users", "5"}
	if os.Geteuid() == 0 {
		args = append(args, "--user-uids", IsolatedUIDs)
	}
	return args
}

// Close stops everything, last started first.
func (m *Mesh) Close() {
	for i := len(m.stops) - 1; i >= 0; i-- {
		m.stops[i]()
	}
	m.stops = nil
}

// copyPolicies copies the shipped policies/rego to dir.
func copyPolicies(dir string) error {
	root, err := Root()
	if err != nil {
		return err
	}
	return os.CopyFS(dir, os.DirFS(filepath.Join(root, "policies", "rego")))
}

// Assertion signs an identity assertion as the edge would (for tests that dial a
// sidecar directly).
func (m *Mesh) Assertion(user, tenant string, ttl time.Duration) string {
	a, _ := m.Keys.Sign(identity.Claims{User: user, Tenant: tenant, Expires: time.Now().Add(ttl).Unix()})
	return a
}

// Token is a valid JWT for user in tenant.
func (m *Mesh) Token(user, tenant string, roles ...string) string {
	return m.Issuer.Token(user, tenant, roles, time.Hour)
}

func countHealthy(hosts []HostStatus) int {
	n := 0
	for _, h := range hosts {
		if h.Health == "HEALTHY" {
			n++
		}
	}
	return n
}

// scratchRoutes, scratchPools and scratchData are the xds-server routes and
// pools and the Rego data of the scratch pools: pool = tenant = name.
func scratchRoutes(pools []ScratchPool) string {
	var b strings.Builder
	for _, p := range pools {
		fmt.Fprintf(&b, "      - {pool: %s, when: {header: x-climesh-tenant, exact: %s}}\n", p.Name, p.Name)
	}
	return b.String()
}

func scratchPools(pools []ScratchPool) string {
	var b strings.Builder
	for _, p := range pools {
		key, policy := p.HashKey, p.Policy
		if key == "" {
			key = "user"
		}
		if policy == "" {
			policy = "ring_hash"
		}
		fmt.Fprintf(&b, "  - {name: %s, consul_service: %s, lb: {policy: %s, hash_key: %s}}\n", p.Name, p.Name, policy, key)
	}
	return b.String()
}

func scratchData(pools []ScratchPool, modelURL string) string {
	var b strings.Builder
	for _, p := range pools {
		fmt.Fprintf(&b, "%q: {\"tenants\": [%q], \"provider_base_urls\": [%q]},\n  ", p.Name, p.Name, modelURL)
	}
	return b.String()
}
