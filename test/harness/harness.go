// Package harness starts the real parts climesh runs with — Consul, Envoy, the
// xds-server binary, small WebSocket upstreams — on free loopback ports, for the
// end-to-end tests, the benchmarks and the demo. Every process is bound to
// 127.0.0.1, logs to a file, and is killed by Close.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Root is the repository root (the folder holding go.mod).
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module github.com/climesh/climesh\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no climesh go.mod above the working directory")
		}
		dir = parent
	}
}

// Tool returns the path of a tool tools/install.sh put in .tools/bin.
func Tool(name string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, ".tools", "bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s is not installed at %s: run `make tools` (tools/install.sh)", name, p)
	}
	return p, nil
}

// FreePort asks the kernel for a free loopback TCP port.
func FreePort() (int, error) {
	ports, err := FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// FreePorts asks for n distinct free loopback TCP ports: each is held until all
// are chosen, so that one process given several (Consul's HTTP, server and Serf
// ports) never gets the same one twice.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Proc is a child process whose output goes to a log file.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	once    sync.Once
}

// Start runs name with args; its stdout and stderr go to dir/name.log.
func Start(dir, name, bin string, args []string, env ...string) (*Proc, error) {
	return StartIn("", dir, name, bin, args, env...)
}

// StartIn is Start with workDir as the working directory ("": this process's).
func StartIn(workDir, dir, name, bin string, args []string, env ...string) (*Proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = workDir
	cmd.Env = append(os.Environ(), env...)
	return StartCmd(dir, name, cmd)
}

// StartCmd runs cmd as Start does (output to dir/name.log, its own process
// group, killed if the test dies), with cmd's environment exactly as set and
// its SysProcAttr's other fields (namespaces, credentials) kept.
func StartCmd(dir, name string, cmd *exec.Cmd) (*Proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pdeathsig = true, syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has ended; Err is then its exit error.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process ended (nil: exit 0); call it after Done.
func (p *Proc) Err() error { return p.err }

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) error { return syscall.Kill(-p.cmd.Process.Pid, sig) }

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) {
	p.once.Do(func() {
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.Signal(syscall.SIGKILL)
			<-p.done
		}
	})
}

// Tail returns the last n lines of the process's log.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Poll calls cond every interval until it returns nil or ctx ends; the last
// error explains the time-out.
func Poll(ctx context.Context, interval time.Duration, cond func() error) error {
	var last error
	for {
		if last = cond(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// BinDirEnv names a directory of binaries Binary built before, for a test that
// re-executes itself (in a namespace without network, say): it uses those
// instead of building again.
const BinDirEnv = "CLIMESH_TEST_BIN_DIR"

// Binary builds (once per process) climesh's commands and the Go example
// chat-server, and returns the path of one.
func Binary(name string) (string, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		return filepath.Join(dir, name), nil
	}
	buildOnce.Do(func() {
		root, err := Root()
		if err != nil {
			buildErr = err
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "climesh-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+string(filepath.Separator), "./cmd/...", "./examples/chat-server")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/...: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		return "", buildErr
	}
	return filepath.Join(buildDir, name), nil
}

// ChildPID finds the child process of parent (e.g. the CLI a sidecar runs) from
// /proc.
func ChildPID(parent int) (int, error) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// After "pid (comm)": state, then the parent's pid.
		fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(parent) {
			return strconv.Atoi(filepath.Base(filepath.Dir(p)))
		}
	}
	return 0, fmt.Errorf("process %d has no child", parent)
}

// ExecutableByAll returns bin (symlinks resolved) placed where any UID can run it:
// a hard link (or, across file systems, a copy) at dir/name, mode 0755. The
// isolated pool runs its CLIs under other UIDs, and the checkout (with .tools) may
// sit in a directory only its owner can enter, like a CI's temporary clone.
func ExecutableByAll(bin, dir, name string) (string, error) {
	src, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, name)
	if err := os.Link(src, dst); err != nil {
		in, err := os.Open(src)
		if err != nil {
			return "", err
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return "", err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return "", err
		}
		if err := out.Close(); err != nil {
			return "", err
		}
	}
	return dst, os.Chmod(dst, 0o755)
}
