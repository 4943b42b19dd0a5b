package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// Child is a CLI the sidecar runs itself, on a loopback port, with a token made
// here and given to nobody else.
type Child struct {
	Cmd   *exec.Cmd
	Addr  string
	Token string
	done  chan struct{}
}

// StartChild runs `command --headless --host 127.0.0.1 --port N --no-auto-update`
// with COPILOT_HOME=home and a fresh COPILOT_CONNECTION_TOKEN, and waits until it
// listens. It runs as the sidecar's own UID with the sidecar's environment plus
// env (shared and collab modes); the isolated pool starts its CLIs with a
// childSpec of its own instead (their UID, a minimal environment).
func StartChild(ctx context.Context, command, home string, env ...string) (*Child, error) {
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("--cli-home %s: %w", home, err)
	}
	// Its working directory is its home, not the sidecar's: the CLI reads custom
	// instructions (AGENTS.md, .github/copilot-instructions.md) and git facts
	// from where it runs.
	return startChild(ctx, childSpec{Command: command, Home: home, Env: append(os.Environ(), env...), Dir: home})
}

// childSpec is how a CLI runs: what, where, with which environment and as whom.
type childSpec struct {
	Command string
	Home    string   // COPILOT_HOME
	Env     []string // the whole environment but COPILOT_HOME and the token, which are added last (and so win)
	// Dir is the working directory ("": the sidecar's).
	Dir string
	// Cred, if set, is the UID/GID the CLI runs as (the sidecar must be root).
	Cred *syscall.Credential
}

// cmd is the command the spec describes, with args, in its own process group and
// killed if the sidecar dies.
func (s childSpec) cmd(token string, args ...string) *exec.Cmd {
	cmd := exec.Command(s.Command, args...)
	cmd.Env = append(append(slices.Clip(s.Env), "COPILOT_HOME="+s.Home), "COPILOT_CONNECTION_TOKEN="+token)
	cmd.Dir = s.Dir
	// Pdeathsig is set after the UID change (the kernel clears it on one).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: s.Cred}
	return cmd
}

func startChild(ctx context.Context, s childSpec) (*Child, error) {
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c := &Child{Addr: "127.0.0.1:" + strconv.Itoa(port), Token: hex.EncodeToString(tok), done: make(chan struct{})}
	c.Cmd = s.cmd(c.Token, "--headless", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--no-auto-update")
	c.Cmd.Stdout, c.Cmd.Stderr = os.Stderr, os.Stderr
	if err := c.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("--cli-command %s: %w", s.Command, err)
	}
	go func() { c.Cmd.Wait(); close(c.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", c.Addr, time.Second)
		if err == nil {
			conn.Close()
			return c, nil
		}
		select {
		case <-c.done:
			return nil, fmt.Errorf("copilot CLI exited before listening: %v", c.Cmd.ProcessState)
		case <-ctx.Done():
			c.Stop(time.Second)
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.Stop(time.Second)
			return nil, fmt.Errorf("copilot CLI did not listen on %s within 60s", c.Addr)
		}
	}
}

// Done is closed when the CLI exits.
func (c *Child) Done() <-chan struct{} { return c.done }

// Stop sends SIGTERM, then SIGKILL after grace.
func (c *Child) Stop(grace time.Duration) {
	syscall.Kill(-c.Cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		syscall.Kill(-c.Cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}
