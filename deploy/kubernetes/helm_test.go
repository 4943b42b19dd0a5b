package kubernetes_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// chartDir is the Helm chart, beside the kustomize base it must agree with.
var chartDir = filepath.Join("..", "helm", "climesh")

// kubeVersion is the cluster the chart is rendered for: the first with native
// sidecar containers on by default.
const kubeVersion = "v1.29.0"

// renderChart renders the chart the way `helm install climesh deploy/helm/climesh
// -n climesh -f values.yaml` would, with Helm's own library (values checked against
// values.schema.json, templates in strict mode: a missing value is an error).
func renderChart(values map[string]any) ([]object, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, err
	}
	if !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, kv.String()) {
		return nil, fmt.Errorf("chart kubeVersion %q refuses Kubernetes %s", ch.Metadata.KubeVersion, kv)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	rv, err := chartutil.ToRenderValues(ch, values, chartutil.ReleaseOptions{Name: "climesh", Namespace: "climesh", IsInstall: true, Revision: 1}, caps)
	if err != nil {
		return nil, err
	}
	files, err := engine.Engine{Strict: true}.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	var objs []object
	for _, file := range slices.Sorted(maps.Keys(files)) {
		if filepath.Ext(file) != ".yaml" {
			continue // NOTES.txt, helpers
		}
		docs := releaseutil.SplitManifests(files[file])
		for _, k := range releaseutil.BySplitManifestsOrder(slices.Collect(maps.Keys(docs))) {
			doc := docs[k]
			var head struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return nil, fmt.Errorf("%s: %w\n%s", file, err, doc)
			}
			if head.Kind == "" {
				continue // a document of comments only
			}
			objs = append(objs, object{head.Kind, head.Metadata.Name, head.Metadata.Namespace, []byte(doc)})
		}
	}
	return objs, nil
}

// chartManifest renders the chart with values and decodes it like an overlay.
func chartManifest(t *testing.T, values map[string]any) *manifest {
	t.Helper()
	objs, err := renderChart(values)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	m := decodeAll(t, "chart", objs)
	// Helm does not own its release's namespace: `helm install -n climesh
	// --create-namespace` makes it (the kustomize base has a Namespace object).
	m.namespaces[m.namespace] = &corev1.Namespace{}
	return m
}

// sharedStorage is the chart's counterpart of overlays/shared-storage.
var sharedStorage = map[string]any{"copilot": map[string]any{"home": map[string]any{"shared": map[string]any{"enabled": true}}}}

// TestChart checks the chart's objects as TestManifests checks the overlays':
// strict decoding and the same wiring, with the default values (a volume per pod,
// like the base and sticky-only) and with shared storage.
func TestChart(t *testing.T) {
	for name, values := range map[string]map[string]any{"defaults": nil, "shared-storage": sharedStorage} {
		t.Run(name, func(t *testing.T) {
			m := chartManifest(t, values)
			checkWiring(t, m)
			checkClimesh(t, m)
			template, claim := homeVolume(t, m)
			if shared := values != nil; shared && (template || claim == nil || !slices.Contains(claim.Spec.AccessModes, corev1.ReadWriteMany)) {
				t.Errorf("shared storage: COPILOT_HOME must be one ReadWriteMany claim (template %v, claim %+v)", template, claim)
			} else if !shared && (!template || claim != nil) {
				t.Errorf("COPILOT_HOME must be a per-pod claim template (template %v, claim %v)", template, claim)
			}
		})
	}
}

// TestChartMatchesKustomize: one source of truth, by test. The chart with its
// default values renders the same objects as the kustomize base (and with shared
// storage, as overlays/shared-storage): the same kinds and names, and equal
// contents once what each tool adds by itself is set aside — the base's Namespace
// (Helm's --create-namespace), kustomize's hash suffix on generated ConfigMaps,
// Helm's own labels (helm.sh/chart, app.kubernetes.io/managed-by and instance),
// Helm's annotations (checksum/* on pod templates, helm.sh/* on objects) — and the
// config files compared as YAML data, not bytes.
func TestChartMatchesKustomize(t *testing.T) {
	for overlay, values := range map[string]map[string]any{"base": nil, "overlays/shared-storage": sharedStorage} {
		t.Run(overlay, func(t *testing.T) {
			chart := normalise(t, chartManifest(t, values))
			kust := normalise(t, render(t, overlay))
			delete(kust, "Namespace/"+"climesh")
			for _, k := range slices.Sorted(maps.Keys(kust)) {
				if _, ok := chart[k]; !ok {
					t.Errorf("%s is in the kustomize %s, not in the chart", k, overlay)
				}
			}
			for _, k := range slices.Sorted(maps.Keys(chart)) {
				want, ok := kust[k]
				if !ok {
					t.Errorf("%s is in the chart, not in the kustomize %s", k, overlay)
					continue
				}
				for _, d := range diff(k, want, chart[k]) {
					t.Error(d)
				}
			}
		})
	}
}

// helmLabels are the labels Helm charts add by convention, which kustomize does not.
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}

// hashSuffix is kustomize's content hash on a generated ConfigMap's name.
var hashSuffix = regexp.MustCompile(`^(.+)-[a-z0-9]{10}$`)

// normalise turns each object of m into plain data with the tools' own additions
// set aside, by "kind/name".
func normalise(t *testing.T, m *manifest) map[string]any {
	t.Helper()
	renames := map[string]string{} // kustomize's generated name → its plain name
	for name := range m.configMaps {
		if g := hashSuffix.FindStringSubmatch(name); g != nil {
			renames[name] = g[1]
		}
	}
	out := map[string]any{}
	for key, obj := range m.objects {
		b, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for from, to := range renames {
			s = strings.ReplaceAll(s, `"`+from+`"`, `"`+to+`"`)
		}
		if kind, name, _ := strings.Cut(key, "/"); renames[name] != "" {
			key = kind + "/" + renames[name]
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatal(err)
		}
		meta, _ := v["metadata"].(map[string]any)
		dropKeys(meta, "labels", func(k string) bool { return slices.Contains(helmLabels, k) })
		dropKeys(meta, "annotations", func(k string) bool { return strings.HasPrefix(k, "helm.sh/") })
		if spec, ok := v["spec"].(map[string]any); ok {
			if tmpl, ok := spec["template"].(map[string]any); ok {
				dropKeys(tmpl["metadata"].(map[string]any), "annotations", func(k string) bool { return strings.HasPrefix(k, "checksum/") })
			}
		}
		if data, ok := v["data"].(map[string]any); ok && v["kind"] == "ConfigMap" {
			for k, text := range data {
				if ext := filepath.Ext(k); ext == ".yaml" || ext == ".json" {
					var parsed any
					if err := yaml.Unmarshal([]byte(text.(string)), &parsed); err != nil {
						t.Fatalf("%s: %s: %v", key, k, err)
					}
					data[k] = parsed
				}
			}
		}
		out[key] = v
	}
	return out
}

// dropKeys deletes the keys of obj[field] that drop says, and the field if it is
// left empty.
func dropKeys(obj map[string]any, field string, drop func(string) bool) {
	m, _ := obj[field].(map[string]any)
	for k := range m {
		if drop(k) {
			delete(m, k)
		}
	}
	if m != nil && len(m) == 0 {
		delete(obj, field)
	}
}

// diff lists where got differs from want, by path.
func diff(path string, want, got any) []string {
	wm, wok := want.(map[string]any)
	gm, gok := got.(map[string]any)
	if wok && gok {
		var out []string
		for _, k := range slices.Sorted(maps.Keys(wm)) {
			if _, ok := gm[k]; !ok {
				out = append(out, fmt.Sprintf("%s.%s: kustomize has %s, the chart nothing", path, k, show(wm[k])))
				continue
			}
			out = append(out, diff(path+"."+k, wm[k], gm[k])...)
		}
		for _, k := range slices.Sorted(maps.Keys(gm)) {
			if _, ok := wm[k]; !ok {
				out = append(out, fmt.Sprintf("%s.%s: the chart has %s, kustomize nothing", path, k, show(gm[k])))
			}
		}
		return out
	}
	wl, wok := want.([]any)
	gl, gok := got.([]any)
	if wok && gok && len(wl) == len(gl) {
		var out []string
		for i := range wl {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), wl[i], gl[i])...)
		}
		return out
	}
	if ws, gs, ok := strings2(want, got); ok && len(ws)+len(gs) > 200 && ws != gs {
		wl, gl := strings.Split(ws, "\n"), strings.Split(gs, "\n")
		for i := 0; ; i++ {
			if i >= len(wl) || i >= len(gl) || wl[i] != gl[i] {
				return []string{fmt.Sprintf("%s: line %d: kustomize has %q, the chart %q", path, i+1, line(wl, i), line(gl, i))}
			}
		}
	}
	if !reflect.DeepEqual(want, got) {
		return []string{fmt.Sprintf("%s: kustomize has %s, the chart %s", path, show(want), show(got))}
	}
	return nil
}

func strings2(a, b any) (string, string, bool) {
	as, aok := a.(string)
	bs, bok := b.(string)
	return as, bs, aok && bok
}

func line(lines []string, i int) string {
	if i < len(lines) {
		return lines[i]
	}
	return "(end)"
}

func show(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// set builds nested values from a dotted path: set("a.b", 1) = {a: {b: 1}}.
func set(path string, v any) map[string]any {
	keys := strings.Split(path, ".")
	out := map[string]any{keys[len(keys)-1]: v}
	for i := len(keys) - 2; i >= 0; i-- {
		out = map[string]any{keys[i]: out}
	}
	return out
}

// TestChartRefusesBadValues: a value the chart cannot use is refused at render
// (helm install/template) with an error that names it — by values.schema.json or
// by the templates' own checks against the xds-server's config.
func TestChartRefusesBadValues(t *testing.T) {
	listener := func(group string) map[string]any {
		return map[string]any{"name": "edge", "address": "0.0.0.0", "port": 10000, "node_group": group, "routes": []any{map[string]any{"pool": "copilot"}}}
	}
	for name, c := range map[string]struct {
		values map[string]any
		want   []string // in the error
	}{
		"unknown registration":   {set("consul.registration", "gossip"), []string{"/consul/registration", "catalog"}},
		"misspelt value":         {set("copilot.replica", 2), []string{"/copilot", "replica"}},
		"unknown top level":      {set("replicas", 2), []string{"replicas"}},
		"no xds-server":          {set("xdsServer.replicas", 0), []string{"/xdsServer/replicas", "minimum"}},
		"consul without port":    {set("consul.address", "consul-server"), []string{"/consul/address"}},
		"bad extra arg":          {set("copilot.extraArgs", []any{"-v"}), []string{"/copilot/extraArgs/0"}},
		"bad drain timeout":      {set("copilot.drainTimeout", "2 minutes"), []string{"/copilot/drainTimeout"}},
		"pool not in config":     {set("copilot.pool", "cli"), []string{"copilot.pool", `"cli"`, "xdsServer.config.pools"}},
		"node group mismatch":    {set("xdsServer.config.listeners", []any{listener("gateway")}), []string{"xdsServer.config.listeners[0].node_group", `"gateway"`, "envoy.nodeGroup"}},
		"grace under drain":      {set("envoy.terminationGracePeriodSeconds", 60), []string{"envoy.terminationGracePeriodSeconds", "envoy.shutdownTimeoutSeconds"}},
		"drain time too long":    {set("envoy.drainTimeSeconds", 90), []string{"envoy.drainTimeSeconds", "envoy.shutdownTimeoutSeconds"}},
		"bad drain strategy":     {set("envoy.drainStrategy", "slow"), []string{"/envoy/drainStrategy"}},
		"listener on stats port": {set("xdsServer.config.listeners", []any{map[string]any{"name": "edge", "address": "0.0.0.0", "port": 19001, "node_group": "edge", "routes": []any{map[string]any{"pool": "copilot"}}}}), []string{"xdsServer.config.listeners[0].port", "19001"}},
		"listener named metrics": {set("xdsServer.config.listeners", []any{map[string]any{"name": "metrics", "address": "0.0.0.0", "port": 10000, "node_group": "edge", "routes": []any{map[string]any{"pool": "copilot"}}}}), []string{"xdsServer.config.listeners[0].name", `"metrics"`}},
		"nobody scrapes":         {set("metrics.from", []any{}), []string{"/metrics/from"}},
		"listener port name":     {set("xdsServer.config.listeners", []any{map[string]any{"name": "a-very-long-listener", "port": 1, "node_group": "edge"}}), []string{"xdsServer.config.listeners[0].name", "15"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := renderChart(c.values)
			if err == nil {
				t.Fatalf("rendered; want an error naming %v", c.want)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestChartValues: the values an operator sets reach every object that needs them,
// and the result still passes the overlays' checks.
func TestChartValues(t *testing.T) {
	t.Run("images, replicas, consul address", func(t *testing.T) {
		m := chartManifest(t, map[string]any{
			"images":  set("climesh.tag", "0.2.0"),
			"consul":  set("address", "consul.internal:8500"),
			"copilot": set("replicas", 5),
		})
		checkWiring(t, m)
		checkClimesh(t, m) // the sidecars' --consul equals the config's consul.address
		for _, w := range m.workloads() {
			for _, c := range allContainers(&w.pod.Spec) {
				if strings.Contains(c.Image, "/climesh:") && c.Image != "ghcr.io/climesh/climesh:0.2.0" {
					t.Errorf("%s/%s runs %s", w.name, c.Name, c.Image)
				}
			}
		}
		if r := *m.statefulSets["climesh-copilot"].Spec.Replicas; r != 5 {
			t.Errorf("copilot replicas %d", r)
		}
	})
	t.Run("agent registration", func(t *testing.T) {
		m := chartManifest(t, set("consul.registration", "agent"))
		checkWiring(t, m)
		sc := container(t, &m.statefulSets["climesh-copilot"].Spec.Template.Spec, "climesh-sidecar")
		flags := parseArgs(t, "climesh-sidecar", sc.Args, flagsOf(t, "climesh-sidecar"))
		if _, catalog := flags["consul-registration"]; catalog || flags["consul"] != "$(HOST_IP):8500" {
			t.Errorf("agent registration: --consul %q --consul-registration %q, want the node's agent $(HOST_IP):8500", flags["consul"], flags["consul-registration"])
		}
		if !slices.ContainsFunc(sc.Env, func(e corev1.EnvVar) bool {
			return e.Name == "HOST_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP"
		}) {
			t.Error("agent registration: no HOST_IP from status.hostIP")
		}
	})
	t.Run("existing secrets and policy", func(t *testing.T) {
		objs, err := renderChart(map[string]any{
			"secrets": map[string]any{"create": false, "names": map[string]any{"consulTokens": "vault-consul-tokens"}},
			"policy":  set("configMap", "my-policy"),
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if o.kind == "Secret" || o.name == "climesh-policy" {
				t.Errorf("%s %s rendered; want the existing one", o.kind, o.name)
			}
		}
		m := decodeAll(t, "chart", objs)
		pod := &m.statefulSets["climesh-copilot"].Spec.Template.Spec
		if got := secretEnv(container(t, pod, "climesh-sidecar"), "CONSUL_HTTP_TOKEN"); got != "vault-consul-tokens/sidecar" {
			t.Errorf("the sidecar's CONSUL_HTTP_TOKEN comes from %q", got)
		}
		if !slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.ConfigMap != nil && v.ConfigMap.Name == "my-policy" }) {
			t.Errorf("the sidecars do not mount the policy ConfigMap my-policy: %+v", pod.Volumes)
		}
	})
}

// TestChartReadmeExample: the README's my-values.yaml renders, and with the
// chart's placeholder Secrets in place of the operator's own passes every check.
func TestChartReadmeExample(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```yaml\n(# my-values.yaml.*?)```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README.md has no ```yaml block starting # my-values.yaml")
	}
	var values map[string]any
	if err := yaml.Unmarshal(block[1], &values); err != nil {
		t.Fatalf("README's my-values.yaml: %v", err)
	}
	objs, err := renderChart(values)
	if err != nil {
		t.Fatalf("README's my-values.yaml: %v", err)
	}
	decodeAll(t, "README example", objs)
	if s, ok := values["secrets"].(map[string]any); ok {
		s["create"] = true
	}
	m := chartManifest(t, values)
	checkWiring(t, m)
	checkClimesh(t, m)
}
