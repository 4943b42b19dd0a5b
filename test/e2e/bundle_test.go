package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/test/harness"
)

// TestPolicyFromBundleService: the xds-server and every sidecar take their
// policy from one bundle service (a signed OPA bundle on loopback). Revision A
// serves; a tampered and an unsigned bundle are refused by every process and A
// keeps deciding; revision B reaches every process without a restart within
// the bound, and decides at once: a running tunnel's next message, and a new
// tunnel at the edge.
func TestPolicyFromBundleService(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts a mesh of its own")
	}
	bs, err := harness.StartBundleServer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bs.Close)
	var policyDir string
	env := startChaosMesh(t, harness.MeshOptions{Instances: 2, BundleService: func(dir string) (string, string, error) {
		policyDir = dir
		return bs.URL, bs.KeyFile, bs.Publish(dir, "A", nil, harness.Signed)
	}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// What each process reports: the revision deciding, and refused loads.
	type view struct {
		revision float64 // climesh_policy_bundle_revision_info{revision=...}
		errors   float64 // climesh_policy_reloads_total{result="error"}
	}
	views := func(rev string) (map[string]view, error) {
		out := map[string]view{}
		r, err := env.XDS.Metric("climesh_policy_bundle_revision_info", fmt.Sprintf("revision=%q", rev))
		if err != nil {
			return nil, err
		}
		e, _ := env.XDS.Metric("climesh_policy_reloads_total", `result="error"`)
		out["xds-server"] = view{r, e}
		for id, sc := range env.Sidecars {
			page := sidecarMetrics(t, sc.AdminPort)
			out[id] = view{metricValue(page, fmt.Sprintf("climesh_policy_bundle_revision_info{revision=%q}", rev)),
				metricValue(page, `climesh_policy_reloads_total{result="error"}`)}
		}
		return out, nil
	}
	everyone := func(rev string, cond func(view) bool) func() error {
		return func() error {
			vs, err := views(rev)
			if err != nil {
				return err
			}
			for _, name := range slices.Sorted(maps.Keys(vs)) {
				if !cond(vs[name]) {
					return fmt.Errorf("%s: %+v", name, vs[name])
				}
			}
			return nil
		}
	}
	// GET /status of each process: its bundle's state in OPA's status fields.
	statuses := func() map[string]policy.BundleStatus {
		t.Helper()
		addrs := map[string]string{"xds-server": env.XDS.HTTPAddr}
		for id, sc := range env.Sidecars {
			addrs[id] = fmt.Sprintf("127.0.0.1:%d", sc.AdminPort)
		}
		out := map[string]policy.BundleStatus{}
		for name, addr := range addrs {
			var st struct{ Policy policy.Status }
			resp, err := http.Get("http://" + addr + "/status")
			if err != nil {
				t.Fatal(err)
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("%s GET /status: %d %v", name, resp.StatusCode, err)
			}
			out[name] = st.Policy.Bundles["climesh"]
		}
		return out
	}
	poll := func(what string, limit time.Duration, cond func() error) time.Duration {
		t.Helper()
		start := time.Now()
		pctx, pcancel := context.WithTimeout(ctx, limit)
		defer pcancel()
		if err := harness.Poll(pctx, 20*time.Millisecond, cond); err != nil {
			t.Fatalf("%s: not within %v: %v", what, limit, err)
		}
		return time.Since(start)
	}
	poll("revision A everywhere", 10*time.Second, everyone("A", func(v view) bool { return v.revision == 1 }))

	// alice has a tunnel, a session and a turn under A.
	alice := env.clientOf(ctx, t, "acme", "alice")
	s := env.newSession(ctx, t, alice)
	if _, err := ownTurn(ctx, s, "under A"); err != nil {
		t.Fatal(err)
	}

	// Bundles no process may trust: each refused everywhere, A still deciding.
	for _, how := range []harness.BundleSigning{harness.Tampered, harness.Unsigned} {
		before, err := views("A")
		if err != nil {
			t.Fatal(err)
		}
		if err := bs.Publish(policyDir, "evil", nil, how); err != nil {
			t.Fatal(err)
		}
		poll(fmt.Sprintf("bundle %d refused everywhere", how), 10*time.Second, func() error {
			after, err := views("A")
			if err != nil {
				return err
			}
			for name, v := range after {
				if v.errors <= before[name].errors || v.revision != 1 {
					return fmt.Errorf("%s: %+v (before %+v)", name, v, before[name])
				}
			}
			return nil
		})
		for name, st := range statuses() {
			if st.ActiveRevision != "A" || st.Code != "bundle_error" || st.Message == "" {
				t.Fatalf("%s's status after bundle %d: %+v, want A active and the refusal", name, how, st)
			}
		}
		if _, err := ownTurn(ctx, s, fmt.Sprintf("still under A after bundle %d", how)); err != nil {
			t.Fatalf("after a refused bundle, A stopped deciding: %v", err)
		}
	}

	// Revision B: acme is no longer admitted to the pool, and its provider URL
	// is no longer listed.
	if err := bs.Publish(policyDir, "B", func(data map[string]any) {
		pools := data["climesh"].(map[string]any)["pools"].(map[string]any)
		pools["copilot"] = map[string]any{"tenants": []any{"globex"}, "provider_base_urls": []any{}}
	}, harness.Signed); err != nil {
		t.Fatal(err)
	}
	took := poll("revision B everywhere", 10*time.Second, everyone("B", func(v view) bool { return v.revision == 1 }))
	for name, st := range statuses() {
		if st.ActiveRevision != "B" || st.Code != "" || st.LastSuccessfulActivation.IsZero() {
			t.Fatalf("%s's status under B: %+v", name, st)
		}
	}
	// The running tunnel's next message is decided by B.
	_, err = alice.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err == nil || !strings.Contains(err.Error(), "-32012") {
		t.Fatalf("a session.create on alice's running tunnel under B: %v, want -32012 (its provider is no longer listed)", err)
	}
	// A new tunnel is decided by B at the edge.
	if _, err := startClient(ctx, t, env, "acme", "bob"); err == nil || !strings.Contains(err.Error(), "-32011") || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a new acme tunnel under B: %v, want refused by the edge (-32011, 403)", err)
	}
	t.Logf("bundle service: revision B decided in the xds-server and %d sidecars %v after it was published (watch interval 100ms); a tampered and an unsigned bundle were refused by each, A deciding meanwhile",
		len(env.Sidecars), took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("revision B took %v to reach every process, bound 2s", took)
	}
}
