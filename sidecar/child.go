package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
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
// listens.
func StartChild(ctx context.Context, command, home string, env ...string) (*Child, error) {
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
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("--cli-home %s: %w", home, err)
	}
	c := &Child{Addr: "127.0.0.1:" + strconv.Itoa(port), Token: hex.EncodeToString(tok), done: make(chan struct{})}
	c.Cmd = exec.Command(command, "--headless", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--no-auto-update")
	c.Cmd.Env = append(append(os.Environ(), env...), "COPILOT_HOME="+home, "COPILOT_CONNECTION_TOKEN="+c.Token)
	c.Cmd.Stdout, c.Cmd.Stderr = os.Stderr, os.Stderr
	c.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("--cli-command %s: %w", command, err)
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
