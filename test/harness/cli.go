package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// CLI is a real Copilot CLI in headless TCP mode with its own COPILOT_HOME and a
// connection token.
type CLI struct {
	Proc  *Proc
	Addr  string
	Token string
	Home  string
}

// StartCLI starts `copilot --headless` on a free loopback port and waits for it.
func StartCLI(ctx context.Context, dir, name, token string) (*CLI, error) {
	bin, err := Tool("copilot")
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	home := filepath.Join(dir, name+"-home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, err
	}
	p, err := Start(dir, name, bin, []string{"--headless", "--host", "127.0.0.1", "--port", strconv.Itoa(port), "--no-auto-update"},
		"COPILOT_HOME="+home, "COPILOT_CONNECTION_TOKEN="+token)
	if err != nil {
		return nil, err
	}
	c := &CLI{Proc: p, Addr: "127.0.0.1:" + strconv.Itoa(port), Token: token, Home: home}
	if err := WaitTCP(ctx, c.Addr, p, 60*time.Second); err != nil {
		p.Stop(time.Second)
		return nil, err
	}
	return c, nil
}

// Close stops the CLI.
func (c *CLI) Close() { c.Proc.Stop(5 * time.Second) }

// WaitTCP waits until addr accepts a connection, or p exits (said at once,
// with the tail of its output).
func WaitTCP(ctx context.Context, addr string, p *Proc, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited:\n%s", p.Name, p.Tail(20))
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing accepts connections on %s: %w", addr, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}
