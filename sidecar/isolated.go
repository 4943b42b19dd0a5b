package sidecar

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// UserPool is the isolated mode (pattern 1): one CLI process per user, each with
// its own COPILOT_HOME (mode 0700) and its own credentials, started on first use,
// reused, reaped when idle, restarted when it died, and capped in number.
type UserPool struct {
	Command   string        // the copilot executable
	Root      string        // per-user directories: Root/<user>/home
	Secrets   string        // optional: Secrets/<user>.env, KEY=VALUE lines (never logged)
	Cap       int           // most CLIs at once
	IdleAfter time.Duration // reap a CLI with no tunnel for this long
	Log       *zap.Logger

	// start runs one CLI; tests replace it.
	start func(ctx context.Context, command, home string, env []string) (*Child, error)

	mu    sync.Mutex
	users map[string]*userCLI
}

type userCLI struct {
	child    *Child
	tunnels  int
	lastUsed time.Time
	starting chan struct{} // closed when the start attempt ended
	err      error
}

// ErrPoolFull is returned when every CLI is in use and the cap is reached.
var ErrPoolFull = errors.New("isolated pool full: every per-user CLI is in use")

var userName = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,128}$`)

// Acquire returns a dialer for user's own CLI, starting it if needed, and a
// release to call when the tunnel ends.
func (p *UserPool) Acquire(ctx context.Context, user string) (CLIDialer, func(), error) {
	if !userName.MatchString(user) || strings.HasPrefix(user, ".") {
		return CLIDialer{}, nil, fmt.Errorf("isolated pool: user %q cannot name a directory", user)
	}
	p.mu.Lock()
	if p.users == nil {
		p.users = map[string]*userCLI{}
	}
	u := p.users[user]
	if u != nil && u.child != nil {
		select {
		case <-u.child.Done(): // it died: start again
			delete(p.users, user)
			u = nil
		default:
		}
	}
	if u == nil {
		if err := p.makeRoomLocked(); err != nil {
			p.mu.Unlock()
			return CLIDialer{}, nil, err
		}
		u = &userCLI{starting: make(chan struct{})}
		p.users[user] = u
		go p.startUser(user, u)
	}
	u.tunnels++
	u.lastUsed = time.Now()
	p.mu.Unlock()

	select {
	case <-u.starting:
	case <-ctx.Done():
		p.release(user, u)
		return CLIDialer{}, nil, ctx.Err()
	}
	if u.err != nil {
		p.release(user, u)
		p.mu.Lock()
		if p.users[user] == u {
			delete(p.users, user)
		}
		p.mu.Unlock()
		return CLIDialer{}, nil, u.err
	}
	var once sync.Once
	return CLIDialer{Addr: u.child.Addr, Token: u.child.Token}, func() { once.Do(func() { p.release(user, u) }) }, nil
}

func (p *UserPool) release(user string, u *userCLI) {
	p.mu.Lock()
	defer p.mu.Unlock()
	u.tunnels--
	u.lastUsed = time.Now()
}

// makeRoomLocked evicts the least recently used idle CLI when at the cap.
func (p *UserPool) makeRoomLocked() error {
	if p.Cap <= 0 || len(p.users) < p.Cap {
		return nil
	}
	var victim string
	var oldest time.Time
	for name, u := range p.users {
		if u.tunnels == 0 && u.child != nil && (victim == "" || u.lastUsed.Before(oldest)) {
			victim, oldest = name, u.lastUsed
		}
	}
	if victim == "" {
		return fmt.Errorf("%w (cap %d)", ErrPoolFull, p.Cap)
	}
	p.stopLocked(victim, "evicted: cap reached")
	return nil
}

func (p *UserPool) stopLocked(user, why string) {
	u := p.users[user]
	delete(p.users, user)
	if u != nil && u.child != nil {
		p.Log.Info("stopping a user's CLI", zap.String("user", user), zap.String("why", why))
		go u.child.Stop(5 * time.Second)
	}
}

func (p *UserPool) startUser(user string, u *userCLI) {
	defer close(u.starting)
	home := filepath.Join(p.Root, user, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		u.err = fmt.Errorf("isolated pool: home for %s: %w", user, err)
		return
	}
	os.Chmod(filepath.Join(p.Root, user), 0o700)
	os.Chmod(home, 0o700)
	env, err := p.secrets(user)
	if err != nil {
		u.err = err
		return
	}
	start := p.start
	if start == nil {
		start = func(ctx context.Context, command, home string, env []string) (*Child, error) {
			return StartChild(ctx, command, home, env...)
		}
	}
	child, err := start(context.Background(), p.Command, home, env)
	if err != nil {
		u.err = fmt.Errorf("isolated pool: start CLI for %s: %w", user, err)
		return
	}
	p.mu.Lock()
	u.child = child
	p.mu.Unlock()
	p.Log.Info("started a user's CLI", zap.String("user", user), zap.String("addr", child.Addr))
}

// secrets reads Secrets/<user>.env (KEY=VALUE per line, # comments).
func (p *UserPool) secrets(user string) ([]string, error) {
	if p.Secrets == "" {
		return nil, nil
	}
	f, err := os.Open(filepath.Join(p.Secrets, user+".env"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("isolated pool: secrets for %s: %w", user, err)
	}
	defer f.Close()
	var env []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, _, ok := strings.Cut(line, "="); !ok || k == "" {
			return nil, fmt.Errorf("isolated pool: %s.env line %d: want KEY=VALUE", user, n) // the value is never shown
		}
		env = append(env, line)
	}
	return env, sc.Err()
}

// Run reaps idle CLIs until ctx ends, then stops them all.
func (p *UserPool) Run(ctx context.Context) {
	t := time.NewTicker(max(p.IdleAfter/4, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			for name := range p.users {
				p.stopLocked(name, "shutting down")
			}
			p.mu.Unlock()
			return
		case <-t.C:
		}
		p.mu.Lock()
		for name, u := range p.users {
			if u.child != nil && u.tunnels == 0 && time.Since(u.lastUsed) > p.IdleAfter {
				p.stopLocked(name, "idle")
			}
		}
		p.mu.Unlock()
	}
}

// Running lists the users whose CLI runs (for tests and the debug view).
func (p *UserPool) Running() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for name, u := range p.users {
		if u.child != nil {
			out[name] = u.child.Cmd.Process.Pid
		}
	}
	return out
}
