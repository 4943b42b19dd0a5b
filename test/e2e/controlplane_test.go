// Package e2e runs climesh with its real parts: Consul (dev agent), the xds-server
// binary, Envoy, and upstreams on loopback. `go test -short` skips it; `make test`
// runs it after `make tools`.
package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/climesh/climesh/test/harness"
)

const service = "copilot"

// fleetEnv is Consul, three echo instances registered in it, the xds-server, and
// two Envoys: one on state-of-the-world ADS (group edge), one on delta (group edge-b).
type fleetEnv struct {
	consul       *harness.Consul
	xds          *harness.XDSServer
	sotw, delta  *harness.Envoy
	urlA, urlB   string
	echoes       map[string]*harness.Echo
	configBody   string
	listenerPort [2]int
}

func controlPlaneConfig(consulAddr string, portA, portB int) string {
	return fmt.Sprintf(`consul: {address: %s, retry_min: 50ms, retry_max: 500ms}
identity:
  trust_client_headers: true # no JWT issuer in this test: the client names its user
listeners:
  - {name: edge, port: %d, node_group: edge, routes: [{pool: shared}]}
  - {name: edge-b, port: %d, node_group: edge-b, routes: [{pool: shared}]}
pools:
  - name: shared
    consul_service: %s
    lb: {policy: ring_hash, hash_key: user}
`, consulAddr, portA, portB, service)
}

func startFleetEnv(t *testing.T, instances int) *fleetEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: needs Consul, Envoy and the xds-server binary (run without -short)")
	}
	ctx := t.Context()
	dir := t.TempDir()
	env := &fleetEnv{echoes: map[string]*harness.Echo{}}
	var err error
	if env.consul, err = harness.StartConsul(ctx, dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.consul.Close)
	for i := 1; i <= instances; i++ {
		env.addInstance(t, fmt.Sprintf("cli-%d", i))
	}
	ports, err := harness.FreePorts(len(env.listenerPort))
	if err != nil {
		t.Fatal(err)
	}
	copy(env.listenerPort[:], ports)
	env.configBody = controlPlaneConfig(env.consul.Addr, env.listenerPort[0], env.listenerPort[1])
	if env.xds, err = harness.StartXDSServer(ctx, dir, env.configBody); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dumpOnFailure(t, env.xds.Proc); env.xds.Close() })
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := env.xds.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	if env.sotw, err = harness.StartEnvoy(ctx, dir, env.xds.XDSAddr, harness.EnvoyOptions{NodeID: "envoy-sotw", NodeGroup: "edge"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dumpOnFailure(t, env.sotw.Proc); env.sotw.Close() })
	if env.delta, err = harness.StartEnvoy(ctx, dir, env.xds.XDSAddr, harness.EnvoyOptions{NodeID: "envoy-delta", NodeGroup: "edge-b", Delta: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dumpOnFailure(t, env.delta.Proc); env.delta.Close() })
	env.urlA = fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", env.listenerPort[0])
	env.urlB = fmt.Sprintf("ws://127.0.0.1:%d/v1/rpc", env.listenerPort[1])
	return env
}

func dumpOnFailure(t *testing.T, p *harness.Proc) {
	if t.Failed() {
		t.Logf("--- %s log (%s) ---\n%s", p.Name, p.LogPath, p.Tail(40))
	}
}

func (env *fleetEnv) addInstance(t *testing.T, id string) {
	t.Helper()
	e, err := harness.StartEcho(id, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	env.echoes[id] = e
	if err := env.consul.Register(service, id, e.Port, nil); err != nil {
		t.Fatal(err)
	}
}

// waitHosts waits until both Envoys see exactly want (hostname -> Envoy EDS health).
func (env *fleetEnv) waitHosts(t *testing.T, want map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for _, e := range []*harness.Envoy{env.sotw, env.delta} {
		err := harness.Poll(ctx, 20*time.Millisecond, func() error {
			hosts, err := e.Hosts("pool/shared")
			if err != nil {
				return err
			}
			got := map[string]string{}
			for _, h := range hosts {
				got[h.Hostname] = h.Health
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("%s hosts %v, want %v", e.NodeID, got, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func users(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("user-%03d", i)
	}
	return out
}

// assign opens `repeat` tunnels per user through url and returns the instance each
// user reached; a user who reached two instances fails the test.
func assign(t *testing.T, url string, who []string, repeat int) map[string]string {
	t.Helper()
	var mu sync.Mutex
	got := map[string]string{}
	var failures []string
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for u := range jobs {
				for range repeat {
					id, err := harness.WhoServes(t.Context(), url, http.Header{"X-Climesh-User": {u}})
					mu.Lock()
					switch {
					case err != nil:
						failures = append(failures, fmt.Sprintf("%s: %v", u, err))
					case got[u] != "" && got[u] != id:
						failures = append(failures, fmt.Sprintf("%s reached %s and %s", u, got[u], id))
					default:
						got[u] = id
					}
					mu.Unlock()
				}
			}
		})
	}
	for _, u := range who {
		jobs <- u
	}
	close(jobs)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d failures, first: %s", len(failures), strings.Join(failures[:min(5, len(failures))], "; "))
	}
	return got
}

func spread(a map[string]string) map[string]int {
	out := map[string]int{}
	for _, id := range a {
		out[id]++
	}
	return out
}

func TestControlPlaneStickyRouting(t *testing.T) {
	env := startFleetEnv(t, 3)
	env.waitHosts(t, map[string]string{"cli-1": "HEALTHY", "cli-2": "HEALTHY", "cli-3": "HEALTHY"})
	all := users(200)

	// 1. 200 users over all three; 20 connections each reach one instance.
	before := assign(t, env.urlA, all, 20)
	s := spread(before)
	t.Logf("200 users over 3 instances: %v", s)
	if len(s) != 3 {
		t.Fatalf("users reached %d instances, want all 3: %v", len(s), s)
	}
	// Both Envoys (one state-of-the-world, one delta) build the same ring.
	if other := assign(t, env.urlB, all, 1); fmt.Sprint(other) != fmt.Sprint(before) {
		t.Fatal("the delta-xDS Envoy maps users differently from the state-of-the-world one")
	}

	// 2. A fourth instance takes about a quarter of the users, all from the others.
	env.addInstance(t, "cli-4")
	env.waitHosts(t, map[string]string{"cli-1": "HEALTHY", "cli-2": "HEALTHY", "cli-3": "HEALTHY", "cli-4": "HEALTHY"})
	after := assign(t, env.urlA, all, 1)
	moved := 0
	for _, u := range all {
		if after[u] != before[u] {
			moved++
			if after[u] != "cli-4" {
				t.Errorf("%s moved from %s to %s, not to the new instance", u, before[u], after[u])
			}
		}
	}
	fraction := float64(moved) / float64(len(all))
	t.Logf("adding a 4th instance moved %d of %d users (%.3f; ideal 0.25)", moved, len(all), fraction)
	if moved == 0 || fraction > 0.35 {
		t.Fatalf("moved fraction %.3f, want about 0.25 (at most 0.35)", fraction)
	}

	// 3a. A critical check takes cli-2 out; its users land elsewhere, nobody else moves.
	if err := env.consul.SetCheck("cli-2", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	env.waitHosts(t, map[string]string{"cli-1": "HEALTHY", "cli-2": "UNHEALTHY", "cli-3": "HEALTHY", "cli-4": "HEALTHY"})
	checkOnlyMoved(t, after, assign(t, env.urlA, all, 1), "cli-2")

	// 3b. Maintenance mode turns cli-3 DRAINING: no new tunnels reach it.
	if err := env.consul.SetCheck("cli-2", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	if err := env.consul.Client.Agent().EnableServiceMaintenance("cli-3", "climesh e2e"); err != nil {
		t.Fatal(err)
	}
	env.waitHosts(t, map[string]string{"cli-1": "HEALTHY", "cli-2": "HEALTHY", "cli-3": "DRAINING", "cli-4": "HEALTHY"})
	checkOnlyMoved(t, after, assign(t, env.urlA, all, 1), "cli-3")

	// 3c. Deregistration removes cli-1 from Envoy altogether.
	if err := env.consul.Client.Agent().DisableServiceMaintenance("cli-3"); err != nil {
		t.Fatal(err)
	}
	if err := env.consul.Client.Agent().ServiceDeregister("cli-1"); err != nil {
		t.Fatal(err)
	}
	env.waitHosts(t, map[string]string{"cli-2": "HEALTHY", "cli-3": "HEALTHY", "cli-4": "HEALTHY"})
	checkOnlyMoved(t, after, assign(t, env.urlA, all, 1), "cli-1")
}

// checkOnlyMoved: the users of gone moved to other instances; every other user stayed.
func checkOnlyMoved(t *testing.T, before, now map[string]string, gone string) {
	t.Helper()
	moved := 0
	for u, id := range before {
		switch {
		case id == gone && now[u] == gone:
			t.Errorf("%s still reaches %s", u, gone)
		case id == gone:
			moved++
		case now[u] != id:
			t.Errorf("%s moved from %s to %s though only %s changed", u, id, now[u], gone)
		}
	}
	t.Logf("%s out of routing: its %d users moved, the rest stayed", gone, moved)
	if moved == 0 {
		t.Errorf("%s had no users to move; the check proves nothing", gone)
	}
}

func TestControlPlaneNACKKeepsServing(t *testing.T) {
	env := startFleetEnv(t, 2)
	env.waitHosts(t, map[string]string{"cli-1": "HEALTHY", "cli-2": "HEALTHY"})
	u := http.Header{"X-Climesh-User": {"alice"}}
	first, err := harness.WhoServes(t.Context(), env.urlA, u)
	if err != nil {
		t.Fatal(err)
	}

	// A new listener on a port someone else holds: valid config, but Envoy cannot
	// bind it and rejects the listener update.
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	port := held.Addr().(*net.TCPAddr).Port
	body := strings.Replace(env.configBody, "pools:", fmt.Sprintf("  - {name: taken, port: %d, node_group: edge, routes: [{pool: shared}]}\npools:", port), 1)
	if err := env.xds.Reload(body); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		n, err := env.xds.Metric("climesh_xds_nacks_total", `node_id="envoy-sotw"`, `type="listener"`)
		if err != nil || n < 1 {
			return fmt.Errorf("no listener NACK counted yet (%v, %v)", n, err)
		}
		return nil
	})
	if err != nil {
		_, metrics, _ := env.xds.Get("/metrics")
		t.Fatalf("%v\n%s", err, grepLines(metrics, "climesh_xds_"))
	}
	_, debug, err := env.xds.Get("/debug/xds?group=edge")
	if err != nil || !strings.Contains(debug, "last_nack") || !strings.Contains(debug, fmt.Sprint(port)) {
		t.Fatalf("/debug/xds does not report the NACK naming port %d: %v\n%.2000s", port, err, debug)
	}
	// Envoy keeps the config it had: the old listener serves alice as before.
	again, err := harness.WhoServes(t.Context(), env.urlA, u)
	if err != nil || again != first {
		t.Fatalf("after the NACK alice reached %q (%v), want %q", again, err, first)
	}

	// A config that does not load is refused by the xds-server itself.
	if err := env.xds.Reload("pools: [{name: Bad Name}]\n"); err != nil {
		t.Fatal(err)
	}
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		if n, _ := env.xds.Metric("climesh_config_reload_errors_total"); n < 1 {
			return fmt.Errorf("reload error not counted")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := harness.WhoServes(t.Context(), env.urlA, u); err != nil || again != first {
		t.Fatalf("after a refused reload alice reached %q (%v), want %q", again, err, first)
	}
	// The rejected version is not sent again and again (Envoy would NACK each).
	if n, _ := env.xds.Metric("climesh_xds_nacks_total", `node_id="envoy-sotw"`); n > 3 {
		t.Fatalf("%v NACKs for one rejected config: the server resends what Envoy rejected", n)
	}
}

func TestControlPlaneSurvivesConsulOutage(t *testing.T) {
	env := startFleetEnv(t, 2)
	env.waitHosts(t, map[string]string{"cli-1": "HEALTHY", "cli-2": "HEALTHY"})
	u := http.Header{"X-Climesh-User": {"bob"}}

	// Consul goes away: the last known fleet keeps serving.
	env.consul.Proc.Stop(5 * time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := harness.Poll(ctx, 50*time.Millisecond, func() error {
		if n, _ := env.xds.Metric("climesh_discovery_errors_total"); n < 1 {
			return fmt.Errorf("no discovery error yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := harness.WhoServes(t.Context(), env.urlA, u); err != nil {
		t.Fatalf("routing stopped while Consul was down: %v", err)
	}
	if code, body, _ := env.xds.Get("/debug/fleet"); code != 200 || !strings.Contains(body, "cli-1") {
		t.Fatalf("the last known fleet is gone: %d %s", code, body)
	}

	// Consul comes back empty (a dev agent keeps nothing) with a lower index; one
	// new instance registers: the watch resets and Envoy follows.
	if err := env.consul.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	env.addInstance(t, "cli-9")
	env.waitHosts(t, map[string]string{"cli-9": "HEALTHY"})
	if id, err := harness.WhoServes(t.Context(), env.urlA, u); err != nil || id != "cli-9" {
		t.Fatalf("after the restart bob reached %q (%v), want cli-9", id, err)
	}
}

func TestControlPlaneNotReadyWithoutConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir := t.TempDir()
	ports, err := harness.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	port, lport, lportB := ports[0], ports[1], ports[2]
	// Nothing listens on port: Consul is unreachable from the start.
	x, err := harness.StartXDSServer(t.Context(), dir, controlPlaneConfig(fmt.Sprintf("127.0.0.1:%d", port), lport, lportB))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		if n, _ := x.Metric("climesh_discovery_errors_total", `pool="shared"`); n < 2 {
			return fmt.Errorf("fewer than two failed queries so far")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	code, body, _ := x.Get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "shared") {
		t.Fatalf("readyz without Consul: %d %q, want 503 naming the pool", code, body)
	}
	if x.Proc.Exited() {
		t.Fatal("xds-server gave up instead of retrying")
	}

	// Consul appears on that port: the server becomes ready by itself.
	c, err := harness.StartConsulOnPort(t.Context(), dir, port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := x.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
