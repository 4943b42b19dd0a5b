package harness

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sidecar is a climesh-sidecar process in front of one CLI.
type Sidecar struct {
	Proc      *Proc
	Port      int // tunnels
	AdminPort int // /metrics, /healthz, POST /drain, POST /sweep
	ID        string
}

// SidecarOptions: exactly one of CLICommand (a child CLI) and CLIAddr (attach).
type SidecarOptions struct {
	ID, Pool, ConsulAddr string
	CLICommand, CLIHome  string
	CLIAddr, CLIToken    string
	Port                 int // 0: a free one
	Extra                []string
	Env                  []string // more environment (CONSUL_HTTP_TOKEN)
}

// StartSidecar starts climesh-sidecar on a free port and waits until it listens.
// A port found free can be taken before the sidecar binds it (a CLI child
// picks its own port meanwhile): the start is tried again on other ports.
func StartSidecar(ctx context.Context, dir string, o SidecarOptions) (*Sidecar, error) {
	for attempt := 1; ; attempt++ {
		s, err := startSidecar(ctx, dir, o)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return s, err
		}
	}
}

func startSidecar(ctx context.Context, dir string, o SidecarOptions) (*Sidecar, error) {
	bin, err := Binary("climesh-sidecar")
	if err != nil {
		return nil, err
	}
	port := o.Port
	if port == 0 {
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	adminPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	args := []string{"--listen", "127.0.0.1:" + strconv.Itoa(port), "--admin-listen", "127.0.0.1:" + strconv.Itoa(adminPort), "--pool", o.Pool, "--instance-id", o.ID,
		"--ping-interval", "500ms", "--check-ttl", "3s"}
	if o.ConsulAddr != "" {
		args = append(args, "--consul", o.ConsulAddr)
	}
	env := append([]string{}, o.Env...)
	if o.CLICommand != "" {
		args = append(args, "--cli-command", o.CLICommand)
		if o.CLIHome != "" {
			args = append(args, "--cli-home", o.CLIHome)
		}
	} else {
		args = append(args, "--cli-address", o.CLIAddr)
		env = append(env, "COPILOT_CONNECTION_TOKEN="+o.CLIToken)
	}
	p, err := Start(dir, "sidecar-"+o.ID, bin, append(args, o.Extra...), env...)
	if err != nil {
		return nil, err
	}
	s := &Sidecar{Proc: p, Port: port, AdminPort: adminPort, ID: o.ID}
	if err := WaitTCP(ctx, "127.0.0.1:"+strconv.Itoa(port), p, 90*time.Second); err != nil {
		p.Stop(time.Second)
		return nil, fmt.Errorf("sidecar %s: %w", o.ID, err)
	}
	return s, nil
}

// Close stops the sidecar (SIGTERM: drain, deregister, stop its CLI).
func (s *Sidecar) Close() { s.Proc.Stop(15 * time.Second) }

// StartConnect runs climesh-connect in TCP mode and returns its address.
func StartConnect(ctx context.Context, dir, name, edgeURL string, extra ...string) (*Proc, string, error) {
	bin, err := Binary("climesh-connect")
	if err != nil {
		return nil, "", err
	}
	port, err := FreePort()
	if err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := Start(dir, name, bin, append([]string{"--listen", addr, "--edge", edgeURL}, extra...))
	if err != nil {
		return nil, "", err
	}
	if err := WaitTCP(ctx, addr, p, 20*time.Second); err != nil {
		p.Stop(time.Second)
		return nil, "", err
	}
	return p, addr, nil
}
