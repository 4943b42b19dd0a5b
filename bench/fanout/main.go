// Command fanout measures how one change reaches many Envoys: the time from a
// change to each simulated Envoy's ACK of the new endpoints, the bytes they
// receive, and the xds-server's CPU and peak memory meanwhile (issue 16).
//
//	go run ./bench/fanout [-clients 100,500,1000] [-protocols sotw,delta] [-endpoints 10000] [-changes 5]
//
// For each protocol and client count it starts the real xds-server binary on a
// config of one listener and one pool of -endpoints static endpoints, and a load
// generator in a process of its own (this program re-executed as `fanout client`,
// package adsim) holding one ADS stream per simulated Envoy. Once every client has
// the whole configuration, each change flips one endpoint's health in the config
// file and sends SIGHUP (unhealthy, then healthy again, alternately); a health flip
// changes the endpoints and, through the ring size, the cluster. A change's
// samples are, per client, the time from just before the config is written to
// the moment the client sent its ACK of the endpoint version the server then
// published (read from the server's "published" log line). Clients that have not
// ACKed it by -change-timeout are counted, not waited for.
//
// Per change it prints: clients that ACKed, the time to publish, p50 / p99 / max
// over clients, the bytes all clients read (gRPC framing included), the
// xds-server's CPU seconds (utime+stime from /proc/<pid>/stat, from the change
// to the last ACK), its peak RSS during the change (VmHWM, reset through
// /proc/<pid>/clear_refs before each change), the load generator's CPU seconds
// (it shares the machine's cores), the clients' reconnects, and how many clients
// the server itself records as ACKed on its newest version of every type
// (/debug/xds, read after the change's window).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/xds"
)

type options struct {
	endpoints, changes, batch  int
	changeTimeout, syncTimeout time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "client" {
		if err := runClients(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "fanout client:", err)
			os.Exit(1)
		}
		return
	}
	clients := flag.String("clients", "100,500,1000", "comma-separated numbers of simulated Envoys")
	protocols := flag.String("protocols", "sotw,delta", "comma-separated: sotw, delta")
	var o options
	flag.IntVar(&o.endpoints, "endpoints", 10000, "static endpoints in the one pool")
	flag.IntVar(&o.changes, "changes", 5, "health flips per run (one at a time)")
	flag.IntVar(&o.batch, "batch", 100, "clients connect this many at a time, each batch once the one before has synced")
	flag.DurationVar(&o.changeTimeout, "change-timeout", 2*time.Minute, "stop waiting for a change's ACKs after this long")
	flag.DurationVar(&o.syncTimeout, "sync-timeout", 5*time.Minute, "stop waiting for the initial sync after this long")
	timeout := flag.Duration("timeout", 60*time.Minute, "give up after this long in all")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	fmt.Print(stats.Provenance())
	fmt.Printf("# fanout: one health flip -> every simulated Envoy's ACK of the new endpoints (%d endpoints, GOMAXPROCS=%d, %d CPUs)\n",
		o.endpoints, runtime.GOMAXPROCS(0), runtime.NumCPU())
	failed := false
	for _, proto := range strings.Split(*protocols, ",") {
		proto = strings.TrimSpace(proto)
		if proto != "sotw" && proto != "delta" {
			fmt.Fprintf(os.Stderr, "fanout: -protocols: %q is neither sotw nor delta\n", proto)
			os.Exit(2)
		}
		for _, s := range strings.Split(*clients, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "fanout: -clients: %q is not a positive number\n", s)
				os.Exit(2)
			}
			if ctx.Err() != nil {
				fmt.Printf("\n## %s, %d clients: not run, -timeout reached\n", proto, n)
				failed = true
				continue
			}
			if err := run(ctx, o, proto, n); err != nil {
				fmt.Printf("\n## %s, %d clients: stopped: %v\n", proto, n, err)
				failed = true
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}

// run measures one protocol at one client count on a fresh xds-server.
func run(ctx context.Context, o options, proto string, n int) error {
	dir, err := os.MkdirTemp("", "climesh-fanout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lport, err := harness.FreePort()
	if err != nil {
		return err
	}
	unhealthy := -1
	x, err := harness.StartXDSServer(ctx, dir, fleetConfig(lport, o.endpoints, unhealthy))
	if err != nil {
		return err
	}
	defer x.Close()
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = x.WaitReady(rctx)
	cancel()
	if err != nil {
		return err
	}
	sim, err := startSim(dir, x.XDSAddr, n, proto == "delta", o.batch)
	if err != nil {
		return err
	}
	defer sim.close()
	srv := x.Proc.Pid()

	fmt.Printf("\n## %s, %d clients, %d endpoints\n\n", proto, n, o.endpoints)
	fmt.Println("| step | ACKed | publish | p50 | p99 (or max) | max | MB received | xds-server CPU s | xds-server peak RSS | simulator CPU s | reconnects | in sync (server's view) |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

	// The initial sync: every client connects (in batches) and ACKs every type.
	w := startWindow(srv, sim)
	syncDeadline := time.Now().Add(o.syncTimeout)
	var st simStats
	for {
		if st, err = sim.stats(ctx); err != nil {
			return err
		}
		sim.drain()
		if st.synced == n || time.Now().After(syncDeadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	w.end()
	inSync := countInSync(x, n, 10*time.Second)
	fmt.Printf("| initial sync | %d/%d | | | | %s | %s | %s | %s | %s | %d | %s |\n", st.synced, n, sec(time.Since(w.start)),
		mb(st.bytes-w.stats.bytes), w.cpuCell(), w.rssCell(), w.simCPUCell(), st.reconnects, inSync)
	if st.synced < n {
		return fmt.Errorf("only %d of %d clients synced within -sync-timeout %s (last stream error: %s)", st.synced, n, o.syncTimeout, st.lastErr)
	}

	var all []time.Duration
	for k := range o.changes {
		if k%2 == 0 {
			unhealthy = k / 2 % o.endpoints
		} else {
			unhealthy = -1
		}
		w := startWindow(srv, sim)
		logFrom := logSize(x.Proc.LogPath)
		if err := x.Reload(fleetConfig(lport, o.endpoints, unhealthy)); err != nil {
			return err
		}
		samples, published, err := sim.awaitChange(ctx, w.start, n, x.Proc.LogPath, logFrom, o.changeTimeout)
		if err != nil {
			return err
		}
		w.end()
		st, err := sim.stats(ctx)
		if err != nil {
			return err
		}
		inSync := countInSync(x, n, 10*time.Second)
		all = append(all, samples...)
		pub := "none"
		if !published.IsZero() {
			pub = sec(published.Sub(w.start))
		}
		fmt.Printf("| change %d | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", k+1, len(samples), n, pub,
			sec(stats.Percentile(samples, 50)), stats.TailCell(samples, 99, sec), sec(stats.Percentile(samples, 100)),
			mb(st.bytes-w.stats.bytes), w.cpuCell(), w.rssCell(), w.simCPUCell(), st.reconnects-w.stats.reconnects, inSync)
	}
	fmt.Printf("| all %d changes | %d/%d | | %s | %s | %s | | | | | | |\n", o.changes, len(all), n*o.changes,
		sec(stats.Percentile(all, 50)), stats.TailCell(all, 99, sec), sec(stats.Percentile(all, 100)))
	return nil
}

// fleetConfig is one listener and one pool of n static endpoints (10.x.y.z:7000),
// endpoint unhealthy (when in range) unhealthy.
func fleetConfig(listenerPort, n, unhealthy int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listeners: [{name: edge, port: %d, routes: [{pool: bench}]}]\npools:\n  - name: bench\n    static:\n", listenerPort)
	for i := range n {
		h := "healthy"
		if i == unhealthy {
			h = "unhealthy"
		}
		fmt.Fprintf(&b, "      - {id: cli-%05d, address: 10.%d.%d.%d, port: 7000, health: %s}\n", i, i>>16&255, i>>8&255, i&255, h)
	}
	return b.String()
}

// sim is the load generator process.
type sim struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	events  chan string // ack lines
	replies chan string // stats lines
	done    chan struct{}
}

type simStats struct {
	bytes, reconnects int64
	synced            int
	lastErr           string
}

func startSim(dir, addr string, n int, delta bool, batch int) (*sim, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "client", "-addr", addr, "-n", strconv.Itoa(n), "-delta="+strconv.FormatBool(delta),
		"-node-cluster", "edge", "-batch", strconv.Itoa(batch))
	logf, err := os.Create(filepath.Join(dir, "simulator.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s := &sim{cmd: cmd, events: make(chan string, 1<<16), replies: make(chan string, 16), done: make(chan struct{})}
	if s.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l := sc.Text()
			switch {
			case strings.HasPrefix(l, "ack "):
				s.events <- l
			case strings.HasPrefix(l, "stats "):
				s.replies <- l
			}
		}
		cmd.Wait()
		logf.Close()
	}()
	return s, nil
}

func (s *sim) pid() int { return s.cmd.Process.Pid }

// drain drops the ACK events read so far: a window counts only those after its
// start, and a full channel would stall the reader (and the stats replies).
func (s *sim) drain() {
	for {
		select {
		case <-s.events:
		default:
			return
		}
	}
}

// close ends the load generator: stdin closed, then SIGKILL after 10 s.
func (s *sim) close() {
	s.stdin.Close()
	go func() {
		for range s.events { // keep the reader unblocked
		}
	}()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
}

func (s *sim) stats(ctx context.Context) (simStats, error) {
	if _, err := io.WriteString(s.stdin, "stats\n"); err != nil {
		return simStats{}, fmt.Errorf("load generator: %w", err)
	}
	select {
	case <-ctx.Done():
		return simStats{}, ctx.Err()
	case <-s.done:
		return simStats{}, errors.New("the load generator exited (see its simulator.log)")
	case l := <-s.replies:
		f := strings.SplitN(l, " ", 5)
		var st simStats
		st.bytes, _ = strconv.ParseInt(f[1], 10, 64)
		st.reconnects, _ = strconv.ParseInt(f[2], 10, 64)
		st.synced, _ = strconv.Atoi(f[3])
		st.lastErr = f[4]
		return st, nil
	case <-time.After(30 * time.Second):
		return simStats{}, errors.New("the load generator did not answer stats in 30 s")
	}
}

// awaitChange collects the clients' EDS ACKs after start until every client has
// ACKed the endpoint version the server published, or limit passes. It returns
// one sample per client that did, and when the server logged the publish.
func (s *sim) awaitChange(ctx context.Context, start time.Time, n int, logPath string, logFrom int64, limit time.Duration) ([]time.Duration, time.Time, error) {
	type ack struct {
		version string
		at      time.Time
	}
	acks := map[int][]ack{} // by client: EDS ACKs since start
	done := map[int]time.Duration{}
	var target string
	var published time.Time
	resolve := func(i int) {
		if _, ok := done[i]; ok || target == "" {
			return
		}
		for _, a := range acks[i] {
			if a.version == target {
				done[i] = a.at.Sub(start)
				return
			}
		}
	}
	deadline := time.After(time.Until(start.Add(limit)))
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(done) < n {
		select {
		case <-ctx.Done():
			return nil, published, ctx.Err()
		case <-deadline:
			return samples(done), published, nil
		case <-s.done:
			return nil, published, errors.New("the load generator exited (see its simulator.log)")
		case <-tick.C:
			if target == "" {
				target, published = findPublished(logPath, logFrom)
				for i := range acks {
					resolve(i)
				}
			}
		case l := <-s.events:
			f := strings.Fields(l) // ack <client> <type> <version> <unix ns>
			if len(f) != 5 || f[2] != "e" {
				continue
			}
			i, _ := strconv.Atoi(f[1])
			ns, _ := strconv.ParseInt(f[4], 10, 64)
			at := time.Unix(0, ns)
			if at.Before(start) {
				continue
			}
			acks[i] = append(acks[i], ack{f[3], at})
			resolve(i)
		}
	}
	return samples(done), published, nil
}

func samples(done map[int]time.Duration) []time.Duration {
	out := make([]time.Duration, 0, len(done))
	for _, d := range done {
		out = append(out, d)
	}
	return out
}

// findPublished reads the xds-server's log from offset for its first "published"
// line: the endpoint version it set (the line's version is "<endpoints>/<routes>")
// and when. Empty until the line is there.
func findPublished(path string, from int64) (string, time.Time) {
	f, err := os.Open(path)
	if err != nil {
		return "", time.Time{}
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return "", time.Time{}
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), `"msg":"published"`) {
			continue
		}
		var line struct {
			TS      float64 `json:"ts"`
			Version string  `json:"version"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		eds, _, _ := strings.Cut(line.Version, "/")
		sec, frac := int64(line.TS), line.TS-float64(int64(line.TS))
		return eds, time.Unix(sec, int64(frac*1e9))
	}
	return "", time.Time{}
}

func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// countInSync polls /debug/xds until the server records every client as having
// ACKed its current version of every type, or limit passes; "k/n".
func countInSync(x *harness.XDSServer, n int, limit time.Duration) string {
	deadline := time.Now().Add(limit)
	for {
		k, err := inSync(x)
		if err != nil {
			return "error: " + err.Error()
		}
		if k == n || time.Now().After(deadline) {
			return fmt.Sprintf("%d/%d", k, n)
		}
		time.Sleep(time.Second)
	}
}

func inSync(x *harness.XDSServer) (int, error) {
	code, body, err := x.Get("/debug/xds?group=edge")
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("/debug/xds: %d", code)
	}
	var view struct {
		Groups map[string]struct{ Versions xds.Versions } `json:"node_groups"`
		Nodes  []xds.NodeStatus                           `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(body), &view); err != nil {
		return 0, err
	}
	v := view.Groups["edge"].Versions
	want := []string{v.Clusters, v.Endpoints, v.Listeners, v.Routes}
	k := 0
	for _, nd := range view.Nodes {
		ok := nd.Connected
		for i, t := range []string{
			"type.googleapis.com/envoy.config.cluster.v3.Cluster",
			"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
			"type.googleapis.com/envoy.config.listener.v3.Listener",
			"type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
		} {
			ok = ok && nd.Acked[t] == want[i]
		}
		if ok {
			k++
		}
	}
	return k, nil
}

// window is what the xds-server and the load generator used between start and
// end: CPU from /proc/<pid>/stat, the server's peak RSS from VmHWM after
// resetting it at the start.
type window struct {
	srv           int
	sim           *sim
	start         time.Time
	stats         simStats
	cpu0, simCPU0 time.Duration
	cpu, simCPU   time.Duration
	peak          int64 // kB
	peakErr       error
}

func startWindow(srv int, s *sim) *window {
	w := &window{srv: srv, sim: s}
	s.drain()
	w.stats, _ = s.stats(context.Background())
	// Writing 5 to clear_refs resets the peak RSS to the current RSS (Linux 4.0+).
	w.peakErr = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", srv), []byte("5"), 0)
	w.cpu0, w.simCPU0 = cpuTime(srv), cpuTime(s.pid())
	w.start = time.Now()
	return w
}

func (w *window) end() {
	w.cpu, w.simCPU = cpuTime(w.srv)-w.cpu0, cpuTime(w.sim.pid())-w.simCPU0
	w.peak = statusKB(w.srv, "VmHWM")
}

func (w *window) cpuCell() string    { return fmt.Sprintf("%.2f", w.cpu.Seconds()) }
func (w *window) simCPUCell() string { return fmt.Sprintf("%.2f", w.simCPU.Seconds()) }
func (w *window) rssCell() string {
	s := fmt.Sprintf("%.0f MB", float64(w.peak)/1024)
	if w.peakErr != nil {
		s += " (since start: clear_refs failed)"
	}
	return s
}

// cpuTime is a process's utime+stime (Linux counts in 1/100 s ticks).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // from field 3, state
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// statusKB reads one "Name: N kB" line of /proc/<pid>/status.
func statusKB(pid int, name string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

func sec(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
func mb(b int64) string          { return fmt.Sprintf("%.1f", float64(b)/1e6) }
