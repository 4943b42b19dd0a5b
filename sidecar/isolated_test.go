package sidecar

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/climesh/climesh/sidecar/datapath"
)

// fakeStarts records each start and runs `sleep` as the "CLI".
type fakeStarts struct {
	mu    sync.Mutex
	specs []childSpec
}

func (f *fakeStarts) start(_ context.Context, s childSpec) (*Child, error) {
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// The token names the user: Root/<tenant>/<user>/home.
	c := &Child{Cmd: cmd, Addr: "127.0.0.1:1", Token: "t-" + strings.TrimPrefix(filepath.Dir(s.Home), "/"), done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	f.mu.Lock()
	f.specs = append(f.specs, s)
	f.mu.Unlock()
	return c, nil
}

func (f *fakeStarts) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.specs)
}

// specOf returns the last start for home.
func (f *fakeStarts) specOf(home string) (childSpec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.specs) - 1; i >= 0; i-- {
		if f.specs[i].Home == home {
			return f.specs[i], true
		}
	}
	return childSpec{}, false
}

// openTempDir is a temporary directory other UIDs can traverse (t.TempDir's
// parent is 0700): /tmp/climesh-*, 0711.
func openTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "climesh-pool-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the pool sets UIDs and chowns homes (run the tests as root to cover OS separation)")
	}
}

func newPool(t *testing.T, capacity int) (*UserPool, *fakeStarts) {
	f := &fakeStarts{}
	p := &UserPool{Command: "copilot", Root: openTempDir(t), Secrets: t.TempDir(), Cap: capacity, IdleAfter: 50 * time.Millisecond, Log: zap.NewNop(), start: f.start}
	t.Cleanup(func() { stopAll(p) })
	return p, f
}

func stopAll(p *UserPool) {
	p.mu.Lock()
	var children []*Child
	for key, u := range p.users {
		if u.child != nil {
			children = append(children, u.child)
		}
		delete(p.users, key)
	}
	p.mu.Unlock()
	for _, c := range children {
		c.Stop(time.Second)
	}
}

func writeSecrets(t *testing.T, p *UserPool, tenant, user, text string) {
	t.Helper()
	os.MkdirAll(filepath.Join(p.Secrets, tenant), 0o700)
	if err := os.WriteFile(filepath.Join(p.Secrets, tenant, user+".env"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func envValue(env []string, key string) (string, bool) {
	var v string
	var found bool
	for _, kv := range env { // the last one wins, as in exec
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v, found = val, true
		}
	}
	return v, found
}

func TestUserPoolOneCLIPerUser(t *testing.T) {
	t.Setenv("CLIMESH_SIDECAR_SECRET", "sidecar-only")
	t.Setenv("HTTPS_PROXY", "http://proxy:3128")
	p, f := newPool(t, 5)
	p.PassEnv = []string{"HTTPS_PROXY", "NOT_SET_ANYWHERE"}
	writeSecrets(t, p, "acme", "ann", "# ann's key\nCOPILOT_PROVIDER_KEY=sk-ann\nHOME=/elsewhere\n")
	a1, rel1, err := p.Acquire(t.Context(), "acme", "ann")
	if err != nil {
		t.Fatal(err)
	}
	a2, rel2, _ := p.Acquire(t.Context(), "acme", "ann")
	b, relB, _ := p.Acquire(t.Context(), "acme", "ben")
	if a1 != a2 || a1.Token == b.Token || f.count() != 2 {
		t.Fatalf("ann %v/%v ben %v, %d starts", a1, a2, b, f.count())
	}
	home := filepath.Join(p.Root, "acme", "ann", "home")
	for _, dir := range []string{filepath.Join(p.Root, "acme", "ann"), home, filepath.Join(p.Root, "acme", "ann", "tmp")} {
		if info, err := os.Stat(dir); err != nil || info.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v", dir, info, err)
		}
	}
	spec, ok := f.specOf(home)
	if !ok {
		t.Fatalf("no start in %s: %+v", home, f.specs)
	}
	// The environment is minimal: the sidecar's own is not passed.
	want := map[string]string{"COPILOT_PROVIDER_KEY": "sk-ann", "HOME": home, "TMPDIR": filepath.Join(p.Root, "acme", "ann", "tmp"),
		"HTTPS_PROXY": "http://proxy:3128", "PATH": os.Getenv("PATH")}
	for k, v := range want {
		if got, _ := envValue(spec.Env, k); got != v {
			t.Errorf("ann's %s = %q, want %q (env %v)", k, got, v, spec.Env)
		}
	}
	for _, kv := range spec.Env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := want[k]; !ok {
			t.Errorf("ann's CLI gets %s, not in the minimal environment", k)
		}
	}
	if spec.Dir != home || spec.Cred != nil || spec.Home != home {
		t.Errorf("ann's CLI: dir %q, home %q, credential %+v", spec.Dir, spec.Home, spec.Cred)
	}
	if b, _ := f.specOf(filepath.Join(p.Root, "acme", "ben", "home")); slices.Contains(b.Env, "COPILOT_PROVIDER_KEY=sk-ann") {
		t.Fatal("ben got ann's secret")
	}
	rel1()
	rel2()
	relB()
	rel1() // twice is harmless
}

func TestUserPoolNames(t *testing.T) {
	p, f := newPool(t, 5)
	for _, c := range []struct{ tenant, user, want string }{
		{"acme", "../etc", `user "../etc" cannot name a directory`},
		{"acme", ".hidden", `user ".hidden" cannot name a directory`},
		{"acme", "a/b", `user "a/b" cannot name a directory`},
		{"acme", "..", `user ".." cannot name a directory`},
		{"acme", "", "identity has no user"},
		{"", "ann", "identity has no tenant"},
		{"..", "ann", `tenant ".." cannot name a directory`},
		{"a/b", "ann", `tenant "a/b" cannot name a directory`},
		{".uids.json", "ann", `tenant ".uids.json" cannot name a directory`},
		{strings.Repeat("t", 129), "ann", "cannot name a directory"},
	} {
		if _, _, err := p.Acquire(t.Context(), c.tenant, c.user); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("tenant %q user %q: %v, want %q", c.tenant, c.user, err, c.want)
		}
	}
	if f.count() != 0 {
		t.Fatalf("%d CLIs started for bad names", f.count())
	}
}

func TestUserPoolKeysByTenant(t *testing.T) {
	p, f := newPool(t, 5)
	writeSecrets(t, p, "acme", "alice", "GH_TOKEN=acme-alice\n")
	writeSecrets(t, p, "globex", "alice", "GH_TOKEN=globex-alice\n")
	acme, globex := mustAcquire(t, p, "acme", "alice"), mustAcquire(t, p, "globex", "alice")
	if acme == globex || f.count() != 2 {
		t.Fatalf("two tenants' alice share a CLI: %v %v (%d starts)", acme, globex, f.count())
	}
	running := p.Running()
	if len(running) != 2 || running["acme/alice"] == 0 || running["globex/alice"] == 0 || running["acme/alice"] == running["globex/alice"] {
		t.Fatalf("running %v", running)
	}
	for tenant, token := range map[string]string{"acme": "acme-alice", "globex": "globex-alice"} {
		spec, ok := f.specOf(filepath.Join(p.Root, tenant, "alice", "home"))
		if got, _ := envValue(spec.Env, "GH_TOKEN"); !ok || got != token {
			t.Errorf("%s/alice: GH_TOKEN %q, want %q", tenant, got, token)
		}
	}
	if _, ok := p.UIDOf("acme", "alice"); ok {
		t.Error("a UID without UIDs set")
	}
}

func TestUserPoolSecretsErrors(t *testing.T) {
	p, f := newPool(t, 5)
	writeSecrets(t, p, "acme", "ann", "# fine\nOK=1\n\nsk-very-secret-value\n")
	_, _, err := p.Acquire(t.Context(), "acme", "ann")
	file := filepath.Join(p.Secrets, "acme", "ann.env")
	if err == nil || !strings.Contains(err.Error(), file+" line 4") || strings.Contains(err.Error(), "sk-very") {
		t.Fatalf("bad secrets line: %v (want the file %s, line 4, and no value)", err, file)
	}
	writeSecrets(t, p, "acme", "ann", "=nokey\n")
	if _, _, err := p.Acquire(t.Context(), "acme", "ann"); err == nil || !strings.Contains(err.Error(), "line 1") || strings.Contains(err.Error(), "nokey") {
		t.Fatalf("empty key: %v", err)
	}
	if f.count() != 0 {
		t.Fatal("a CLI started with unreadable secrets")
	}
	// No file: no secrets, the CLI starts.
	if _, rel, err := p.Acquire(t.Context(), "globex", "ann"); err != nil {
		t.Fatal(err)
	} else {
		rel()
	}
}

func TestUserPoolReapsAndRestarts(t *testing.T) {
	p, f := newPool(t, 5)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go p.Run(ctx)
	_, rel, _ := p.Acquire(t.Context(), "acme", "ann")
	pid := p.Running()["acme/ann"]
	rel()
	deadline := time.Now().Add(5 * time.Second)
	for p.Running()["acme/ann"] != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle CLI not reaped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Back on the next connection, in the same home.
	_, rel, _ = p.Acquire(t.Context(), "acme", "ann")
	defer rel()
	if p.Running()["acme/ann"] == pid || f.count() != 2 || f.specs[0].Home != f.specs[1].Home {
		t.Fatalf("restart: pid %d -> %d, specs %v", pid, p.Running()["acme/ann"], f.specs)
	}
	// A CLI that died is started again.
	syscall.Kill(p.Running()["acme/ann"], syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond)
	if _, rel2, err := p.Acquire(t.Context(), "acme", "ann"); err != nil || f.count() != 3 {
		t.Fatalf("dead CLI not restarted: %v, %d starts", err, f.count())
	} else {
		rel2()
	}
}

func TestUserPoolCap(t *testing.T) {
	p, _ := newPool(t, 2)
	_, relA, _ := p.Acquire(t.Context(), "acme", "ann")
	_, relB, _ := p.Acquire(t.Context(), "acme", "ben")
	// Both busy: refused with a clear error.
	if _, _, err := p.Acquire(t.Context(), "acme", "cat"); !errors.Is(err, ErrPoolFull) {
		t.Fatalf("third user while both busy: %v", err)
	}
	// ann goes idle: she is evicted for cat.
	relA()
	if _, relC, err := p.Acquire(t.Context(), "acme", "cat"); err != nil {
		t.Fatal(err)
	} else {
		defer relC()
	}
	if _, ok := p.Running()["acme/ann"]; ok {
		t.Fatal("the idle user was not evicted")
	}
	relB()
}

func TestUserPoolWarnsWithoutUIDs(t *testing.T) {
	p, _ := newPool(t, 2)
	logs := observeLogs(p, zapcore.WarnLevel)
	// A home from before tenants: Root/<user>/home, 0700.
	os.MkdirAll(filepath.Join(p.Root, "olduser", "home"), 0o700)
	_, rel, err := p.Acquire(t.Context(), "acme", "ann")
	if err != nil {
		t.Fatal(err)
	}
	rel()
	if logs.FilterMessageSnippet("directory permissions only").Len() != 1 {
		t.Fatalf("no warning that users share a UID: %v", logs.All())
	}
	if old := logs.FilterMessageSnippet("homes from before tenants").All(); len(old) != 1 || !strings.Contains(fmt.Sprint(old[0].ContextMap()["old_users"]), "olduser") {
		t.Fatalf("old-layout home not named: %v", logs.All())
	}
	if info, err := os.Stat(filepath.Join(p.Root, "acme")); err != nil || info.Mode().Perm() != 0o711 {
		t.Fatalf("tenant dir: %v %v", info, err)
	}
}

// mustAcquire acquires the CLI of tenant/user and releases it when the test ends.
func mustAcquire(t *testing.T, p *UserPool, tenant, user string) datapath.CLIDialer {
	t.Helper()
	d, release, err := p.Acquire(t.Context(), tenant, user)
	if err != nil {
		t.Fatalf("acquire %s/%s: %v", tenant, user, err)
	}
	t.Cleanup(release)
	return d
}

// observeLogs makes p log to a recorder at level and up, and returns it.
func observeLogs(p *UserPool, level zapcore.Level) *observer.ObservedLogs {
	core, logs := observer.New(level)
	p.Log = zap.New(core)
	return logs
}
