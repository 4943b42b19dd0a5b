package kubernetes_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	copilot "github.com/github/copilot-sdk/go"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/test/modeldouble"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(containerEnv); spec != "" {
		err := becomeContainer(spec) // returns only on error
		fmt.Fprintln(os.Stderr, "container setup:", err)
		os.Exit(127)
	}
	os.Exit(m.Run())
}

// clusterEnv marks the re-executed test that runs inside its own network
// namespace: there every Service name maps to loopback, the ports are the
// manifests' own (no other process on this machine holds them), and 0.0.0.0
// binds reach nothing outside.
const clusterEnv = "CLIMESH_TEST_CLUSTER"

// TestOverlayRuns starts the shared-storage overlay the way a cluster would,
// without one: each workload's containers as local processes with their
// rendered command, args and env, ConfigMap and Secret volumes laid out as the
// kubelet's atomic writer does, one replica per workload (kubelet_test.go says
// what else is and is not done). Then a chat as two users through Envoy, a
// cross-user refusal, and two policy edits applied by swapping ..data in every
// pod's volume, each seen to take effect in the running processes.
func TestOverlayRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the overlay's workloads with Envoy, Consul and the CLI (run without -short)")
	}
	if os.Getenv(clusterEnv) == "" {
		runInNetworkNamespace(t)
		return
	}
	runOverlay(t, "overlays/shared-storage")
}

// runInNetworkNamespace builds the binaries, then runs this test again in a new
// network namespace (and mount namespaces per container below it): that needs
// root, as a kubelet does.
func runInNetworkNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the overlay runs in its own network namespace and each container in its own mount namespace")
	}
	bin, err := harness.Binary("xds-server") // builds them all
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"envoy", "consul", "copilot"} {
		if _, err := harness.Tool(tool); err != nil {
			t.Fatal(err)
		}
	}
	deadline, ok := t.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Minute)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOverlayRuns$", "-test.v", "-test.timeout="+time.Until(deadline).Round(time.Second).String())
	cmd.Env = append(os.Environ(), clusterEnv+"=1", harness.BinDirEnv+"="+filepath.Dir(bin))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("the overlay, run in its own network namespace:\n%s", out.String())
	if err != nil {
		t.Fatalf("the overlay run failed: %v", err)
	}
}

func runOverlay(t *testing.T, overlay string) {
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("loopback in the test's network namespace: %v: %s", err, out)
	}
	m := render(t, overlay)
	dir := t.TempDir()

	model, err := modeldouble.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer model.Close()
	_, cfgMap := byPrefix(t, m.configMaps, "climesh-config")
	cfg, err := config.Load([]byte(cfgMap.Data["climesh.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	// The operator's identity provider: the test's own key, its JWKS in the
	// Secret the config names, tokens with the config's issuer and audience.
	issuer, err := harness.NewIssuer(dir)
	if err != nil {
		t.Fatal(err)
	}
	issuer.Issuer, issuer.Audience = cfg.JWT.Providers[0].Issuer, cfg.JWT.Providers[0].Audiences[0]
	jwks, err := os.ReadFile(issuer.JWKSPath)
	if err != nil {
		t.Fatal(err)
	}
	consul, consulNames, tokens, err := startConsul(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer consul.Close()
	secrets, err := operatorSecrets(m, jwks, tokens)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := images()
	if err != nil {
		t.Fatal(err)
	}

	c := &cluster{dir: dir, m: m, images: imgs, secrets: secrets, volumeDirs: map[string][]string{},
		hosts: append(serviceNames(m), consulNames...)}
	defer func() {
		for i := len(c.pods) - 1; i >= 0; i-- {
			c.pods[i].stop()
		}
	}()
	for _, w := range m.workloads() {
		name := w.name + "-0" // a StatefulSet's first ordinal
		if w.kind == "Deployment" {
			name = w.name + "-6f7d8b9c4d-x7k2p" // <deployment>-<pod-template-hash>-<random>
		}
		if _, err := c.startPod(name, &w.pod.Spec, w.claimTemplates); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.waitReady(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	pids := c.pids()
	for _, p := range c.pods {
		for _, rc := range p.containers {
			if err := rc.runsAs(); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("every pod is ready, each container as its securityContext's user: %v", slices.Sorted(maps.Keys(pids)))
	// Ready pods are not yet routed: the sidecar's instance reaches Envoy through
	// Consul and the xds-server (EDS). Wait for it on Envoy's admin (the
	// bootstrap's, on the pod's loopback), as the clients would otherwise see 503.
	envoy := &harness.Envoy{AdminAddr: envoyAdmin(t, m)}
	err = harness.Poll(within(t, ctx, time.Minute), 100*time.Millisecond, func() error {
		hosts, err := envoy.Hosts("pool/" + cfg.Pools[0].Name)
		if err == nil && (len(hosts) != 1 || hosts[0].Health != "HEALTHY") {
			err = fmt.Errorf("envoy sees %v", hosts)
		}
		return err
	})
	if err != nil {
		t.Fatalf("envoy never routed to the CLI pod: %v\n%s", err, c.tails())
	}

	// Clients reach the edge Service (here: its port on loopback) through climesh-connect.
	edge := fmt.Sprintf("ws://127.0.0.1:%d%s", m.services["climesh-edge"].Spec.Ports[0].Port, cfg.Listeners[0].Path)
	connect, connectAddr, err := harness.StartConnect(ctx, dir, "climesh-connect", edge)
	if err != nil {
		t.Fatal(err)
	}
	defer connect.Stop(time.Second)
	client := func(user, tenant string) *copilot.Client {
		cl := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: connectAddr,
			ConnectionToken: issuer.Token(user, tenant, nil, time.Hour)}})
		if err := cl.Start(ctx); err != nil {
			t.Fatalf("SDK client for %s: %v", user, err)
		}
		t.Cleanup(func() { cl.Stop() })
		return cl
	}
	provider := &copilot.ProviderConfig{Type: "openai", BaseURL: model.URL, APIKey: "double-key"}
	create := func(cl *copilot.Client) (*copilot.Session, error) {
		return cl.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	}

	// 1. The shipped policy lists no model endpoint: a session that brings its
	// own is refused by the sidecar.
	alice := client("alice", "acme")
	if _, err := create(alice); err == nil || !strings.Contains(err.Error(), `session option "provider" is not allowed here`) {
		t.Fatalf("a session with an unlisted model endpoint, on the shipped policy: %v (want the provider option refused)", err)
	}

	// 2. The operator lists the endpoint in the policy's data; the kubelet
	// swaps ..data in every pod; the sidecar follows without a restart.
	policyName, policyMap := byPrefix(t, m.configMaps, "climesh-policy")
	data := maps.Clone(policyMap.Data)
	data["data.json"] = editPools(t, data["data.json"], func(pools map[string]map[string]any) {
		pools["copilot"]["provider_base_urls"] = []string{model.URL}
	})
	if err := c.updateConfigMap(policyName, data); err != nil {
		t.Fatal(err)
	}
	var aliceS *copilot.Session
	err = harness.Poll(within(t, ctx, followLimit), 200*time.Millisecond, func() error {
		aliceS, err = create(alice)
		return err
	})
	if err != nil {
		t.Fatalf("after the policy edit listed the model endpoint, alice's session is still refused: %v\n%s", err, c.tails())
	}
	c.sameProcesses(t, pids)
	t.Logf("policy edit 1 (model endpoint listed) seen by the sidecar without a restart")

	// 3. A chat as two users.
	ev, err := aliceS.SendAndWait(ctx, copilot.MessageOptions{Prompt: "alice's plan"})
	if err != nil {
		t.Fatal(err)
	}
	if got := answer(t, ev); !strings.Contains(got, "echo: alice's plan") {
		t.Fatalf("alice's answer %q", got)
	}
	bob := client("bob", "acme")
	bobS, err := create(bob)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err = bobS.SendAndWait(ctx, copilot.MessageOptions{Prompt: "bob's plan"}); err != nil {
		t.Fatal(err)
	}
	if got := answer(t, ev); !strings.Contains(got, "echo: bob's plan") || strings.Contains(got, "alice") {
		t.Fatalf("bob's answer %q", got)
	}

	t.Logf("alice and bob chatted through Envoy (sessions %s, %s)", aliceS.SessionID, bobS.SessionID)

	// 4. bob cannot reach alice's session.
	if _, err := bob.ResumeSession(ctx, aliceS.SessionID, &copilot.ResumeSessionConfig{Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll}); err == nil ||
		!strings.Contains(err.Error(), "access denied: no such session for this caller") {
		t.Fatalf("bob resuming alice's session: %v (want access denied)", err)
	}

	t.Logf("bob's resume of alice's session refused")

	// 5. A second edit takes tenant acme off the pool: the xds-server's
	// ext_authz, watching the same volume layout, refuses acme's new tunnels at
	// the edge, and still admits another tenant's.
	data = maps.Clone(data)
	data["data.json"] = editPools(t, data["data.json"], func(pools map[string]map[string]any) {
		pools["copilot"]["tenants"] = []string{"globex"}
	})
	if err := c.updateConfigMap(policyName, data); err != nil {
		t.Fatal(err)
	}
	dial := func(user, tenant string) int {
		ws, resp, err := websocket.Dial(ctx, edge, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + issuer.Token(user, tenant, nil, time.Hour)}}})
		if err == nil {
			ws.CloseNow()
			return http.StatusSwitchingProtocols
		}
		if resp != nil {
			return resp.StatusCode
		}
		return 0
	}
	err = harness.Poll(within(t, ctx, followLimit), 200*time.Millisecond, func() error {
		if code := dial("bob", "acme"); code != http.StatusForbidden {
			return fmt.Errorf("acme's tunnel after the edit: %d, want 403", code)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the edge never followed the policy edit: %v\n%s", err, c.tails())
	}
	if code := dial("gina", "globex"); code != http.StatusSwitchingProtocols {
		t.Fatalf("globex's tunnel after the edit: %d, want 101", code)
	}
	c.sameProcesses(t, pids)
	t.Logf("policy edit 2 (tenant acme off the pool) seen by the edge without a restart")

	// 6. Prometheus, as it finds the pods: each pod's prometheus.io/port and path
	// serve metrics (the ports the NetworkPolicies admit the monitoring namespace
	// to); Envoy's stats listener serves nothing else of the admin.
	scraper := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(method, url string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, method, url, nil)
		resp, err := scraper.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	metric := map[string]string{"climesh-copilot": "climesh_sidecar_active_sessions", "climesh-xds-server": "climesh_xds_connected_streams", "climesh-envoy": "envoy_server_live"}
	var statsPort string
	for _, w := range m.workloads() {
		a := w.pod.Annotations
		url := fmt.Sprintf("http://%s%s", net.JoinHostPort(podIP, a["prometheus.io/port"]), a["prometheus.io/path"])
		code, body, err := get(http.MethodGet, url)
		if err != nil || code != http.StatusOK || !strings.Contains(body, "\n"+metric[w.name]) {
			t.Fatalf("%s: scraping %s: %d %v, want 200 with %s in:\n%.300s", w.name, url, code, err, metric[w.name], body)
		}
		if w.name == "climesh-envoy" {
			statsPort = a["prometheus.io/port"]
		}
	}
	for _, probe := range []struct{ method, path string }{{"GET", "/config_dump"}, {"GET", "/stats"}, {"GET", "/"}, {"POST", "/stats/prometheus"}, {"POST", "/quitquitquit"}} {
		if code, body, err := get(probe.method, "http://"+net.JoinHostPort(podIP, statsPort)+probe.path); err != nil || code != http.StatusNotFound {
			t.Fatalf("Envoy's stats listener answers %s %s: %d %v %.200s, want 404 (only GET /stats/prometheus reaches the admin)", probe.method, probe.path, code, err, body)
		}
	}
	t.Logf("every pod's prometheus.io target serves metrics; Envoy's stats listener nothing else")

	// The overlay shares session storage, so its sidecars run --rebalance: the
	// pool's ring is read from Consul under the sidecar's own ACL policy.
	sidecarC, err := c.container("climesh-copilot", "climesh-sidecar")
	if err != nil {
		t.Fatal(err)
	}
	ringCtx, ringCancel := context.WithTimeout(ctx, 30*time.Second)
	defer ringCancel()
	if err := harness.Poll(ringCtx, 100*time.Millisecond, func() error {
		if !strings.Contains(sidecarC.proc.Tail(400), `"msg":"the pool's ring changed","instance":"climesh-copilot-0","healthy":["climesh-copilot-0"]`) {
			return errors.New("the sidecar has not read its pool's ring")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s", err, sidecarC.proc.Tail(30))
	}
	t.Logf("the sidecar (--rebalance) reads its pool's ring from Consul with its ACL token")

	// 7. Envoy's pod terminates as the kubelet ends it: its preStop hook (GET
	// /shutdown on the shutdown-manager) before SIGTERM. The clients leave but
	// one tunnel stays: the hook waits for it while the listeners, draining,
	// still accept and tell HTTP/1.1 clients Connection: close; the tunnel ends,
	// the hook answers, and after --drain-time-s the edge listener is closed.
	alice.Stop()
	bob.Stop()
	connect.Stop(time.Second)
	tunnel, _, err := websocket.Dial(ctx, edge, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + issuer.Token("gina", "globex", nil, time.Hour)}}})
	if err != nil {
		t.Fatalf("a tunnel before Envoy's drain: %v", err)
	}
	defer tunnel.CloseNow()
	plain := strings.Replace(edge, "ws://", "http://", 1)
	keepAlive := &http.Transport{}
	httpClose := func() (bool, error) { // does the edge say Connection: close to a kept-alive HTTP/1.1 client?
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, plain, nil)
		resp, err := (&http.Client{Transport: keepAlive, Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return false, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		keepAlive.CloseIdleConnections() // no connection of ours left to hold the drain
		return resp.Close, nil
	}
	if closes, err := httpClose(); err != nil || closes {
		t.Fatalf("before the drain the edge answers HTTP/1.1 with Connection: close %v (%v); want keep-alive", closes, err)
	}
	envoyC, err := c.container("climesh-envoy", "envoy")
	if err != nil {
		t.Fatal(err)
	}
	var drainTime time.Duration
	for i, a := range envoyC.spec.Args {
		if a == "--drain-time-s" && i+1 < len(envoyC.spec.Args) {
			n, _ := strconv.Atoi(envoyC.spec.Args[i+1])
			drainTime = time.Duration(n) * time.Second
		}
	}
	type answer struct {
		body string
		err  error
	}
	hook, hookStart := make(chan answer, 1), time.Now()
	go func() {
		body, err := envoyC.preStop(ctx)
		hook <- answer{body, err}
	}()
	select {
	case a := <-hook:
		t.Fatalf("Envoy's preStop answered with a tunnel open: %q %v", a.body, a.err)
	case <-time.After(3 * time.Second):
	}
	for range 3 { // --drain-strategy immediate: every one (gradual: a growing share, about 10% by now)
		if closes, err := httpClose(); err != nil || !closes {
			t.Fatalf("while draining, the edge answers HTTP/1.1: Connection: close %v (%v); want it accepting, and closing", closes, err)
		}
	}
	tunnel.Close(websocket.StatusNormalClosure, "done")
	select {
	case a := <-hook:
		if a.err != nil || !strings.Contains(a.body, "drained; 0 connections left") {
			t.Fatalf("Envoy's preStop: %q %v, want drained with no connection left", a.body, a.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("Envoy's preStop still waits 15s after the last tunnel closed\n%s", c.tails())
	}
	t.Logf("Envoy's preStop waited for the open tunnel and answered %v after the drain began, once it closed", time.Since(hookStart).Round(100*time.Millisecond))
	err = harness.Poll(within(t, ctx, drainTime+15*time.Second-time.Since(hookStart)), 250*time.Millisecond, func() error {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(podIP, strconv.Itoa(int(m.services["climesh-edge"].Spec.Ports[0].Port))), time.Second)
		if err == nil {
			conn.Close()
			return errors.New("the edge listener still accepts")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v %v after the drain began (--drain-time-s %s)", err, time.Since(hookStart).Round(time.Second), drainTime)
	}
	t.Logf("the edge listener closed %v after the drain began (--drain-time-s %s); Envoy still runs until its SIGTERM", time.Since(hookStart).Round(time.Second), drainTime)
	if envoyC.proc.Exited() {
		t.Fatalf("Envoy exited before its SIGTERM:\n%s", envoyC.proc.Tail(20))
	}
}

// followLimit bounds how long a process may take to act on a ConfigMap update
// after the kubelet swapped ..data (the policy watch interval is 1s).
const followLimit = 30 * time.Second

// within is ctx bounded by limit (released when the test ends).
func within(t *testing.T, ctx context.Context, limit time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(ctx, limit)
	t.Cleanup(cancel)
	return ctx
}

// envoyAdmin is the admin address of Envoy's bootstrap.
func envoyAdmin(t *testing.T, m *manifest) string {
	t.Helper()
	_, cm := byPrefix(t, m.configMaps, "envoy-bootstrap")
	j, err := yaml.YAMLToJSON([]byte(cm.Data["envoy-bootstrap.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &b); err != nil {
		t.Fatal(err)
	}
	sa := b.GetAdmin().GetAddress().GetSocketAddress()
	return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
}

// startConsul is the one place that maps the Consul the manifests name onto a
// real one: the sidecars' --consul=$(HOST_IP):8500 (a client agent on each
// node) and the xds-server's consul.address (the Helm chart's server Service,
// consul-server.consul.svc:8500) both reach one dev agent on the pods' address
// at port 8500. It returns the names that must resolve to it.
func startConsul(ctx context.Context, dir string) (*harness.Consul, []string, map[string]string, error) {
	// As the README has an operator run it: servers only, ACLs on and deny by
	// default, a token per role from the shipped least-privilege policies.
	c, err := harness.StartConsulWith(ctx, dir, harness.ConsulOptions{HTTPPort: 8500, ACL: true})
	if err != nil {
		return nil, nil, nil, err
	}
	tokens := map[string]string{}
	for _, role := range []string{"sidecar", "xds-server"} {
		if tokens[role], err = c.PolicyToken("climesh-"+role, "deploy/consul/acl/climesh-"+role+".hcl"); err != nil {
			c.Close()
			return nil, nil, nil, err
		}
	}
	return c, []string{"consul-server.consul.svc", "consul-server.consul.svc.cluster.local"}, tokens, nil
}

// serviceNames are the DNS names of the manifests' Services (and of the pods
// behind a headless one), all on loopback here.
func serviceNames(m *manifest) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(m.services)) {
		for _, suffix := range []string{"", "." + m.namespace, "." + m.namespace + ".svc", "." + m.namespace + ".svc.cluster.local"} {
			out = append(out, name+suffix)
		}
	}
	return out
}

// operatorSecrets fills in the placeholder Secrets as the manifests tell an
// operator to: random values for each REPLACE-… placeholder, a fresh identity
// key set, the identity provider's JWKS and the Consul ACL tokens (by role).
func operatorSecrets(m *manifest, jwks []byte, consulTokens map[string]string) (map[string]map[string][]byte, error) {
	out := map[string]map[string][]byte{}
	for _, name := range slices.Sorted(maps.Keys(m.secrets)) {
		s := m.secrets[name]
		data := maps.Clone(s.Data)
		if data == nil {
			data = map[string][]byte{}
		}
		for k, v := range s.StringData {
			data[k] = []byte(v)
		}
		for k, v := range data {
			switch {
			case k == "jwks.json":
				data[k] = jwks
			case name == "climesh-consul-tokens" && consulTokens[k] != "":
				data[k] = []byte(consulTokens[k])
			case k == "identity-keys.json":
				key := make([]byte, 32)
				rand.Read(key)
				b, err := json.Marshal(identity.Keys{Active: "k1", Keys: map[string][]byte{"k1": key}})
				if err != nil {
					return nil, err
				}
				data[k] = b
			case bytes.HasPrefix(v, []byte("REPLACE-")):
				r := make([]byte, 24)
				rand.Read(r)
				data[k] = []byte(hex.EncodeToString(r))
			default:
				return nil, fmt.Errorf("Secret %s key %s: the test does not know what an operator puts there; add it to operatorSecrets", name, k)
			}
		}
		out[name] = data
	}
	return out, nil
}

// editPools changes data.climesh.pools in a policy data.json.
func editPools(t *testing.T, doc string, edit func(map[string]map[string]any)) string {
	t.Helper()
	var d struct {
		Climesh map[string]json.RawMessage `json:"climesh"`
	}
	if err := json.Unmarshal([]byte(doc), &d); err != nil {
		t.Fatalf("policy data.json: %v", err)
	}
	var pools map[string]map[string]any
	if err := json.Unmarshal(d.Climesh["pools"], &pools); err != nil {
		t.Fatalf("policy data.json climesh.pools: %v", err)
	}
	edit(pools)
	b, _ := json.Marshal(pools)
	d.Climesh["pools"] = b
	out, _ := json.MarshalIndent(d, "", "  ")
	return string(out)
}

func answer(t *testing.T, ev *copilot.SessionEvent) string {
	t.Helper()
	text, err := harness.AssistantText(ev)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// waitReady polls every container's readiness and liveness until all pass; a
// container that exits fails at once (a kubelet would restart it, into
// CrashLoopBackOff).
func (c *cluster) waitReady(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		var errs []error
		for _, p := range c.pods {
			for _, rc := range p.containers {
				for _, probe := range []func(context.Context) error{rc.ready, rc.alive} {
					if err := probe(ctx); err != nil {
						if rc.proc.Exited() {
							return err
						}
						errs = append(errs, err)
					}
				}
			}
		}
		if len(errs) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pods not ready: %w\n%s", errors.Join(errs...), c.tails())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// pids are the running containers' processes, by pod/container.
func (c *cluster) pids() map[string]int {
	out := map[string]int{}
	for _, p := range c.pods {
		for _, rc := range p.containers {
			out[p.name+"/"+rc.spec.Name] = rc.proc.Pid()
		}
	}
	return out
}

// sameProcesses checks that nothing restarted (or exited) since pids.
func (c *cluster) sameProcesses(t *testing.T, pids map[string]int) {
	t.Helper()
	for _, p := range c.pods {
		for _, rc := range p.containers {
			if rc.proc.Exited() || pids[p.name+"/"+rc.spec.Name] != rc.proc.Pid() {
				t.Fatalf("%s/%s did not stay up:\n%s", p.name, rc.spec.Name, rc.proc.Tail(30))
			}
		}
	}
}

// tails is the end of every container's log, for a failure message.
func (c *cluster) tails() string {
	var b strings.Builder
	for _, p := range c.pods {
		for _, rc := range p.containers {
			fmt.Fprintf(&b, "--- %s/%s\n%s\n", p.name, rc.spec.Name, rc.proc.Tail(15))
		}
	}
	return b.String()
}
