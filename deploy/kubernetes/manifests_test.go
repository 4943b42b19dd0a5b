// Package kubernetes_test checks climesh's Kubernetes manifests without a cluster:
// each overlay is rendered with kustomize, every object is decoded strictly into
// its Kubernetes API type (an unknown field is an error), and the wiring between
// objects is checked — selectors, ports, probes, volumes, secrets, the configs the
// binaries read and the flags they are given.
package kubernetes_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3" // the stats listener's router
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3" // the bootstrap's typed options
	"google.golang.org/protobuf/encoding/protojson"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/envoydrain"
	"github.com/climesh/climesh/test/harness"
)

// manifest is one rendered kustomization, by kind and name.
type manifest struct {
	namespace    string
	objects      map[string]any // every object, by "kind/name"
	namespaces   map[string]*corev1.Namespace
	secrets      map[string]*corev1.Secret
	configMaps   map[string]*corev1.ConfigMap
	services     map[string]*corev1.Service
	claims       map[string]*corev1.PersistentVolumeClaim
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	netpols      map[string]*networkingv1.NetworkPolicy
	pdbs         map[string]*policyv1.PodDisruptionBudget
}

// workload is what the checks need of a Deployment or StatefulSet.
type workload struct {
	kind, name     string
	selector       map[string]string
	pod            *corev1.PodTemplateSpec
	claimTemplates []string
}

func (m *manifest) workloads() []workload {
	var out []workload
	for _, n := range slices.Sorted(maps.Keys(m.deployments)) {
		d := m.deployments[n]
		out = append(out, workload{"Deployment", n, d.Spec.Selector.MatchLabels, &d.Spec.Template, nil})
	}
	for _, n := range slices.Sorted(maps.Keys(m.statefulSets)) {
		s := m.statefulSets[n]
		var claims []string
		for _, c := range s.Spec.VolumeClaimTemplates {
			claims = append(claims, c.Name)
		}
		out = append(out, workload{"StatefulSet", n, s.Spec.Selector.MatchLabels, &s.Spec.Template, claims})
	}
	return out
}

// decodeStrict decodes YAML into v; a field v's type does not have is an error.
func decodeStrict(y []byte, v any) error {
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// object is one rendered Kubernetes object.
type object struct {
	kind, name, namespace string
	yaml                  []byte
}

// render runs kustomize on dir and decodes every object strictly.
func render(t *testing.T, dir string) *manifest {
	t.Helper()
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []object
	for _, r := range resources.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, object{r.GetKind(), r.GetName(), r.GetNamespace(), y})
	}
	return decodeAll(t, dir, objs)
}

// decodeAll decodes every object strictly into its Kubernetes API type (where
// names what rendered them, for errors).
func decodeAll(t *testing.T, where string, objs []object) *manifest {
	t.Helper()
	m := &manifest{objects: map[string]any{}, namespaces: map[string]*corev1.Namespace{}, secrets: map[string]*corev1.Secret{}, configMaps: map[string]*corev1.ConfigMap{},
		services: map[string]*corev1.Service{}, claims: map[string]*corev1.PersistentVolumeClaim{}, deployments: map[string]*appsv1.Deployment{},
		statefulSets: map[string]*appsv1.StatefulSet{}, netpols: map[string]*networkingv1.NetworkPolicy{}, pdbs: map[string]*policyv1.PodDisruptionBudget{}}
	for _, r := range objs {
		var obj any
		name := r.name
		switch r.kind {
		case "Namespace":
			obj = slot(m.namespaces, name)
		case "Secret":
			obj = slot(m.secrets, name)
		case "ConfigMap":
			obj = slot(m.configMaps, name)
		case "Service":
			obj = slot(m.services, name)
		case "PersistentVolumeClaim":
			obj = slot(m.claims, name)
		case "Deployment":
			obj = slot(m.deployments, name)
		case "StatefulSet":
			obj = slot(m.statefulSets, name)
		case "NetworkPolicy":
			obj = slot(m.netpols, name)
		case "PodDisruptionBudget":
			obj = slot(m.pdbs, name)
		default:
			t.Fatalf("%s: kind %s %s has no check here; add its type", where, r.kind, name)
		}
		if _, dup := m.objects[r.kind+"/"+name]; dup {
			t.Fatalf("%s: two objects %s %s", where, r.kind, name)
		}
		m.objects[r.kind+"/"+name] = obj
		if err := decodeStrict(r.yaml, obj); err != nil {
			t.Fatalf("%s: %s %s does not decode strictly: %v", where, r.kind, name, err)
		}
		if r.kind != "Namespace" {
			if ns := r.namespace; m.namespace == "" {
				m.namespace = ns
			} else if ns != m.namespace {
				t.Fatalf("%s %s is in namespace %q, the rest in %q", r.kind, name, ns, m.namespace)
			}
		}
	}
	return m
}

// slot makes a new object of its kind, files it under name and returns it to
// decode into.
func slot[T any](objs map[string]*T, name string) *T {
	v := new(T)
	objs[name] = v
	return v
}

// byPrefix finds the one object whose name is prefix or prefix-<kustomize hash>.
func byPrefix[T any](t *testing.T, objs map[string]*T, prefix string) (string, *T) {
	t.Helper()
	for n, o := range objs {
		if n == prefix || strings.HasPrefix(n, prefix+"-") && !strings.Contains(n[len(prefix)+1:], "-") {
			return n, o
		}
	}
	t.Fatalf("no %s among %v", prefix, slices.Sorted(maps.Keys(objs)))
	return "", nil
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func allContainers(pod *corev1.PodSpec) []corev1.Container {
	return append(append([]corev1.Container{}, pod.InitContainers...), pod.Containers...)
}

func container(t *testing.T, pod *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for _, c := range allContainers(pod) {
		if c.Name == name {
			return &c
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

// portNumber resolves a named or numbered port against a pod's containers.
func portNumber(pod *corev1.PodSpec, p intstr.IntOrString) (int32, bool) {
	for _, c := range allContainers(pod) {
		for _, cp := range c.Ports {
			if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

func (m *manifest) selected(selector map[string]string) []workload {
	var out []workload
	for _, w := range m.workloads() {
		if matches(selector, w.pod.Labels) {
			out = append(out, w)
		}
	}
	return out
}

// checkWiring checks what holds for every rendered kustomization.
func checkWiring(t *testing.T, m *manifest) {
	if m.namespaces[m.namespace] == nil {
		t.Errorf("namespace %q is used but not created", m.namespace)
	}
	for _, w := range m.workloads() {
		where := w.kind + " " + w.name
		if !matches(w.selector, w.pod.Labels) {
			t.Errorf("%s: selector %v does not match its pod labels %v", where, w.selector, w.pod.Labels)
		}
		volumes := map[string]corev1.Volume{}
		for _, v := range w.pod.Spec.Volumes {
			volumes[v.Name] = v
			switch {
			case v.ConfigMap != nil && m.configMaps[v.ConfigMap.Name] == nil:
				t.Errorf("%s: volume %s names ConfigMap %s, which does not exist", where, v.Name, v.ConfigMap.Name)
			case v.Secret != nil && m.secrets[v.Secret.SecretName] == nil:
				t.Errorf("%s: volume %s names Secret %s, which does not exist", where, v.Name, v.Secret.SecretName)
			case v.PersistentVolumeClaim != nil && m.claims[v.PersistentVolumeClaim.ClaimName] == nil:
				t.Errorf("%s: volume %s names claim %s, which does not exist", where, v.Name, v.PersistentVolumeClaim.ClaimName)
			}
		}
		portNames, portNumbers := map[string]bool{}, map[int32]bool{}
		for _, c := range allContainers(&w.pod.Spec) {
			for _, p := range c.Ports { // one network namespace per pod
				if portNumbers[p.ContainerPort] || (p.Name != "" && portNames[p.Name]) {
					t.Errorf("%s/%s: port %s %d is taken by another container port of the pod", where, c.Name, p.Name, p.ContainerPort)
				}
				portNames[p.Name], portNumbers[p.ContainerPort] = true, true
			}
			if c.Image == "" || strings.HasSuffix(c.Image, ":latest") || !strings.Contains(c.Image, ":") {
				t.Errorf("%s/%s: image %q is not pinned", where, c.Name, c.Image)
			}
			for _, vm := range c.VolumeMounts {
				if _, ok := volumes[vm.Name]; !ok && !slices.Contains(w.claimTemplates, vm.Name) {
					t.Errorf("%s/%s: mounts %s, which is neither a volume nor a claim template", where, c.Name, vm.Name)
				}
			}
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					continue
				}
				if r := e.ValueFrom.SecretKeyRef; r != nil && !secretHas(m.secrets[r.Name], r.Key) {
					t.Errorf("%s/%s: env %s wants key %s of Secret %s, which is not there", where, c.Name, e.Name, r.Key, r.Name)
				}
				if r := e.ValueFrom.ConfigMapKeyRef; r != nil && (m.configMaps[r.Name] == nil || m.configMaps[r.Name].Data[r.Key] == "") {
					t.Errorf("%s/%s: env %s wants key %s of ConfigMap %s, which is not there", where, c.Name, e.Name, r.Key, r.Name)
				}
			}
			for kind, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
				if p == nil {
					continue
				}
				var port *intstr.IntOrString
				if p.HTTPGet != nil {
					port = &p.HTTPGet.Port
				} else if p.TCPSocket != nil {
					port = &p.TCPSocket.Port
				}
				if port != nil {
					if _, ok := portNumber(&corev1.PodSpec{Containers: []corev1.Container{c}}, *port); !ok {
						t.Errorf("%s/%s: %s probe port %s is not one of its ports", where, c.Name, kind, port.String())
					}
				}
			}
		}
	}
	for name, s := range m.services {
		ws := m.selected(s.Spec.Selector)
		if len(ws) != 1 {
			t.Errorf("Service %s: selector %v matches %d workloads, want 1", name, s.Spec.Selector, len(ws))
			continue
		}
		for _, p := range s.Spec.Ports {
			if _, ok := portNumber(&ws[0].pod.Spec, p.TargetPort); !ok {
				t.Errorf("Service %s: port %s targets %s, which %s %s does not expose", name, p.Name, p.TargetPort.String(), ws[0].kind, ws[0].name)
			}
		}
	}
	for name, np := range m.netpols {
		ws := m.selected(np.Spec.PodSelector.MatchLabels)
		if len(ws) == 0 {
			t.Errorf("NetworkPolicy %s selects no pods", name)
			continue
		}
		for _, rule := range np.Spec.Ingress {
			for _, from := range rule.From {
				if from.PodSelector != nil && len(m.selected(from.PodSelector.MatchLabels)) == 0 {
					t.Errorf("NetworkPolicy %s: a peer selector %v matches no pods", name, from.PodSelector.MatchLabels)
				}
			}
			for _, p := range rule.Ports {
				if p.Port == nil {
					continue
				}
				for _, w := range ws {
					if _, ok := portNumber(&w.pod.Spec, *p.Port); !ok {
						t.Errorf("NetworkPolicy %s: port %s is not exposed by %s", name, p.Port.String(), w.name)
					}
				}
			}
		}
	}
	for name, pdb := range m.pdbs {
		if len(m.selected(pdb.Spec.Selector.MatchLabels)) != 1 {
			t.Errorf("PodDisruptionBudget %s: selector %v does not match exactly one workload", name, pdb.Spec.Selector.MatchLabels)
		}
	}
}

func secretHas(s *corev1.Secret, key string) bool {
	if s == nil {
		return false
	}
	_, inData := s.Data[key]
	_, inString := s.StringData[key]
	return inData || inString
}

// mountedFile says which ConfigMap or Secret provides the file at path in c.
func mountedFile(t *testing.T, pod *corev1.PodSpec, c *corev1.Container, path string) (kind, name, key string) {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		rel, err := filepath.Rel(vm.MountPath, path)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != vm.Name {
				continue
			}
			switch {
			case v.ConfigMap != nil:
				return "ConfigMap", v.ConfigMap.Name, rel
			case v.Secret != nil:
				return "Secret", v.Secret.SecretName, rel
			}
		}
	}
	t.Errorf("container %s: %s is on no ConfigMap or Secret volume", c.Name, path)
	return "", "", ""
}

// checkFile checks that path in c is a file of the ConfigMap or Secret named prefix.
func (m *manifest) checkFile(t *testing.T, pod *corev1.PodSpec, c *corev1.Container, path, prefix string) {
	t.Helper()
	kind, name, key := mountedFile(t, pod, c, path)
	switch kind {
	case "ConfigMap":
		cm := m.configMaps[name]
		if !strings.HasPrefix(name, prefix) || cm == nil {
			t.Errorf("%s: %s comes from ConfigMap %s, want %s", c.Name, path, name, prefix)
		} else if _, ok := cm.Data[key]; !ok && key != "." {
			t.Errorf("%s: %s: ConfigMap %s has no key %s", c.Name, path, name, key)
		}
	case "Secret":
		if name != prefix || !secretHas(m.secrets[name], key) {
			t.Errorf("%s: %s: Secret %s (want %s) has no key %s", c.Name, path, name, prefix, key)
		}
	}
}

// flagsOf lists the flags a command of ours defines, from its source.
func flagsOf(t *testing.T, cmd string) map[string]bool {
	t.Helper()
	names, err := harness.Flags(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// parseArgs reads --name=value / --name value args, checking each name is a flag.
func parseArgs(t *testing.T, who string, args []string, known map[string]bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		name, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			t.Errorf("%s: argument %q is not a flag", who, args[i])
			continue
		}
		name, value, hasValue := strings.Cut(name, "=")
		if !known[name] {
			t.Errorf("%s: --%s is not a flag of the binary", who, name)
		}
		if !hasValue && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			value, i = args[i+1], i+1
		}
		out[name] = value
	}
	return out
}

func port(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Fatalf("address %q has no port", addr)
	}
	return int32(n)
}

func namedPort(t *testing.T, c *corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %s", c.Name, name)
	return 0
}

// checkClimesh checks climesh's own wiring: the xds-server's config, Envoy's
// bootstrap, the sidecar's flags and files, the CLI beside it.
func checkClimesh(t *testing.T, m *manifest) {
	xds := m.deployments["climesh-xds-server"]
	envoy := m.deployments["climesh-envoy"]
	fleet := m.statefulSets["climesh-copilot"]
	if xds == nil || envoy == nil || fleet == nil {
		t.Fatalf("want Deployments climesh-xds-server and climesh-envoy and StatefulSet climesh-copilot")
	}
	if *xds.Spec.Replicas < 2 {
		t.Errorf("xds-server replicas %d, want at least 2", *xds.Spec.Replicas)
	}

	// The xds-server reads a config that climesh's own loader accepts.
	xdsPod := &xds.Spec.Template.Spec
	xc := container(t, xdsPod, "xds-server")
	args := parseArgs(t, "xds-server", xc.Args, flagsOf(t, "xds-server"))
	m.checkFile(t, xdsPod, xc, args["config"], "climesh-config")
	_, cm := byPrefix(t, m.configMaps, "climesh-config")
	cfg, err := config.Load([]byte(cm.Data[filepath.Base(args["config"])]))
	if err != nil {
		t.Fatalf("the xds-server's config does not load: %v", err)
	}
	if p := port(t, cfg.Server.XDSAddress); p != namedPort(t, xc, "xds") {
		t.Errorf("server.xds_address port %d, container port xds %d", p, namedPort(t, xc, "xds"))
	}
	if p := port(t, cfg.Server.HTTPAddress); p != namedPort(t, xc, "http") {
		t.Errorf("server.http_address port %d, container port http %d", p, namedPort(t, xc, "http"))
	}
	if xc.ReadinessProbe == nil || xc.ReadinessProbe.HTTPGet == nil || xc.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("xds-server readiness is not /readyz: %+v", xc.ReadinessProbe)
	}
	xdsSvc := m.services["climesh-xds-server"]
	if xdsSvc == nil {
		t.Fatal("no Service climesh-xds-server")
	}
	var xdsSvcPort int32
	for _, p := range xdsSvc.Spec.Ports {
		if p.TargetPort.StrVal == "xds" {
			xdsSvcPort = p.Port
		}
	}
	xdsDNS := fmt.Sprintf("climesh-xds-server.%s.svc", m.namespace)
	if want := fmt.Sprintf("%s:%d", xdsDNS, xdsSvcPort); cfg.Policy.ExtAuthzAddress != want {
		t.Errorf("policy.ext_authz_address %q, want %q (Envoy reaches ext_authz through the Service)", cfg.Policy.ExtAuthzAddress, want)
	}
	m.checkFile(t, xdsPod, xc, cfg.Policy.Source, "climesh-policy")
	m.checkFile(t, xdsPod, xc, cfg.Policy.IdentityKeysFile, "climesh-identity")
	m.checkFile(t, xdsPod, xc, cfg.Identity.EdgeCredentialFile, "climesh-edge-credential")
	for _, p := range cfg.JWT.Providers {
		if p.LocalJWKSFile != "" {
			m.checkFile(t, xdsPod, xc, p.LocalJWKSFile, "climesh-jwks")
		}
	}

	// Envoy: a strict bootstrap that reaches the xds-server's Service over delta ADS.
	envoyPod := &envoy.Spec.Template.Spec
	ec := container(t, envoyPod, "envoy")
	var bootstrapPath, serviceCluster string
	for i, a := range ec.Args {
		if i+1 < len(ec.Args) && a == "-c" {
			bootstrapPath = ec.Args[i+1]
		}
		if i+1 < len(ec.Args) && a == "--service-cluster" {
			serviceCluster = ec.Args[i+1]
		}
	}
	m.checkFile(t, envoyPod, ec, bootstrapPath, "envoy-bootstrap")
	_, bcm := byPrefix(t, m.configMaps, "envoy-bootstrap")
	bj, err := yaml.YAMLToJSON([]byte(bcm.Data[filepath.Base(bootstrapPath)]))
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(bj, &b); err != nil {
		t.Fatalf("envoy bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("envoy bootstrap: %v", err)
	}
	if got := b.GetDynamicResources().GetAdsConfig().GetApiType().String(); got != "DELTA_GRPC" {
		t.Errorf("envoy ADS api_type %s, want DELTA_GRPC", got)
	}
	sa := endpoint(t, &b, "climesh-xds")
	if sa.GetAddress() != xdsDNS || int32(sa.GetPortValue()) != xdsSvcPort {
		t.Errorf("envoy reaches the xds-server at %s:%d, want %s:%d", sa.GetAddress(), sa.GetPortValue(), xdsDNS, xdsSvcPort)
	}
	checkEnvoyShutdown(t, m, envoyPod, &b)
	for _, l := range cfg.Listeners {
		if l.NodeGroup != serviceCluster {
			t.Errorf("listener %s is for node group %q; envoy runs as --service-cluster %q", l.Name, l.NodeGroup, serviceCluster)
		}
		if int32(l.Port) != namedPort(t, ec, "edge") {
			t.Errorf("listener %s port %d, envoy container port edge %d", l.Name, l.Port, namedPort(t, ec, "edge"))
		}
	}

	// The fleet: CLI as a native sidecar on loopback, climesh-sidecar beside it.
	pod := &fleet.Spec.Template.Spec
	cli := container(t, pod, "copilot")
	if !slices.ContainsFunc(pod.InitContainers, func(c corev1.Container) bool {
		return c.Name == "copilot" && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
	}) {
		t.Error("the CLI is not a native sidecar (an init container with restartPolicy Always): it would stop while its climesh-sidecar drains")
	}
	var cliHost, cliPort string
	cliArgs := append(append([]string{}, cli.Command...), cli.Args...)
	for i, a := range cliArgs {
		switch {
		case a == "--host" && i+1 < len(cliArgs):
			cliHost = cliArgs[i+1]
		case a == "--port" && i+1 < len(cliArgs):
			cliPort = cliArgs[i+1]
		}
	}
	if cliHost != "127.0.0.1" {
		t.Errorf("the CLI listens on %q; only its sidecar may reach it (127.0.0.1)", cliHost)
	}
	sc := container(t, pod, "climesh-sidecar")
	flags := parseArgs(t, "climesh-sidecar", sc.Args, flagsOf(t, "climesh-sidecar"))
	if flags["cli-address"] != "127.0.0.1:"+cliPort {
		t.Errorf("--cli-address %q, the CLI listens on 127.0.0.1:%s", flags["cli-address"], cliPort)
	}
	if port(t, flags["listen"]) != namedPort(t, sc, "tunnel") {
		t.Errorf("--listen %s, container port tunnel %d", flags["listen"], namedPort(t, sc, "tunnel"))
	}
	if !slices.ContainsFunc(cfg.Pools, func(p config.Pool) bool { return p.ConsulService == flags["pool"] }) {
		t.Errorf("--pool %q is no pool's consul_service in the xds-server's config", flags["pool"])
	}
	if port(t, flags["admin-listen"]) != namedPort(t, sc, "admin") {
		t.Errorf("--admin-listen %s, container port admin %d", flags["admin-listen"], namedPort(t, sc, "admin"))
	}
	checkSidecarProbes(t, sc, flags)
	for flag, source := range map[string]string{"policy": "climesh-policy", "identity-keys": "climesh-identity", "edge-credential-file": "climesh-edge-credential",
		"admin-credential-file": "climesh-sidecar-admin"} {
		if flags[flag] == "" {
			t.Errorf("climesh-sidecar has no --%s", flag)
			continue
		}
		m.checkFile(t, pod, sc, flags[flag], source)
	}
	for _, need := range []string{"consul", "advertise", "instance-id"} {
		if flags[need] == "" {
			t.Errorf("climesh-sidecar has no --%s", need)
		}
	}
	drain, err := time.ParseDuration(flags["drain-timeout"])
	if err != nil {
		t.Fatalf("--drain-timeout: %v", err)
	}
	if grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second; grace <= drain {
		t.Errorf("terminationGracePeriodSeconds %s does not cover --drain-timeout %s", grace, drain)
	}
	if cliTok, scTok := secretEnv(cli, "COPILOT_CONNECTION_TOKEN"), secretEnv(sc, "COPILOT_CONNECTION_TOKEN"); cliTok == "" || cliTok != scTok {
		t.Errorf("the CLI's token (%q) and the sidecar's (%q) must come from the same Secret key", cliTok, scTok)
	}
	checkConsul(t, cfg, flags, xc, sc)
	statsPort, statsPath := envoyStats(t, &b)
	checkScrapes(t, m, map[string]scrape{
		"climesh-copilot":    {port(t, flags["admin-listen"]), "/metrics"},
		"climesh-xds-server": {port(t, cfg.Server.HTTPAddress), "/metrics"},
		"climesh-envoy":      {statsPort, statsPath},
	})
	var home string
	for _, e := range cli.Env {
		if e.Name == "COPILOT_HOME" {
			home = e.Value
		}
	}
	if !slices.ContainsFunc(cli.VolumeMounts, func(v corev1.VolumeMount) bool { return v.MountPath == home && v.Name == "copilot-home" }) {
		t.Errorf("COPILOT_HOME %q is not the copilot-home volume", home)
	}

	// Only Envoy reaches the sidecars.
	np := m.netpols["climesh-copilot-from-envoy"]
	if np == nil || len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 ||
		!matches(np.Spec.Ingress[0].From[0].PodSelector.MatchLabels, envoy.Spec.Template.Labels) {
		t.Errorf("the CLI pods' NetworkPolicy does not admit Envoy only: %+v", np)
	}
	if pdb := m.pdbs["climesh-copilot"]; pdb == nil || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("the CLI fleet's PodDisruptionBudget is not maxUnavailable 1: %+v", pdb)
	}
}

// endpoint is the one address of the bootstrap's static cluster name.
func endpoint(t *testing.T, b *bootstrapv3.Bootstrap, name string) *corev3.SocketAddress {
	t.Helper()
	var c *clusterv3.Cluster
	for _, sc := range b.GetStaticResources().GetClusters() {
		if sc.GetName() == name {
			c = sc
		}
	}
	eps := c.GetLoadAssignment().GetEndpoints()
	if c == nil || len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
		t.Fatalf("envoy bootstrap: no static cluster %s with one endpoint", name)
	}
	return eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
}

// envoyStats checks the bootstrap's one static listener, Prometheus's way to
// Envoy's stats (Envoy Gateway's shape): its route config, inline, has one route,
// GET on the exact path /stats/prometheus, to a cluster whose one endpoint is the
// admin, which stays on loopback — no other admin path (/config_dump,
// /quitquitquit, /drain_listeners) is reachable through it. It returns the
// listener's port and the path.
func envoyStats(t *testing.T, b *bootstrapv3.Bootstrap) (int32, string) {
	t.Helper()
	listeners := b.GetStaticResources().GetListeners()
	if len(listeners) != 1 {
		t.Fatalf("envoy bootstrap: %d static listeners, want one: the stats listener", len(listeners))
	}
	l := listeners[0]
	admin := b.GetAdmin().GetAddress().GetSocketAddress()
	if len(l.GetFilterChains()) != 1 || len(l.GetFilterChains()[0].GetFilters()) != 1 {
		t.Fatalf("envoy stats listener %s: want one filter chain of one filter (the HTTP connection manager)", l.GetName())
	}
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatalf("envoy stats listener %s: %v", l.GetName(), err)
	}
	vhosts := hcm.GetRouteConfig().GetVirtualHosts()
	if len(vhosts) != 1 || len(vhosts[0].GetRoutes()) != 1 {
		t.Fatalf("envoy stats listener %s: want an inline route config of one virtual host with one route: %v", l.GetName(), hcm.GetRouteConfig())
	}
	r := vhosts[0].GetRoutes()[0]
	path := r.GetMatch().GetPath() // exact (a prefix would admit /stats/prometheusX and the like)
	if path != "/stats/prometheus" {
		t.Errorf("envoy stats listener %s: its route matches %v, want the exact path /stats/prometheus", l.GetName(), r.GetMatch())
	}
	if h := r.GetMatch().GetHeaders(); len(h) != 1 || h[0].GetName() != ":method" || h[0].GetStringMatch().GetExact() != "GET" {
		t.Errorf("envoy stats listener %s: its route is not for GET only: %v", l.GetName(), h)
	}
	to := endpoint(t, b, r.GetRoute().GetCluster())
	if to.GetAddress() != admin.GetAddress() || to.GetPortValue() != admin.GetPortValue() {
		t.Errorf("envoy stats listener %s routes to %s:%d, not the admin %s:%d", l.GetName(), to.GetAddress(), to.GetPortValue(), admin.GetAddress(), admin.GetPortValue())
	}
	if n := hcm.GetCommonHttpProtocolOptions().GetMaxRequestsPerConnection().GetValue(); n != 1 {
		t.Errorf("envoy stats listener %s: max_requests_per_connection %d, want 1: a scraper's kept-alive connection would hold the shutdown-manager's drain", l.GetName(), n)
	}
	return int32(l.GetAddress().GetSocketAddress().GetPortValue()), path
}

// scrape is what Prometheus asks a pod for: its prometheus.io/port and path.
type scrape struct {
	port int32
	path string
}

// monitoringNamespace selects the namespace that may scrape: the base's and the
// chart's default (metrics.from).
var monitoringNamespace = map[string]string{"kubernetes.io/metadata.name": "monitoring"}

// checkScrapes: every workload's pods carry the prometheus.io annotations, whose
// port is a container port of the pod and, with the path, what the binary there
// serves its metrics on (served, by workload); NetworkPolicies admit the
// monitoring namespace to exactly that port, and nobody else to it.
func checkScrapes(t *testing.T, m *manifest, served map[string]scrape) {
	t.Helper()
	for _, w := range m.workloads() {
		where := w.kind + " " + w.name
		a := w.pod.Annotations
		if a["prometheus.io/scrape"] != "true" {
			t.Errorf("%s: pods have no prometheus.io/scrape: \"true\" (%v)", where, a)
			continue
		}
		n, err := strconv.Atoi(a["prometheus.io/port"])
		got := scrape{int32(n), a["prometheus.io/path"]}
		if _, ok := portNumber(&w.pod.Spec, intstr.FromInt32(got.port)); err != nil || !ok {
			t.Errorf("%s: prometheus.io/port %q is no container port of its pods", where, a["prometheus.io/port"])
		}
		want, ok := served[w.name]
		if !ok {
			t.Errorf("%s: the test does not know where its metrics are; add it", where)
		} else if got != want {
			t.Errorf("%s: prometheus.io/port and path %d %s; its metrics are on %d %s", where, got.port, got.path, want.port, want.path)
		}
		admitted := map[int32]bool{}
		for name, np := range m.netpols {
			if !matches(np.Spec.PodSelector.MatchLabels, w.pod.Labels) {
				continue
			}
			for _, rule := range np.Spec.Ingress {
				monitoring := slices.ContainsFunc(rule.From, func(p networkingv1.NetworkPolicyPeer) bool {
					return p.NamespaceSelector != nil && maps.Equal(p.NamespaceSelector.MatchLabels, monitoringNamespace) && p.PodSelector == nil && p.IPBlock == nil
				})
				if monitoring && len(rule.Ports) == 0 {
					t.Errorf("NetworkPolicy %s admits the monitoring namespace to every port of %s", name, where)
				}
				for _, p := range rule.Ports {
					if p.Port == nil {
						t.Errorf("NetworkPolicy %s: a rule for every port of %s", name, where)
						continue
					}
					pn, _ := portNumber(&w.pod.Spec, *p.Port)
					switch {
					case monitoring && pn != got.port:
						t.Errorf("NetworkPolicy %s admits the monitoring namespace to port %s of %s, which serves no metrics", name, p.Port.String(), where)
					case monitoring:
						admitted[pn] = true
					case pn == got.port && len(rule.From) == 0:
						t.Errorf("NetworkPolicy %s admits everyone to %s's metrics port %s", name, where, p.Port.String())
					}
				}
			}
		}
		if !admitted[got.port] {
			t.Errorf("%s: no NetworkPolicy admits the monitoring namespace %v to its metrics port %d", where, monitoringNamespace, got.port)
		}
	}
}

// checkEnvoyShutdown checks Envoy's graceful termination: its preStop hook GETs
// /shutdown on the shutdown-manager beside it (--listen), which drains through
// Envoy's admin (--admin: the bootstrap's); the grace period covers the drain's
// --timeout, and Envoy's listeners stop accepting (--drain-time-s) within it; no
// NetworkPolicy admits anyone to the shutdown or admin port.
func checkEnvoyShutdown(t *testing.T, m *manifest, pod *corev1.PodSpec, b *bootstrapv3.Bootstrap) {
	t.Helper()
	ec := container(t, pod, "envoy")
	sm := container(t, pod, "shutdown-manager")
	if len(sm.Command) != 1 || sm.Command[0] != "/usr/local/bin/climesh-envoy-drain" {
		t.Errorf("shutdown-manager runs %q, want /usr/local/bin/climesh-envoy-drain", sm.Command)
	}
	cfg, err := envoydrain.Load(sm.Args)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatalf("shutdown-manager args %q: %v", sm.Args, err)
	}
	if cfg.Listen == "" {
		t.Fatalf("shutdown-manager has no --listen: it would drain once at start and exit")
	}
	listen := port(t, cfg.Listen)
	if namedPort(t, sm, "shutdown") != listen {
		t.Errorf("shutdown-manager --listen %s, container port shutdown %d", cfg.Listen, namedPort(t, sm, "shutdown"))
	}
	var hook *corev1.HTTPGetAction
	if ec.Lifecycle != nil && ec.Lifecycle.PreStop != nil {
		hook = ec.Lifecycle.PreStop.HTTPGet
	}
	if hook == nil {
		t.Fatalf("envoy has no preStop httpGet: it would stop with its connections open")
	}
	// The kubelet resolves a hook's named port among the hook's own container's.
	hookPort, ok := portNumber(&corev1.PodSpec{Containers: []corev1.Container{*ec}}, hook.Port)
	if hook.Port.Type == intstr.Int {
		hookPort, ok = hook.Port.IntVal, true
	}
	if !ok || hookPort != listen || hook.Path != "/shutdown" || hook.Host != "" {
		t.Errorf("envoy's preStop GETs %s:%s%s, the shutdown-manager serves /shutdown on the pod's port %d (--listen %s)", hook.Host, hook.Port.String(), hook.Path, listen, cfg.Listen)
	}
	admin := b.GetAdmin().GetAddress().GetSocketAddress()
	if want := "http://" + net.JoinHostPort(admin.GetAddress(), strconv.Itoa(int(admin.GetPortValue()))); strings.TrimSuffix(cfg.Admin, "/") != want {
		t.Errorf("shutdown-manager --admin %s, Envoy's admin (bootstrap) is %s", cfg.Admin, want)
	}
	if ip := net.ParseIP(admin.GetAddress()); ip == nil || !ip.IsLoopback() {
		t.Errorf("Envoy's admin listens on %s; keep it on the pod's loopback", admin.GetAddress())
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if grace < cfg.Timeout+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %s does not cover the shutdown-manager's --timeout %s and Envoy's exit (10s)", grace, cfg.Timeout)
	}
	var drainTime time.Duration
	var strategy string
	for i := 0; i+1 < len(ec.Args); i++ {
		switch ec.Args[i] {
		case "--drain-time-s":
			n, err := strconv.Atoi(ec.Args[i+1])
			if err != nil {
				t.Errorf("envoy --drain-time-s %q", ec.Args[i+1])
			}
			drainTime = time.Duration(n) * time.Second
		case "--drain-strategy":
			strategy = ec.Args[i+1]
		}
	}
	if drainTime <= 0 || drainTime > cfg.Timeout {
		t.Errorf("envoy --drain-time-s %s: want a positive time within the shutdown-manager's --timeout %s (the listeners keep accepting that long)", drainTime, cfg.Timeout)
	}
	if strategy != "immediate" && strategy != "gradual" {
		t.Errorf("envoy --drain-strategy %q, want immediate or gradual", strategy)
	}
	// Only the kubelet (node traffic, which no NetworkPolicy blocks) calls /shutdown.
	for name, np := range m.netpols {
		if !matches(np.Spec.PodSelector.MatchLabels, m.deployments["climesh-envoy"].Spec.Template.Labels) {
			continue
		}
		for _, rule := range np.Spec.Ingress {
			if len(rule.Ports) == 0 {
				t.Errorf("NetworkPolicy %s admits every port of Envoy's pods, the shutdown-manager's too", name)
			}
			for _, p := range rule.Ports {
				if p.Port == nil {
					t.Errorf("NetworkPolicy %s admits every port of Envoy's pods, the shutdown-manager's too", name)
					continue
				}
				if n, _ := portNumber(pod, *p.Port); n == listen || n == int32(admin.GetPortValue()) {
					t.Errorf("NetworkPolicy %s admits port %s of Envoy's pods: the shutdown-manager's or the admin", name, p.Port.String())
				}
			}
		}
	}
}

// checkSidecarProbes: readiness asks the admin listener's /readyz (the CLI's ping
// and the drain), liveness its /healthz (the process serves) — never /readyz,
// which fails for a hung CLI and for the whole drain: a liveness restart there
// would cut the drain short. Both on the admin port (the tunnel port serves
// tunnels only), with thresholds that ride out one slow answer.
func checkSidecarProbes(t *testing.T, sc *corev1.Container, flags map[string]string) {
	t.Helper()
	for _, p := range []struct {
		kind, path string
		probe      *corev1.Probe
	}{{"readiness", "/readyz", sc.ReadinessProbe}, {"liveness", "/healthz", sc.LivenessProbe}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("climesh-sidecar has no %s httpGet probe (want %s on the admin port)", p.kind, p.path)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path {
			t.Errorf("climesh-sidecar %s probe asks %s, want %s", p.kind, g.Path, p.path)
		}
		if n, ok := portNumber(&corev1.PodSpec{Containers: []corev1.Container{*sc}}, g.Port); !ok || n != port(t, flags["admin-listen"]) {
			t.Errorf("climesh-sidecar %s probe port %s is not the admin listener's (--admin-listen %s)", p.kind, g.Port.String(), flags["admin-listen"])
		}
		if p.probe.FailureThreshold < 2 || p.probe.TimeoutSeconds < 2 {
			t.Errorf("climesh-sidecar %s probe: failureThreshold %d, timeoutSeconds %d; want at least 2 of each (one slow answer is no verdict)", p.kind, p.probe.FailureThreshold, p.probe.TimeoutSeconds)
		}
	}
}

// secretEnv names the Secret key ("name/key") the environment variable env of c
// comes from, or "".
func secretEnv(c *corev1.Container, env string) string {
	for _, e := range c.Env {
		if e.Name == env && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			return e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
		}
	}
	return ""
}

// checkConsul checks Consul as consul-k8s runs it by default (servers only, ACLs
// on): the sidecar registers through the servers' catalog at the address the
// xds-server reads, and each binary has a token of its own least-privilege policy,
// which covers every pool's Consul service.
func checkConsul(t *testing.T, cfg *config.Config, flags map[string]string, xds, sidecar *corev1.Container) {
	t.Helper()
	if flags["consul-registration"] != "catalog" {
		t.Errorf("climesh-sidecar --consul-registration %q, want catalog: consul-k8s runs no client agent to register with", flags["consul-registration"])
	}
	if flags["consul"] != cfg.Consul.Address {
		t.Errorf("climesh-sidecar --consul %q, the xds-server's consul.address %q: both want the servers' Service", flags["consul"], cfg.Consul.Address)
	}
	xdsTok, scTok := secretEnv(xds, "CONSUL_HTTP_TOKEN"), secretEnv(sidecar, "CONSUL_HTTP_TOKEN")
	if xdsTok == "" || scTok == "" || xdsTok == scTok {
		t.Errorf("CONSUL_HTTP_TOKEN: the xds-server's (%q) and the sidecar's (%q) must each come from a Secret key of its own (one least-privilege policy each)", xdsTok, scTok)
	}
	for file, want := range map[string][]string{"climesh-sidecar.hcl": {"write"}, "climesh-xds-server.hcl": {"read", "write"}} {
		rules, err := os.ReadFile(filepath.Join("..", "consul", "acl", file))
		if err != nil {
			t.Fatal(err)
		}
		prefixes := servicePrefixes(string(rules))
		for _, p := range cfg.Pools {
			if p.ConsulService == "" {
				continue
			}
			if !slices.ContainsFunc(slices.Collect(maps.Keys(prefixes)), func(prefix string) bool {
				return strings.HasPrefix(p.ConsulService, prefix) && slices.Contains(want, prefixes[prefix])
			}) {
				t.Errorf("deploy/consul/acl/%s: no service_prefix gives %v on pool %s's Consul service %q (rules: %v)", file, want, p.Name, p.ConsulService, prefixes)
			}
		}
	}
}

var servicePrefixRule = regexp.MustCompile(`(?s)service_prefix\s+"([^"]*)"\s*\{\s*policy\s*=\s*"(\w+)"`)

// servicePrefixes reads the service_prefix rules of an ACL policy: prefix → policy.
func servicePrefixes(hcl string) map[string]string {
	out := map[string]string{}
	for _, m := range servicePrefixRule.FindAllStringSubmatch(hcl, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// homeVolume is how the fleet's pods get COPILOT_HOME.
func homeVolume(t *testing.T, m *manifest) (claimTemplate bool, claim *corev1.PersistentVolumeClaim) {
	s := m.statefulSets["climesh-copilot"]
	for _, c := range s.Spec.VolumeClaimTemplates {
		if c.Name == "copilot-home" {
			claimTemplate = true
		}
	}
	for _, v := range s.Spec.Template.Spec.Volumes {
		if v.Name == "copilot-home" && v.PersistentVolumeClaim != nil {
			claim = m.claims[v.PersistentVolumeClaim.ClaimName]
		}
	}
	return claimTemplate, claim
}

func TestManifests(t *testing.T) {
	for _, overlay := range []string{"base", "overlays/sticky-only", "overlays/shared-storage"} {
		t.Run(overlay, func(t *testing.T) {
			m := render(t, overlay)
			checkWiring(t, m)
			checkClimesh(t, m)
			// The policy is updated in place (hot reload), not renamed by a
			// content hash (which would roll every pod on each edit).
			if _, ok := m.configMaps["climesh-policy"]; !ok {
				t.Errorf("no ConfigMap named exactly climesh-policy (configmaps: %v)", slices.Sorted(maps.Keys(m.configMaps)))
			}
			template, claim := homeVolume(t, m)
			switch overlay {
			case "overlays/shared-storage":
				if template || claim == nil || !slices.Contains(claim.Spec.AccessModes, corev1.ReadWriteMany) {
					t.Errorf("shared storage: COPILOT_HOME must be one ReadWriteMany claim (template %v, claim %+v)", template, claim)
				}
			default:
				if !template || claim != nil {
					t.Errorf("%s: COPILOT_HOME must be a per-pod claim template (template %v, claim %v)", overlay, template, claim)
				}
			}
		})
	}
}

// TestPolicyCopy: the base and the Helm chart ship a copy of policies/rego
// (kustomize and Helm read files only below their directory); the copies must not
// drift.
func TestPolicyCopy(t *testing.T) {
	for _, dir := range []string{filepath.Join("base", "policy"), filepath.Join(chartDir, "files", "policy")} {
		t.Run(dir, func(t *testing.T) { checkPolicyCopy(t, dir) })
	}
}

func checkPolicyCopy(t *testing.T, dir string) {
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no policy copy in %s (%v)", dir, err)
	}
	for _, f := range files {
		copyBytes, _ := os.ReadFile(f)
		orig, err := os.ReadFile(filepath.Join("..", "..", "policies", "rego", filepath.Base(f)))
		if err != nil {
			t.Fatalf("%s has no original in policies/rego: %v", f, err)
		}
		if !bytes.Equal(copyBytes, orig) {
			t.Errorf("%s differs from policies/rego/%s: copy it again", f, filepath.Base(f))
		}
	}
	shipped, _ := filepath.Glob(filepath.Join("..", "..", "policies", "rego", "*"))
	for _, f := range shipped {
		if strings.HasSuffix(f, "_test.rego") {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, filepath.Base(f))); err != nil {
			t.Errorf("policies/rego/%s is not in %s", filepath.Base(f), dir)
		}
	}
}
