package kubernetes_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/climesh/climesh/test/atomicwriter"
	"github.com/climesh/climesh/test/harness"
)

// What this file does of a kubelet's work, for pods of the rendered manifests
// run as local processes in one network namespace (the test's):
//   - every pod's IP, and its node's, is 127.0.0.1; Service names resolve there
//     through the pod's /etc/hosts; so one replica per workload (their ports
//     would collide);
//   - ConfigMap and Secret volumes are laid out by test/atomicwriter, one copy per
//     pod, and updated the way the kubelet updates them; emptyDir and claims are
//     plain directories (a claim shared by the pods that name it);
//   - env: values with $(VAR) references, fieldRefs, Secret and ConfigMap keys;
//     command and args expanded as the kubelet does;
//   - images are the table below: files put at their paths, an entrypoint;
//   - native sidecars (init containers with restartPolicy Always) start first;
//   - readiness and liveness are the containers' own httpGet/tcpSocket probes
//     (a liveness failure fails the test rather than restarting the container);
//   - a pod stops with each main container's preStop hook (httpGet) before its
//     SIGTERM, then its native sidecars;
//   - securityContext: runAsUser/runAsGroup (else the image's USER),
//     runAsNonRoot, fsGroup (claims and emptyDirs group-owned and writable, the
//     group added to every process), readOnlyRootFilesystem (a container that
//     may write its root gets a private home and /tmp instead).
// Left out: capabilities and seccomp, resources, restarts (a container that
// exits or fails its liveness probe fails the test), service-link env vars.

// podIP is every pod's (and node's) address.
const podIP = "127.0.0.1"

// image is what a container image provides here: files at their paths in the
// container, and the entrypoint (the Dockerfile's ENTRYPOINT, or the upstream
// image's).
type image struct {
	files      map[string]string // path in the container -> file on this machine
	entrypoint []string
	uid, gid   int    // the image's USER
	home       string // that user's home
}

// images maps each image repository the manifests name (after kustomize's
// images: transformer) to local binaries: climesh's built from this checkout,
// Envoy's and the CLI's from .tools.
func images() (map[string]image, error) {
	// distroless/static:nonroot: USER nonroot (65532).
	climesh := image{files: map[string]string{}, entrypoint: []string{"/usr/local/bin/xds-server"}, uid: 65532, gid: 65532, home: "/home/nonroot"}
	for _, name := range []string{"xds-server", "climesh-sidecar", "climesh-connect", "climesh-envoy-drain"} {
		bin, err := harness.Binary(name)
		if err != nil {
			return nil, err
		}
		climesh.files["/usr/local/bin/"+name] = bin
	}
	tool := func(name string) (string, error) {
		p, err := harness.Tool(name)
		if err != nil {
			return "", err
		}
		return filepath.EvalSymlinks(p)
	}
	copilot, err := tool("copilot")
	if err != nil {
		return nil, err
	}
	envoy, err := tool("envoy")
	if err != nil {
		return nil, err
	}
	return map[string]image{
		"ghcr.io/climesh/climesh": climesh,
		// The Dockerfile's copilot-cli stage: tini, then the CLI's native binary.
		// tini is left out: the process runner here delivers SIGTERM itself.
		// USER node (1000).
		"ghcr.io/climesh/copilot-cli": {files: map[string]string{"/usr/local/bin/copilot-cli": copilot}, entrypoint: []string{"/usr/local/bin/copilot-cli"},
			uid: 1000, gid: 1000, home: "/home/node"},
		// envoyproxy/envoy's entrypoint runs `envoy "$@"` when the first arg is a
		// flag; the image's user is root (the entrypoint drops to envoy, 101,
		// unless the pod already runs as another user).
		"envoyproxy/envoy": {files: map[string]string{"/usr/local/bin/envoy": envoy}, entrypoint: []string{"/usr/local/bin/envoy"}, home: "/home/envoy"},
	}, nil
}

// imagePath is a container's PATH (the images' own: distroless and Debian).
const imagePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// cluster is the test's stand-in for the API server and the kubelets.
type cluster struct {
	dir        string
	m          *manifest
	images     map[string]image
	secrets    map[string]map[string][]byte // as the operator filled them in
	hosts      []string                     // names that resolve to podIP in every pod
	pods       []*pod
	volumeDirs map[string][]string // ConfigMap or Secret name -> every pod volume projecting it
}

// pod is one running replica.
type pod struct {
	name       string
	spec       *corev1.PodSpec
	dir        string
	containers []*runningContainer
}

type runningContainer struct {
	pod  *pod
	spec corev1.Container
	uid  int // the user it runs as
	proc *harness.Proc
}

// startPod lays out name's volumes and starts its containers: native sidecars
// first, then the rest.
func (c *cluster) startPod(name string, spec *corev1.PodSpec, claimTemplates []string) (*pod, error) {
	p := &pod{name: name, spec: spec, dir: filepath.Join(c.dir, "pods", name)}
	c.pods = append(c.pods, p)
	volumes := map[string]string{}
	for _, v := range spec.Volumes {
		dir, err := c.volume(p, v)
		if err != nil {
			return p, fmt.Errorf("pod %s: volume %s: %w", name, v.Name, err)
		}
		volumes[v.Name] = dir
	}
	for _, t := range claimTemplates { // a StatefulSet's: <template>-<pod>
		volumes[t] = filepath.Join(c.dir, "claims", t+"-"+name)
		if err := os.MkdirAll(volumes[t], 0o755); err != nil {
			return p, err
		}
	}
	// fsGroup: the kubelet gives claims and emptyDirs to the group, setgid.
	if sc := spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		for _, v := range spec.Volumes {
			if v.PersistentVolumeClaim != nil || v.EmptyDir != nil {
				if err := shareWithGroup(volumes[v.Name], int(*sc.FSGroup)); err != nil {
					return p, err
				}
			}
		}
		for _, t := range claimTemplates {
			if err := shareWithGroup(volumes[t], int(*sc.FSGroup)); err != nil {
				return p, err
			}
		}
	}
	hosts := filepath.Join(p.dir, "hosts")
	lines := "127.0.0.1\tlocalhost\n" + podIP + "\t" + name + "\n" + podIP + "\t" + strings.Join(c.hosts, " ") + "\n"
	if err := os.WriteFile(hosts, []byte(lines), 0o644); err != nil {
		return p, err
	}
	var order []corev1.Container
	for _, ic := range spec.InitContainers {
		if ic.RestartPolicy == nil || *ic.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			return p, fmt.Errorf("pod %s: init container %s is not a native sidecar; running it to completion is not done here", name, ic.Name)
		}
		order = append(order, ic)
	}
	order = append(order, spec.Containers...)
	for _, ctr := range order {
		rc, err := c.startContainer(p, ctr, volumes, hosts)
		if err != nil {
			return p, fmt.Errorf("pod %s: container %s: %w", name, ctr.Name, err)
		}
		p.containers = append(p.containers, rc)
	}
	return p, nil
}

// volume makes the directory behind one pod volume.
func (c *cluster) volume(p *pod, v corev1.Volume) (string, error) {
	dir := filepath.Join(p.dir, "volumes", v.Name)
	switch {
	case v.ConfigMap != nil:
		cm := c.m.configMaps[v.ConfigMap.Name]
		if cm == nil {
			return "", fmt.Errorf("no ConfigMap %s", v.ConfigMap.Name)
		}
		data := map[string][]byte{}
		for k, s := range cm.Data {
			data[k] = []byte(s)
		}
		maps.Copy(data, cm.BinaryData)
		return dir, c.project(dir, v.ConfigMap.Name, data, v.ConfigMap.Items, v.ConfigMap.DefaultMode)
	case v.Secret != nil:
		data, ok := c.secrets[v.Secret.SecretName]
		if !ok {
			return "", fmt.Errorf("no Secret %s", v.Secret.SecretName)
		}
		return dir, c.project(dir, v.Secret.SecretName, data, v.Secret.Items, v.Secret.DefaultMode)
	case v.EmptyDir != nil:
		return dir, os.MkdirAll(dir, 0o777)
	case v.PersistentVolumeClaim != nil:
		dir = filepath.Join(c.dir, "claims", v.PersistentVolumeClaim.ClaimName)
		return dir, os.MkdirAll(dir, 0o755)
	}
	return "", fmt.Errorf("volume type of %+v is not done here", v.VolumeSource)
}

// project lays out (or updates) a ConfigMap or Secret volume as the kubelet does.
func (c *cluster) project(dir, source string, data map[string][]byte, items []corev1.KeyToPath, defaultMode *int32) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	mode := os.FileMode(0o644)
	if defaultMode != nil {
		mode = os.FileMode(*defaultMode)
	}
	payload := map[string]atomicwriter.File{}
	if len(items) == 0 {
		for k, b := range data {
			payload[k] = atomicwriter.File{Data: b, Mode: mode}
		}
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("%s has no key %s", source, it.Key)
		}
		m := mode
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		payload[it.Path] = atomicwriter.File{Data: b, Mode: m}
	}
	if _, err := atomicwriter.Write(dir, payload); err != nil {
		return err
	}
	if !slices.Contains(c.volumeDirs[source], dir) {
		c.volumeDirs[source] = append(c.volumeDirs[source], dir)
	}
	return nil
}

// updateConfigMap changes a ConfigMap's data and projects it into every pod
// volume that mounts it, as each pod's kubelet does after its sync period.
func (c *cluster) updateConfigMap(name string, data map[string]string) error {
	cm := c.m.configMaps[name]
	if cm == nil {
		return fmt.Errorf("no ConfigMap %s", name)
	}
	cm.Data = data
	for _, dir := range c.volumeDirs[name] {
		payload := map[string]atomicwriter.File{}
		for k, s := range data {
			payload[k] = atomicwriter.File{Data: []byte(s), Mode: 0o644}
		}
		if _, err := atomicwriter.Write(dir, payload); err != nil {
			return err
		}
	}
	if len(c.volumeDirs[name]) == 0 {
		return fmt.Errorf("no pod mounts ConfigMap %s", name)
	}
	return nil
}

// env resolves a container's environment in order, as the kubelet does.
func (c *cluster) env(p *pod, ctr corev1.Container) ([]string, map[string]string, error) {
	if len(ctr.EnvFrom) > 0 {
		return nil, nil, fmt.Errorf("envFrom is not done here")
	}
	vars := map[string]string{}
	var out []string
	for _, e := range ctr.Env {
		value := expand(e.Value, vars)
		if f := e.ValueFrom; f != nil {
			switch {
			case f.FieldRef != nil:
				switch f.FieldRef.FieldPath {
				case "metadata.name":
					value = p.name
				case "metadata.namespace":
					value = c.m.namespace
				case "status.podIP", "status.hostIP":
					value = podIP
				case "spec.nodeName":
					value = "node-1"
				default:
					return nil, nil, fmt.Errorf("env %s: fieldRef %s is not done here", e.Name, f.FieldRef.FieldPath)
				}
			case f.SecretKeyRef != nil:
				b, ok := c.secrets[f.SecretKeyRef.Name][f.SecretKeyRef.Key]
				if !ok {
					return nil, nil, fmt.Errorf("env %s: Secret %s has no key %s", e.Name, f.SecretKeyRef.Name, f.SecretKeyRef.Key)
				}
				value = string(b)
			case f.ConfigMapKeyRef != nil:
				cm := c.m.configMaps[f.ConfigMapKeyRef.Name]
				if cm == nil {
					return nil, nil, fmt.Errorf("env %s: no ConfigMap %s", e.Name, f.ConfigMapKeyRef.Name)
				}
				value = cm.Data[f.ConfigMapKeyRef.Key]
			default:
				return nil, nil, fmt.Errorf("env %s: this valueFrom is not done here", e.Name)
			}
		}
		vars[e.Name] = value
		out = append(out, e.Name+"="+value)
	}
	return out, vars, nil
}

// expand replaces $(VAR) with a defined variable's value, $$ with $, and leaves
// references to undefined variables as they are (the kubelet's rules).
func expand(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func (c *cluster) startContainer(p *pod, ctr corev1.Container, volumes map[string]string, hosts string) (*runningContainer, error) {
	repo, _, _ := strings.Cut(ctr.Image, ":")
	img, ok := c.images[repo]
	if !ok {
		return nil, fmt.Errorf("image %s has no local stand-in (see images())", ctr.Image)
	}
	env, vars, err := c.env(p, ctr)
	if err != nil {
		return nil, err
	}
	argv := slices.Clone(img.entrypoint)
	if len(ctr.Command) > 0 {
		argv = nil
		for _, a := range ctr.Command {
			argv = append(argv, expand(a, vars))
		}
	}
	for _, a := range ctr.Args {
		argv = append(argv, expand(a, vars))
	}
	// The runtime's own: HOSTNAME, PATH, HOME.
	env = append([]string{imagePath, "HOSTNAME=" + p.name, "HOME=" + img.home}, env...)
	spec := containerSpec{Scratch: filepath.Join(p.dir, "scratch-"+ctr.Name), Argv: argv, Env: env, Dir: "/"}
	if err := securityContext(&spec, p.spec.SecurityContext, ctr.SecurityContext, img); err != nil {
		return nil, err
	}

	if ctr.WorkingDir != "" {
		spec.Dir = ctr.WorkingDir
	}
	if err := os.MkdirAll(spec.Scratch, 0o700); err != nil {
		return nil, err
	}
	for _, path := range slices.Sorted(maps.Keys(img.files)) {
		spec.Mounts = append(spec.Mounts, mount{Source: img.files[path], Target: path, ReadOnly: true})
	}
	for _, vm := range ctr.VolumeMounts {
		src, ok := volumes[vm.Name]
		if !ok {
			return nil, fmt.Errorf("mounts %s, which is no volume", vm.Name)
		}
		if vm.SubPath != "" || vm.SubPathExpr != "" {
			return nil, fmt.Errorf("volume mount %s: subPath is not done here", vm.Name)
		}
		spec.Mounts = append(spec.Mounts, mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	spec.Mounts = append(spec.Mounts, mount{Source: hosts, Target: "/etc/hosts", ReadOnly: true})
	if !spec.ReadOnlyRoot { // what it may write of its writable layer; last, as the sources above may be in /tmp
		spec.Mounts = append(spec.Mounts, mount{Target: img.home}, mount{Target: "/tmp"})
	}
	cmd, err := containerCommand(spec)
	if err != nil {
		return nil, err
	}
	proc, err := harness.StartCmd(c.dir, p.name+"_"+ctr.Name, cmd)
	if err != nil {
		return nil, err
	}
	return &runningContainer{pod: p, spec: ctr, uid: spec.UID, proc: proc}, nil
}

// securityContext applies the pod's and the container's security contexts
// (the container's wins) to spec.
func securityContext(spec *containerSpec, pod *corev1.PodSecurityContext, ctr *corev1.SecurityContext, img image) error {
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	if ctr == nil {
		ctr = &corev1.SecurityContext{}
	}
	pick := func(c, p *int64, image int) int {
		switch {
		case c != nil:
			return int(*c)
		case p != nil:
			return int(*p)
		}
		return image
	}
	spec.UID = pick(ctr.RunAsUser, pod.RunAsUser, img.uid)
	spec.GID = pick(ctr.RunAsGroup, pod.RunAsGroup, img.gid)
	nonRoot := ctr.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = pod.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot && spec.UID == 0 {
		return fmt.Errorf("runAsNonRoot, but it would run as root (set runAsUser, or an image USER)")
	}
	if pod.FSGroup != nil {
		spec.Groups = append(spec.Groups, int(*pod.FSGroup))
	}
	for _, g := range pod.SupplementalGroups {
		spec.Groups = append(spec.Groups, int(g))
	}
	spec.ReadOnlyRoot = ctr.ReadOnlyRootFilesystem != nil && *ctr.ReadOnlyRootFilesystem
	return nil
}

// shareWithGroup gives dir to gid, group-writable and setgid, as the kubelet
// does for a pod's fsGroup.
func shareWithGroup(dir string, gid int) error {
	if err := os.Chown(dir, -1, gid); err != nil {
		return err
	}
	return os.Chmod(dir, 0o2775)
}

// runsAs checks that the container's process has its securityContext's user.
func (rc *runningContainer) runsAs() error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", rc.proc.Pid()))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(rest); len(f) > 0 && f[0] == strconv.Itoa(rc.uid) {
				return nil
			}
			return fmt.Errorf("%s/%s runs as %q, want UID %d", rc.pod.name, rc.spec.Name, strings.TrimSpace(rest), rc.uid)
		}
	}
	return fmt.Errorf("%s/%s: no Uid in /proc status", rc.pod.name, rc.spec.Name)
}

// ready checks a container's readiness probe once, as the kubelet would.
func (rc *runningContainer) ready(ctx context.Context) error {
	return rc.probe(ctx, "readiness", rc.spec.ReadinessProbe)
}

// alive checks a container's liveness probe once, as the kubelet would (which
// restarts the container when it keeps failing; here that fails the test).
func (rc *runningContainer) alive(ctx context.Context) error {
	return rc.probe(ctx, "liveness", rc.spec.LivenessProbe)
}

// probe runs one probe of the container's once: its httpGet or tcpSocket.
func (rc *runningContainer) probe(ctx context.Context, kind string, probe *corev1.Probe) error {
	if rc.proc.Exited() {
		return fmt.Errorf("%s/%s exited:\n%s", rc.pod.name, rc.spec.Name, rc.proc.Tail(30))
	}
	if probe == nil {
		return nil // running is ready, and alive
	}
	resolve := rc.port
	switch {
	case probe.HTTPGet != nil:
		port, err := resolve(probe.HTTPGet.Port.StrVal, probe.HTTPGet.Port.IntVal)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		url := fmt.Sprintf("http://%s%s", net.JoinHostPort(podIP, strconv.Itoa(int(port))), probe.HTTPGet.Path)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("%s/%s: %s %s: %w", rc.pod.name, rc.spec.Name, kind, url, err)
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("%s/%s: %s %s: %d", rc.pod.name, rc.spec.Name, kind, url, resp.StatusCode)
		}
		return nil
	case probe.TCPSocket != nil:
		port, err := resolve(probe.TCPSocket.Port.StrVal, probe.TCPSocket.Port.IntVal)
		if err != nil {
			return err
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(podIP, strconv.Itoa(int(port))), 2*time.Second)
		if err != nil {
			return fmt.Errorf("%s/%s: %s tcp %d: %w", rc.pod.name, rc.spec.Name, kind, port, err)
		}
		return conn.Close()
	}
	return fmt.Errorf("%s/%s: this %s probe kind is not done here", rc.pod.name, rc.spec.Name, kind)
}

// port resolves a probe's or hook's port as the kubelet does: a number, or the
// name of one of the container's own ports.
func (rc *runningContainer) port(name string, num int32) (int32, error) {
	if name == "" {
		return num, nil
	}
	for _, cp := range rc.spec.Ports {
		if cp.Name == name {
			return cp.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("%s/%s: port %s is not a port of the container", rc.pod.name, rc.spec.Name, name)
}

// preStop runs the container's preStop hook once, as the kubelet does before it
// sends SIGTERM: an httpGet to the pod's IP (or the hook's host). It returns
// what the hook answered.
func (rc *runningContainer) preStop(ctx context.Context) (string, error) {
	if rc.spec.Lifecycle == nil || rc.spec.Lifecycle.PreStop == nil {
		return "", nil
	}
	g := rc.spec.Lifecycle.PreStop.HTTPGet
	if g == nil {
		return "", fmt.Errorf("%s/%s: this preStop hook kind is not done here", rc.pod.name, rc.spec.Name)
	}
	port, err := rc.port(g.Port.StrVal, g.Port.IntVal)
	if err != nil {
		return "", err
	}
	host := g.Host
	if host == "" {
		host = podIP
	}
	url := fmt.Sprintf("http://%s%s", net.JoinHostPort(host, strconv.Itoa(int(port))), g.Path)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s/%s: preStop %s: %w", rc.pod.name, rc.spec.Name, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return string(body), fmt.Errorf("%s/%s: preStop %s: %d %s", rc.pod.name, rc.spec.Name, url, resp.StatusCode, body)
	}
	return string(body), nil
}

// stop ends a pod as the kubelet does: every main container at once, each
// given SIGTERM once its preStop hook has answered (the hooks capped at 15s
// here), then the native sidecars in reverse order, each SIGTERM with the pod's
// grace period (capped for the test).
func (p *pod) stop() {
	var wg sync.WaitGroup
	var sidecars []*runningContainer
	for _, rc := range p.containers {
		if rp := rc.spec.RestartPolicy; rp != nil && *rp == corev1.ContainerRestartPolicyAlways {
			sidecars = append(sidecars, rc)
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			rc.preStop(ctx) // a failed hook is an event; the container stops all the same
			rc.proc.Stop(10 * time.Second)
		})
	}
	wg.Wait()
	for i := len(sidecars) - 1; i >= 0; i-- {
		sidecars[i].proc.Stop(10 * time.Second)
	}
}

// container is the running container name of the pod whose name starts with
// prefix.
func (c *cluster) container(prefix, name string) (*runningContainer, error) {
	for _, p := range c.pods {
		if !strings.HasPrefix(p.name, prefix) {
			continue
		}
		for _, rc := range p.containers {
			if rc.spec.Name == name {
				return rc, nil
			}
		}
	}
	return nil, fmt.Errorf("no container %s in a pod %s*", name, prefix)
}
