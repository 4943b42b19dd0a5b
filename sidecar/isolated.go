package sidecar

import (
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

	"github.com/climesh/climesh/periodic"
	"github.com/climesh/climesh/sidecar/datapath"
)

// UserPool is the isolated mode (pattern 1): one CLI process per user, each with
// its own COPILOT_HOME (mode 0700) and its own credentials, started on first use,
// reused, reaped when idle, restarted when it died, and capped in number.
//
// A user is a (tenant, user) pair: "alice" of acme and "alice" of globex are two
// users, with two homes and two CLIs. On disk:
//
//	Root/                       0711 (with UIDs), the sidecar's
//	Root/.uids.json             0600, the sidecar's: which user has which UID
//	Root/.copilot-pkg/          0755, the sidecar's (if PkgCache points here): the CLI's package, unpacked once
//	Root/<tenant>/              0711, the sidecar's: traversable, not listable
//	Root/<tenant>/<user>/       0700, the user's UID (with UIDs)
//	Root/<tenant>/<user>/home/  0700, HOME and COPILOT_HOME of the user's CLI
//	Root/<tenant>/<user>/tmp/   0700, its TMPDIR (nothing in a shared /tmp)
//	Secrets/<tenant>/<user>.env KEY=VALUE lines, read by the sidecar only
//
// With UIDs set, each user's CLI runs as a UID (and GID) of its own from the
// range, with no supplementary groups, so that its shell and file tools cannot
// read another user's home, token or sessions; the sidecar must then run as
// root, and the CLI executable must be reachable by an unprivileged UID (o+x on
// every directory down to it, after symlinks, and o+rx on the file). Without
// UIDs every CLI runs as the sidecar's UID and only directory permissions, which
// that UID ignores, stand between users.
//
// Either way a CLI's environment is only PATH, HOME, TMPDIR, COPILOT_HOME, its
// connection token, COPILOT_PKG_CACHE_HOME (with PkgCache), the variables
// PassEnv names and the user's own secrets: never the sidecar's environment.
type UserPool struct {
	Command string   // the copilot executable
	Root    string   // per-user directories: Root/<tenant>/<user>/home
	Secrets string   // optional: Secrets/<tenant>/<user>.env, KEY=VALUE lines (never logged)
	UIDs    UIDRange // optional: each user's CLI runs as its own UID/GID from this range
	// PassEnv names variables of the sidecar's environment that every CLI also
	// gets (a proxy, a CA bundle, a locale); put no secret here.
	PassEnv []string
	// PkgCache, if set, is a directory where Prepare has the CLI unpack its own
	// package once (about 235 MB for copilot 1.0), readable by every CLI and
	// writable by the sidecar alone, and given to each CLI as
	// COPILOT_PKG_CACHE_HOME. Without it each user's CLI unpacks its own copy into
	// its home on its first start (and takes some 2 s longer to listen).
	PkgCache  string
	Cap       int           // most CLIs at once
	IdleAfter time.Duration // reap a CLI with no tunnel for this long
	Log       *zap.Logger

	// start runs one CLI; tests replace it.
	start func(ctx context.Context, s childSpec) (*Child, error)

	mu    sync.Mutex
	users map[string]*userCLI // "tenant/user"

	prepMu   sync.Mutex // Prepare and the UID map
	prepared bool
	uids     *uidTable
	pkgReady bool // PkgCache holds the unpacked package
}

type userCLI struct {
	tenant, user string
	child        *Child
	tunnels      int
	lastUsed     time.Time
	starting     chan struct{} // closed when the start attempt ended
	err          error
}

// ErrPoolFull is returned when every CLI is in use and the cap is reached.
var ErrPoolFull = errors.New("isolated pool full: every per-user CLI is in use")

var dirName = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,128}$`)

// checkName refuses a tenant or user name that cannot be a directory name of its
// own: empty, too long, a path separator or any other odd character, a leading
// dot ("..", hidden files, Root/.uids.json).
func checkName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("isolated pool: the caller's identity has no %s", kind)
	}
	if !dirName.MatchString(name) || strings.HasPrefix(name, ".") {
		return fmt.Errorf("isolated pool: %s %q cannot name a directory", kind, name)
	}
	return nil
}

// Prepare checks the pool's settings and readies Root; Acquire calls it, the
// sidecar should call it at start to fail early. With UIDs: the sidecar must be
// root, Root is made 0711 and must be traversable all the way, and the UID map
// is loaded (refused if unreadable: UIDs would be given twice).
func (p *UserPool) Prepare() error {
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	if p.prepared {
		return nil
	}
	if p.Root == "" {
		return errors.New("isolated pool: no Root for the users' directories")
	}
	if !p.UIDs.Set() {
		if err := os.MkdirAll(p.Root, 0o700); err != nil {
			return fmt.Errorf("isolated pool: %w", err)
		}
		p.Log.Warn("isolated pool without UIDs: every user's CLI runs as the sidecar's UID, users are separated by directory permissions only (a CLI's shell or file tools can read other users' homes and tokens); give a UID range to separate them",
			zap.Int("uid", os.Geteuid()))
	} else {
		if err := p.UIDs.Validate(); err != nil {
			return fmt.Errorf("isolated pool: UIDs %s: %w", p.UIDs, err)
		}
		if euid := os.Geteuid(); euid != 0 {
			return fmt.Errorf("isolated pool: UIDs %s: the sidecar must run as root to start CLIs as other UIDs and give them their homes (it runs as UID %d)", p.UIDs, euid)
		}
		if err := os.MkdirAll(p.Root, 0o711); err != nil {
			return fmt.Errorf("isolated pool: %w", err)
		}
		f, st, err := openDir(p.Root)
		if err != nil {
			return fmt.Errorf("isolated pool: %w", err)
		}
		if int(st.Uid) != os.Geteuid() {
			f.Close()
			return fmt.Errorf("isolated pool: %s belongs to UID %d: it must be the sidecar's (root's)", p.Root, st.Uid)
		}
		err = f.Chmod(0o711) // users go through, nobody lists the tenants
		f.Close()
		if err == nil {
			err = searchable(p.Root)
		}
		if err != nil {
			return fmt.Errorf("isolated pool: %w", err)
		}
		if p.uids, err = loadUIDTable(filepath.Join(p.Root, ".uids.json"), p.UIDs); err != nil {
			return fmt.Errorf("isolated pool: %w", err)
		}
		if p.Secrets != "" {
			if info, err := os.Stat(p.Secrets); err == nil && info.Mode().Perm()&0o007 != 0 {
				p.Log.Warn("isolated pool: the secrets directory is open to other users, the users' UIDs among them; make it 0700",
					zap.String("dir", p.Secrets), zap.String("mode", fmt.Sprintf("%04o", info.Mode().Perm())))
			}
		}
		p.Log.Info("isolated pool: each user's CLI runs as a UID of its own", zap.String("uids", p.UIDs.String()), zap.Int("users_known", len(p.uids.byKey)))
	}
	p.warnOldLayout()
	if p.PkgCache != "" {
		took := time.Now()
		if err := p.unpackPackage(); err != nil {
			p.Log.Warn("isolated pool: the CLI's package is not shared; each user's CLI unpacks its own copy into its home", zap.String("dir", p.PkgCache), zap.Error(err))
		} else {
			p.pkgReady = true
			p.Log.Info("isolated pool: the CLI's package is unpacked once, shared read-only", zap.String("dir", p.PkgCache), zap.Duration("took", time.Since(took)))
		}
	}
	p.prepared = true
	return nil
}

// Acquire returns a dialer for the CLI of user of tenant, starting it if needed,
// and a release to call when the tunnel ends.
func (p *UserPool) Acquire(ctx context.Context, tenant, user string) (datapath.CLIDialer, func(), error) {
	if err := checkName("tenant", tenant); err != nil {
		return datapath.CLIDialer{}, nil, err
	}
	if err := checkName("user", user); err != nil {
		return datapath.CLIDialer{}, nil, err
	}
	if err := p.Prepare(); err != nil {
		return datapath.CLIDialer{}, nil, err
	}
	key := tenant + "/" + user // neither name holds a "/"
	p.mu.Lock()
	if p.users == nil {
		p.users = map[string]*userCLI{}
	}
	u := p.users[key]
	if u != nil && u.child != nil {
		select {
		case <-u.child.Done(): // it died: start again
			delete(p.users, key)
			u = nil
		default:
		}
	}
	if u == nil {
		if err := p.makeRoomLocked(); err != nil {
			p.mu.Unlock()
			return datapath.CLIDialer{}, nil, err
		}
		u = &userCLI{tenant: tenant, user: user, starting: make(chan struct{})}
		p.users[key] = u
		go p.startUser(u)
	}
	u.tunnels++
	u.lastUsed = time.Now()
	p.mu.Unlock()

	select {
	case <-u.starting:
	case <-ctx.Done():
		p.release(u)
		return datapath.CLIDialer{}, nil, ctx.Err()
	}
	if u.err != nil {
		p.release(u)
		p.mu.Lock()
		if p.users[key] == u {
			delete(p.users, key)
		}
		p.mu.Unlock()
		return datapath.CLIDialer{}, nil, u.err
	}
	var once sync.Once
	return datapath.CLIDialer{Addr: u.child.Addr, Token: u.child.Token}, func() { once.Do(func() { p.release(u) }) }, nil
}

func (p *UserPool) release(u *userCLI) {
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
	for key, u := range p.users {
		if u.tunnels == 0 && u.child != nil && (victim == "" || u.lastUsed.Before(oldest)) {
			victim, oldest = key, u.lastUsed
		}
	}
	if victim == "" {
		return fmt.Errorf("%w (cap %d)", ErrPoolFull, p.Cap)
	}
	p.stopLocked(victim, "evicted: cap reached")
	return nil
}

func (p *UserPool) stopLocked(key, why string) {
	u := p.users[key]
	delete(p.users, key)
	if u != nil && u.child != nil {
		p.Log.Info("stopping a user's CLI", zap.String("tenant", u.tenant), zap.String("user", u.user), zap.String("why", why))
		go u.child.Stop(5 * time.Second)
	}
}

func (p *UserPool) startUser(u *userCLI) {
	defer close(u.starting)
	spec, err := p.prepareUser(u.tenant, u.user)
	if err != nil {
		u.err = err
		return
	}
	start := p.start
	if start == nil {
		start = func(ctx context.Context, s childSpec) (*Child, error) {
			c, err := startChild(ctx, s)
			if err != nil && s.Cred != nil {
				if why := executableByOthers(s.Command); why != nil {
					err = fmt.Errorf("%w (as UID %d: %v)", err, s.Cred.Uid, why)
				}
			}
			return c, err
		}
	}
	child, err := start(context.Background(), spec)
	if err != nil {
		u.err = fmt.Errorf("isolated pool: start CLI for %s/%s: %w", u.tenant, u.user, err)
		return
	}
	p.mu.Lock()
	u.child = child
	p.mu.Unlock()
	fields := []zap.Field{zap.String("tenant", u.tenant), zap.String("user", u.user), zap.String("addr", child.Addr)}
	if spec.Cred != nil {
		fields = append(fields, zap.Uint32("uid", spec.Cred.Uid))
	}
	p.Log.Info("started a user's CLI", fields...)
}

// Run reaps idle CLIs until ctx ends, then stops them all.
func (p *UserPool) Run(ctx context.Context) {
	periodic.Every(ctx, max(p.IdleAfter/4, 100*time.Millisecond), func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for key, u := range p.users {
			if u.child != nil && u.tunnels == 0 && time.Since(u.lastUsed) > p.IdleAfter {
				p.stopLocked(key, "idle")
			}
		}
		return true
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	for key := range p.users {
		p.stopLocked(key, "shutting down")
	}
}

// Running lists the users ("tenant/user") whose CLI runs, with its pid (for
// tests and the debug view).
func (p *UserPool) Running() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for key, u := range p.users {
		if u.child != nil {
			out[key] = u.child.Cmd.Process.Pid
		}
	}
	return out
}

// UIDOf returns the UID the user's CLI runs as, if the pool gave it one (only
// with UIDs set; kept across restarts in Root/.uids.json).
func (p *UserPool) UIDOf(tenant, user string) (int, bool) {
	p.prepMu.Lock()
	defer p.prepMu.Unlock()
	if p.uids == nil {
		return 0, false
	}
	return p.uids.lookup(tenant + "/" + user)
}
