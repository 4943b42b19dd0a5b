package sidecar

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/sidecar/datapath"
)

// Supervisor keeps a child CLI running: when it dies, the instance's check turns
// critical at once (it leaves routing without waiting for the TTL), tunnels on the
// dead CLI close by themselves (their clients reconnect and resume elsewhere), and
// a new CLI is started on the same COPILOT_HOME; the check passes again once it
// answers ping.
type Supervisor struct {
	Command, Home string
	Relay         *datapath.Relay
	Health        *Health
	Log           *zap.Logger
	OnRestart     func()

	child *Child
}

// NewSupervisor adopts a running child.
func NewSupervisor(c *Child, command, home string, rl *datapath.Relay, health *Health, log *zap.Logger) *Supervisor {
	return &Supervisor{Command: command, Home: home, Relay: rl, Health: health, Log: log, child: c}
}

// Run restarts the child whenever it exits, until ctx ends; then it stops it.
func (s *Supervisor) Run(ctx context.Context) {
	defer func() { s.child.Stop(10 * time.Second) }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.child.Done():
		}
		s.Log.Error("copilot CLI exited; restarting it", zap.String("state", s.child.Cmd.ProcessState.String()))
		s.Health.Fail("copilot CLI exited; restarting")
		wait := 200 * time.Millisecond
		for {
			c, err := StartChild(ctx, s.Command, s.Home)
			if err == nil {
				s.child = c
				s.Relay.SetCLI(c.Addr, c.Token)
				s.Health.SetCLI(c.Addr, c.Token)
				if s.OnRestart != nil {
					s.OnRestart()
				}
				s.Log.Info("copilot CLI restarted", zap.String("addr", c.Addr))
				break
			}
			s.Log.Error("copilot CLI restart failed", zap.Error(err), zap.Duration("retry_in", wait))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(wait*2, 10*time.Second)
		}
	}
}
