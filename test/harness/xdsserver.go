package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// XDSServer is the real xds-server binary on free loopback ports.
type XDSServer struct {
	Proc       *Proc
	XDSAddr    string
	HTTPAddr   string
	configPath string
	server     string
	dir, bin   string
	env        []string
}

// StartXDSServer writes body (a config without its server: section, which the
// harness adds with free ports) and starts the binary. It does not wait for
// readiness: a server whose Consul is down is meant to start and stay not ready.
func StartXDSServer(ctx context.Context, dir, body string, env ...string) (*XDSServer, error) {
	return StartXDSServerWith(ctx, dir, body, "", env...)
}

// StartXDSServerWith is StartXDSServer with more of the server: section
// (server, YAML lines indented by two spaces, such as its tls:).
func StartXDSServerWith(ctx context.Context, dir, body, server string, env ...string) (*XDSServer, error) {
	bin, err := Binary("xds-server")
	if err != nil {
		return nil, err
	}
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	xdsPort, httpPort := ports[0], ports[1]
	s := &XDSServer{
		XDSAddr:    "127.0.0.1:" + strconv.Itoa(xdsPort),
		HTTPAddr:   "127.0.0.1:" + strconv.Itoa(httpPort),
		configPath: filepath.Join(dir, "xds-server.yaml"),
		dir:        dir, bin: bin, env: env,
	}
	s.server = fmt.Sprintf("server:\n  xds_address: %s\n  http_address: %s\n%s", s.XDSAddr, s.HTTPAddr, server)
	if err := s.WriteConfig(body); err != nil {
		return nil, err
	}
	return s, s.start(ctx)
}

// Start starts the binary again (after Proc was stopped or killed) on the same
// ports and config, and waits for /healthz.
func (s *XDSServer) Start(ctx context.Context) error { return s.start(ctx) }

func (s *XDSServer) start(ctx context.Context) error {
	var err error
	if s.Proc, err = Start(s.dir, "xds-server", s.bin, []string{"--config", s.configPath, "--log-level", "debug"}, s.env...); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = Poll(ctx, 20*time.Millisecond, func() error {
		if s.Proc.Exited() {
			return fmt.Errorf("xds-server exited:\n%s", s.Proc.Tail(20))
		}
		_, _, err := s.Get("/healthz")
		return err
	})
	if err != nil {
		s.Proc.Stop(time.Second)
		return err
	}
	return nil
}

// WriteConfig replaces the config file (same server: section).
func (s *XDSServer) WriteConfig(body string) error {
	return os.WriteFile(s.configPath, []byte(s.server+body), 0o644)
}

// Reload writes body and sends SIGHUP.
func (s *XDSServer) Reload(body string) error {
	if err := s.WriteConfig(body); err != nil {
		return err
	}
	return s.Proc.Signal(syscall.SIGHUP)
}

// Get fetches a path from the HTTP endpoint: status and body.
func (s *XDSServer) Get(path string) (int, string, error) {
	resp, err := adminClient.Get("http://" + s.HTTPAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// WaitReady polls /readyz until it answers 200.
func (s *XDSServer) WaitReady(ctx context.Context) error {
	return Poll(ctx, 20*time.Millisecond, func() error {
		code, body, err := s.Get("/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("readyz %d: %s", code, strings.TrimSpace(body))
		}
		return nil
	})
}

// Metric sums the samples of one metric whose labels contain every given
// name="value" pair, from /metrics.
func (s *XDSServer) Metric(name string, labels ...string) (float64, error) {
	_, body, err := s.Get("/metrics")
	if err != nil {
		return 0, err
	}
	total := 0.0
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		total += v
	}
	return total, nil
}

// Close stops the server.
func (s *XDSServer) Close() { s.Proc.Stop(5 * time.Second) }
