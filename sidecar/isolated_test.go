package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
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
	acme, relA, err := p.Acquire(t.Context(), "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer relA()
	globex, relG, err := p.Acquire(t.Context(), "globex", "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer relG()
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
	core, logs := observer.New(zapcore.WarnLevel)
	p.Log = zap.New(core)
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

func TestParseUIDRange(t *testing.T) {
	for _, c := range []struct {
		in   string
		want UIDRange
		err  string
	}{
		{in: "200000-200999", want: UIDRange{First: 200000, Count: 1000}},
		{in: " 5000-5000 ", want: UIDRange{First: 5000, Count: 1}},
		{in: "1-4294967294", want: UIDRange{First: 1, Count: 4294967294}},
		{in: "", err: `UID range "": want FIRST-LAST`},
		{in: "200000", err: `UID range "200000": want FIRST-LAST`},
		{in: "a-b", err: `UID range "a-b": want FIRST-LAST`},
		{in: "200000-200999-3", err: `UID range "200000-200999-3": want FIRST-LAST`},
		{in: "-5-10", err: `UID range "-5-10": want FIRST-LAST`},
		{in: "300-200", err: `UID range "300-200": the last UID is below the first`},
		{in: "0-999", err: `UID range "0-999": the range must not include UID 0 (root)`},
		{in: "1-4294967295", err: `UID range "1-4294967295": the range goes past 4294967294`},
	} {
		got, err := ParseUIDRange(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, %v; want error %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want || got.String() != strings.TrimSpace(c.in) {
			t.Errorf("%q: %+v (%s), %v; want %+v", c.in, got, got, err, c.want)
		}
	}
	if (UIDRange{}).Set() || (UIDRange{}).String() != "" {
		t.Error("the zero range counts as set")
	}
	// A range set by hand is checked too.
	p := &UserPool{Root: openTempDir(t), UIDs: UIDRange{First: 0, Count: 10}, Log: zap.NewNop()}
	if err := p.Prepare(); err == nil || !strings.Contains(err.Error(), "UID 0") {
		t.Fatalf("range with root: %v", err)
	}
}

// uidPool is newPool with a UID range.
func uidPool(t *testing.T, rng string) (*UserPool, *fakeStarts) {
	t.Helper()
	needRoot(t)
	p, f := newPool(t, 10)
	var err error
	if p.UIDs, err = ParseUIDRange(rng); err != nil {
		t.Fatal(err)
	}
	return p, f
}

func ownerOf(t *testing.T, path string) (uid, gid int, perm os.FileMode) {
	t.Helper()
	info, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := info.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), info.Mode().Perm()
}

func TestUserPoolUIDs(t *testing.T) {
	p, f := uidPool(t, "200100-200109")
	_, relA, err := p.Acquire(t.Context(), "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer relA()
	_, relG, err := p.Acquire(t.Context(), "globex", "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer relG()
	uids := map[string]int{}
	for _, tenant := range []string{"acme", "globex"} {
		uid, ok := p.UIDOf(tenant, "alice")
		if !ok || !p.UIDs.contains(uid) {
			t.Fatalf("%s/alice: UID %d %v", tenant, uid, ok)
		}
		uids[tenant] = uid
		spec, _ := f.specOf(filepath.Join(p.Root, tenant, "alice", "home"))
		if c := spec.Cred; c == nil || int(c.Uid) != uid || int(c.Gid) != uid || c.Groups == nil || len(c.Groups) != 0 || c.NoSetGroups {
			t.Fatalf("%s/alice runs with credential %+v, want UID/GID %d and no groups", tenant, spec.Cred, uid)
		}
		// Tenant: the sidecar's, traversable, not listable. User, home, tmp: the user's, 0700.
		if u, g, perm := ownerOf(t, filepath.Join(p.Root, tenant)); u != 0 || g != 0 || perm != 0o711 {
			t.Errorf("tenant %s: %d:%d %04o, want 0:0 0711", tenant, u, g, perm)
		}
		for _, dir := range []string{"", "home", "tmp"} {
			path := filepath.Join(p.Root, tenant, "alice", dir)
			if u, g, perm := ownerOf(t, path); u != uid || g != uid || perm != 0o700 {
				t.Errorf("%s: %d:%d %04o, want %d:%d 0700", path, u, g, perm, uid, uid)
			}
		}
	}
	if uids["acme"] == uids["globex"] {
		t.Fatalf("acme/alice and globex/alice share UID %d", uids["acme"])
	}
	if u, _, perm := ownerOf(t, p.Root); u != 0 || perm != 0o711 {
		t.Errorf("root: %d %04o, want 0 0711", u, perm)
	}
	mapFile := filepath.Join(p.Root, ".uids.json")
	if u, _, perm := ownerOf(t, mapFile); u != 0 || perm != 0o600 {
		t.Errorf("%s: %d %04o, want 0 0600", mapFile, u, perm)
	}
	var saved uidFile
	if b, err := os.ReadFile(mapFile); err != nil || json.Unmarshal(b, &saved) != nil ||
		saved.UIDs["acme/alice"] != uids["acme"] || saved.UIDs["globex/alice"] != uids["globex"] {
		t.Fatalf("%s: %+v %v", mapFile, saved, err)
	}

	// A restarted pool gives each the same UID again, and a newcomer another.
	stopAll(p)
	again, f2 := newPool(t, 10)
	again.Root, again.UIDs = p.Root, p.UIDs
	for _, tenant := range []string{"globex", "acme"} { // the other order
		if _, rel, err := again.Acquire(t.Context(), tenant, "alice"); err != nil {
			t.Fatal(err)
		} else {
			rel()
		}
		if uid, _ := again.UIDOf(tenant, "alice"); uid != uids[tenant] {
			t.Fatalf("%s/alice: UID %d after a restart, was %d", tenant, uid, uids[tenant])
		}
	}
	_, rel, err := again.Acquire(t.Context(), "acme", "bob")
	if err != nil {
		t.Fatal(err)
	}
	rel()
	if bob, _ := again.UIDOf("acme", "bob"); bob == uids["acme"] || bob == uids["globex"] || !again.UIDs.contains(bob) {
		t.Fatalf("bob's UID %d (alices: %v)", bob, uids)
	}
	if f2.count() != 3 {
		t.Fatalf("%d starts", f2.count())
	}
}

func TestUserPoolUIDExhaustion(t *testing.T) {
	p, _ := uidPool(t, "200200-200201")
	for _, user := range []string{"ann", "ben"} {
		_, rel, err := p.Acquire(t.Context(), "acme", user)
		if err != nil {
			t.Fatal(err)
		}
		rel()
	}
	_, _, err := p.Acquire(t.Context(), "acme", "cat")
	if !errors.Is(err, ErrNoUID) || !strings.Contains(err.Error(), "acme/cat") || !strings.Contains(err.Error(), "200200-200201") {
		t.Fatalf("third user in a range of two: %v", err)
	}
	// Stopping a user does not free its UID (its files still carry it).
	stopAll(p)
	if _, _, err := p.Acquire(t.Context(), "globex", "cat"); !errors.Is(err, ErrNoUID) {
		t.Fatalf("after stopping every CLI: %v", err)
	}
	if _, rel, err := p.Acquire(t.Context(), "acme", "ann"); err != nil {
		t.Fatalf("a known user in a full range: %v", err)
	} else {
		rel()
	}
	if _, err := os.Stat(filepath.Join(p.Root, "acme", "cat")); err == nil {
		t.Fatal("a directory was made for a user with no UID")
	}
}

func TestUserPoolUIDMapErrors(t *testing.T) {
	needRoot(t)
	for name, text := range map[string]string{
		"not JSON":    "{",
		"shared UID":  `{"uids": {"acme/ann": 200300, "acme/ben": 200300}}`,
		"bad key":     `{"uids": {"../ann": 200300}}`,
		"UID 0":       `{"uids": {"acme/ann": 0}}`,
		"no tenant":   `{"uids": {"ann": 200300}}`,
		"wrong types": `{"uids": {"acme/ann": "200300"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			p, f := uidPool(t, "200300-200309")
			mapFile := filepath.Join(p.Root, ".uids.json")
			os.WriteFile(mapFile, []byte(text), 0o600)
			if _, _, err := p.Acquire(t.Context(), "acme", "cat"); err == nil || !strings.Contains(err.Error(), mapFile) {
				t.Fatalf("map %s: %v", text, err)
			}
			if f.count() != 0 {
				t.Fatal("a CLI started with an unusable UID map")
			}
			if b, _ := os.ReadFile(mapFile); string(b) != text {
				t.Fatalf("the unusable map was rewritten: %s", b)
			}
		})
	}
}

func TestUserPoolAdoptsOldHome(t *testing.T) {
	p, _ := uidPool(t, "200400-200409")
	// A home from before UIDs: the sidecar's (root's), with the CLI's files.
	home := filepath.Join(p.Root, "acme", "ann", "home")
	os.MkdirAll(filepath.Join(home, "session-state", "s1"), 0o755)
	os.WriteFile(filepath.Join(home, "session-state", "s1", "events.jsonl"), []byte("{}"), 0o600)
	outside := filepath.Join(openTempDir(t), "outside")
	os.WriteFile(outside, []byte("not ann's"), 0o600)
	os.Link(outside, filepath.Join(home, "hardlink"))        // could be anyone's file
	os.Symlink(outside, filepath.Join(home, "symlink"))      // the link changes hands, not its target
	os.WriteFile(filepath.Join(home, "foreign"), nil, 0o600) // someone else's file
	os.Chown(filepath.Join(home, "foreign"), 12345, 12345)   //
	_, rel, err := p.Acquire(t.Context(), "acme", "ann")
	if err != nil {
		t.Fatal(err)
	}
	rel()
	uid, _ := p.UIDOf("acme", "ann")
	for _, path := range []string{"session-state", "session-state/s1", "session-state/s1/events.jsonl", "symlink"} {
		if u, g, _ := ownerOf(t, filepath.Join(home, path)); u != uid || g != uid {
			t.Errorf("%s: %d:%d, want %d", path, u, g, uid)
		}
	}
	for path, want := range map[string]int{filepath.Join(home, "hardlink"): 0, outside: 0, filepath.Join(home, "foreign"): 12345} {
		if u, _, _ := ownerOf(t, path); u != want {
			t.Errorf("%s: UID %d, want %d (left alone)", path, u, want)
		}
	}

	// A home of a third UID is not taken over.
	other := filepath.Join(p.Root, "acme", "bob", "home")
	os.MkdirAll(other, 0o700)
	os.Chown(filepath.Dir(other), 12345, 12345)
	if _, _, err := p.Acquire(t.Context(), "acme", "bob"); err == nil || !strings.Contains(err.Error(), "belongs to UID 12345") {
		t.Fatalf("bob's dir owned by 12345: %v", err)
	}
	if u, _, _ := ownerOf(t, filepath.Dir(other)); u != 12345 {
		t.Fatal("the third UID's dir changed hands")
	}
}

func TestUserPoolRefusesSymlinkedHome(t *testing.T) {
	p, _ := uidPool(t, "200500-200509")
	_, rel, err := p.Acquire(t.Context(), "acme", "ann")
	if err != nil {
		t.Fatal(err)
	}
	rel()
	stopAll(p)
	// ann (her UID owns her dir) swaps her home for a link to somewhere else.
	target := openTempDir(t)
	home := filepath.Join(p.Root, "acme", "ann", "home")
	os.RemoveAll(home)
	os.Symlink(target, home)
	if _, _, err := p.Acquire(t.Context(), "acme", "ann"); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("symlinked home: %v", err)
	}
	if u, _, perm := ownerOf(t, target); u != 0 || perm != 0o711 {
		t.Fatalf("the link's target changed: %d %04o", u, perm)
	}
}

// The test binary doubles as a fake CLI (CLIMESH_FAKE_CLI=1, given through a
// user's secrets): it notes who it runs as, tries to read CLIMESH_FAKE_READ,
// leaves a 0600 file in its home, then listens on --port like the CLI.
func init() {
	if os.Getenv("CLIMESH_FAKE_CLI") == "1" {
		fakeCopilot()
		os.Exit(0)
	}
}

func fakeCopilot() {
	port := ""
	for i, a := range os.Args {
		if a == "--port" && i+1 < len(os.Args) {
			port = os.Args[i+1]
		}
	}
	groups, _ := os.Getgroups()
	wd, _ := os.Getwd()
	report := fmt.Sprintf("uid=%d gid=%d groups=%v wd=%s\n", os.Getuid(), os.Getgid(), groups, wd)
	if path := os.Getenv("CLIMESH_FAKE_READ"); path != "" {
		b, err := os.ReadFile(path)
		report += fmt.Sprintf("read %s: %q %v\n", path, b, err)
	}
	home := os.Getenv("HOME")
	os.WriteFile(filepath.Join(home, "notes"), []byte(fmt.Sprintf("notes of UID %d", os.Getuid())), 0o600)
	if err := os.WriteFile(filepath.Join(home, "report"), []byte(report), 0o600); err != nil {
		os.Exit(3)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		os.Exit(4)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(0)
		}
		c.Close()
	}
}

// procStatus returns the Uid, Gid and Groups lines of pid.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && (k == "Uid" || k == "Gid" || k == "Groups") {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

// TestUserPoolRealUIDs starts real processes through the real start path under
// two UIDs (the same user name in two tenants) and shows that the second cannot
// read the first's 0600 file in its 0700 home.
//
// The executable must be reachable by an unprivileged UID: o+x on every
// directory down to it and o+rx on the file, after symlinks (for the real CLI,
// /work/main/.tools/bin/copilot -> .tools/node/node_modules/@github/copilot-linux-x64/copilot:
// /, /work, /work/main, .tools, node, node_modules, @github and
// copilot-linux-x64 need o+x, the binary o+rx; they are 0755 here). The test
// binary lives in a 0700 build directory, so it is copied out to a 0755 one.
func TestUserPoolRealUIDs(t *testing.T) {
	needRoot(t)
	t.Setenv("CLIMESH_SIDECAR_SECRET", "sidecar-only")
	// Give the sidecar (this test) a supplementary group, which the CLIs must not keep.
	groups, err := syscall.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setgroups(append(slices.Clone(groups), 4242)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setgroups(groups) })
	rng, _ := ParseUIDRange("200600-200609")
	p := &UserPool{Command: "/bin/sh", Root: openTempDir(t), Secrets: t.TempDir(), UIDs: rng, Cap: 5, IdleAfter: time.Minute, Log: zap.NewNop()}
	t.Cleanup(func() { stopAll(p) })
	if err := p.Prepare(); err != nil {
		t.Fatal(err)
	}

	t.Run("sh", func(t *testing.T) {
		// What the pool runs for acme/alice and globex/alice, with /bin/sh -c in
		// place of the CLI's arguments.
		run := func(tenant, script string) (string, error) {
			spec, err := p.prepareUser(tenant, "alice")
			if err != nil {
				t.Fatal(err)
			}
			out, err := spec.cmd("tok-"+tenant, "-c", script).CombinedOutput()
			return strings.TrimSpace(string(out)), err
		}
		acmeHome := filepath.Join(p.Root, "acme", "alice", "home")
		out, err := run("acme", `id -u; id -G; umask 077; echo acme-alice-secret > "$HOME/token"; env`)
		if err != nil {
			t.Fatalf("acme/alice: %v: %s", err, out)
		}
		acmeUID, _ := p.UIDOf("acme", "alice")
		lines := strings.Split(out, "\n")
		if lines[0] != strconv.Itoa(acmeUID) || lines[1] != strconv.Itoa(acmeUID) {
			t.Fatalf("acme/alice runs as %q, groups %q; want UID %d and only GID %d", lines[0], lines[1], acmeUID, acmeUID)
		}
		if strings.Contains(out, "CLIMESH_SIDECAR_SECRET") || !strings.Contains(out, "HOME="+acmeHome) || !strings.Contains(out, "COPILOT_CONNECTION_TOKEN=tok-acme") {
			t.Fatalf("acme/alice's environment:\n%s", out)
		}
		if u, _, perm := ownerOf(t, filepath.Join(acmeHome, "token")); u != acmeUID || perm != 0o600 {
			t.Fatalf("acme/alice's file: %d %04o", u, perm)
		}

		out, err = run("globex", `id -u; cat `+filepath.Join(acmeHome, "token")+`; ls `+filepath.Join(p.Root, "acme"))
		globexUID, _ := p.UIDOf("globex", "alice")
		t.Logf("globex/alice (UID %d) reading acme/alice's (UID %d) file: %v\n%s", globexUID, acmeUID, err, out)
		if err == nil || globexUID == acmeUID || !strings.HasPrefix(out, strconv.Itoa(globexUID)+"\n") ||
			strings.Contains(out, "acme-alice-secret") || !strings.Contains(out, "Permission denied") {
			t.Fatalf("globex/alice reads acme/alice's home: %v\n%s", err, out)
		}
	})

	t.Run("pool", func(t *testing.T) {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		bin := openTempDir(t)
		os.Chmod(bin, 0o755)
		src, err := os.Open(exe)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		dst, err := os.OpenFile(filepath.Join(bin, "fake-copilot"), os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		dst.Close()
		p.Command = filepath.Join(bin, "fake-copilot")
		os.Chmod(p.Command, 0o755) // whatever the umask
		first := filepath.Join(p.Root, "acme", "bob", "home")
		writeSecrets(t, p, "acme", "bob", "CLIMESH_FAKE_CLI=1\n")
		writeSecrets(t, p, "globex", "bob", "CLIMESH_FAKE_CLI=1\nCLIMESH_FAKE_READ="+filepath.Join(first, "notes")+"\n")
		for _, tenant := range []string{"acme", "globex"} {
			d, rel, err := p.Acquire(t.Context(), tenant, "bob")
			if err != nil {
				t.Fatal(err)
			}
			defer rel()
			if c, err := net.Dial("tcp", d.Addr); err != nil {
				t.Fatalf("%s/bob's CLI: %v", tenant, err)
			} else {
				c.Close()
			}
			uid, _ := p.UIDOf(tenant, "bob")
			pid := p.Running()[tenant+"/bob"]
			st := procStatus(t, pid)
			id := strconv.Itoa(uid)
			want := map[string]string{"Uid": strings.Repeat(id+" ", 3) + id, "Gid": strings.Repeat(id+" ", 3) + id, "Groups": ""}
			for k, v := range want {
				if st[k] != v {
					t.Errorf("%s/bob's CLI (pid %d) %s: %q, want %q", tenant, pid, k, st[k], v)
				}
			}
			environ, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
			if strings.Contains(string(environ), "CLIMESH_SIDECAR_SECRET") || !strings.Contains(string(environ), "COPILOT_CONNECTION_TOKEN="+d.Token) {
				t.Errorf("%s/bob's CLI environment: %q", tenant, environ)
			}
		}
		report, err := os.ReadFile(filepath.Join(p.Root, "globex", "bob", "home", "report"))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("globex/bob's CLI reports:\n%s", report)
		if !strings.Contains(string(report), "permission denied") || strings.Contains(string(report), "notes of UID") ||
			!strings.Contains(string(report), "groups=[]") || !strings.Contains(string(report), "wd="+filepath.Join(p.Root, "globex", "bob", "home")) {
			t.Fatalf("globex/bob's CLI: %s", report)
		}
	})
}

// TestUserPoolRealCLIUnderUID starts the real Copilot CLI, if it is installed
// here, as a pool user's UID: it must listen, as that UID.
func TestUserPoolRealCLIUnderUID(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("starts the real CLI")
	}
	cli, err := filepath.Abs("../.tools/bin/copilot")
	if err == nil {
		_, err = os.Stat(cli)
	}
	if err != nil {
		t.Skip("no Copilot CLI in ../.tools/bin")
	}
	rng, _ := ParseUIDRange("200700-200709")
	core, logs := observer.New(zapcore.InfoLevel)
	root := openTempDir(t)
	if executableByOthers(cli) != nil {
		// The checkout may sit where only its owner can enter (a CI's temporary
		// clone): run a link of the binary from a directory the UIDs can reach.
		if cli, err = linkForAll(cli, root); err != nil {
			t.Fatal(err)
		}
		if err := executableByOthers(cli); err != nil {
			t.Fatalf("the CLI cannot run as another UID: %v", err)
		}
	}
	p := &UserPool{Command: cli, Root: root, UIDs: rng, PkgCache: filepath.Join(root, ".copilot-pkg"), Cap: 5, IdleAfter: time.Minute, Log: zap.New(core)}
	t.Cleanup(func() { stopAll(p) })
	if err := p.Prepare(); err != nil || !p.pkgReady {
		t.Fatalf("prepare: %v; logs %v", err, logs.All())
	}
	began := time.Now()
	d, rel, err := p.Acquire(t.Context(), "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	t.Logf("the CLI listens %s after the first tunnel asked for it", time.Since(began).Round(10*time.Millisecond))
	uid, _ := p.UIDOf("acme", "alice")
	if st := procStatus(t, p.Running()["acme/alice"]); !strings.HasPrefix(st["Uid"], strconv.Itoa(uid)+" ") || st["Groups"] != "" {
		t.Fatalf("the CLI runs as %v, want UID %d and no groups", st, uid)
	}
	if c, err := net.Dial("tcp", d.Addr); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	// It uses the shared package, read-only: no copy of its own in its home.
	if _, err := os.Stat(filepath.Join(root, "acme", "alice", "home", ".cache", "copilot", "pkg")); err == nil {
		t.Fatal("the CLI unpacked its own package")
	}
	if u, _, perm := ownerOf(t, p.PkgCache); u != 0 || perm != 0o755 {
		t.Fatalf("%s: %d %04o", p.PkgCache, u, perm)
	}
}

func TestUserPoolPkgCache(t *testing.T) {
	p, f := newPool(t, 5)
	core, logs := observer.New(zapcore.InfoLevel)
	p.Log = zap.New(core)
	// A "CLI" that unpacks like copilot does, under a strict umask.
	bin := filepath.Join(t.TempDir(), "cli")
	os.WriteFile(bin, []byte(`#!/bin/sh
umask 077
[ "$COPILOT_SEA_EXTRACT_ONLY" = 1 ] && [ "$1" = --binary-version ] || exit 1
mkdir -p "$COPILOT_PKG_CACHE_HOME/pkg/linux-x64/1.0.0/prebuilds"
echo code > "$COPILOT_PKG_CACHE_HOME/pkg/linux-x64/1.0.0/index.js"
echo bin > "$COPILOT_PKG_CACHE_HOME/pkg/linux-x64/1.0.0/prebuilds/runtime.node" && chmod 700 "$COPILOT_PKG_CACHE_HOME/pkg/linux-x64/1.0.0/prebuilds/runtime.node"
`), 0o755)
	p.Command, p.PkgCache = bin, filepath.Join(p.Root, ".copilot-pkg")
	_, rel, err := p.Acquire(t.Context(), "acme", "ann")
	if err != nil {
		t.Fatal(err)
	}
	rel()
	spec, _ := f.specOf(filepath.Join(p.Root, "acme", "ann", "home"))
	if v, _ := envValue(spec.Env, "COPILOT_PKG_CACHE_HOME"); v != p.PkgCache {
		t.Fatalf("COPILOT_PKG_CACHE_HOME %q, want %q (logs %v)", v, p.PkgCache, logs.All())
	}
	pkg := filepath.Join(p.PkgCache, "pkg", "linux-x64", "1.0.0")
	for path, want := range map[string]os.FileMode{p.PkgCache: 0o755, pkg: 0o755, filepath.Join(pkg, "index.js"): 0o644, filepath.Join(pkg, "prebuilds", "runtime.node"): 0o755} {
		if info, err := os.Stat(path); err != nil || info.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %04o", path, info, err, want)
		}
	}

	// A command that does not unpack: a warning, and each CLI on its own.
	q, g := newPool(t, 5)
	core, logs = observer.New(zapcore.InfoLevel)
	q.Log, q.Command, q.PkgCache = zap.New(core), "/bin/true", filepath.Join(q.Root, ".copilot-pkg")
	if _, rel, err := q.Acquire(t.Context(), "acme", "ann"); err != nil {
		t.Fatal(err)
	} else {
		rel()
	}
	if logs.FilterMessageSnippet("package is not shared").Len() != 1 {
		t.Fatalf("no warning: %v", logs.All())
	}
	if spec, _ := g.specOf(filepath.Join(q.Root, "acme", "ann", "home")); slices.ContainsFunc(spec.Env, func(kv string) bool { return strings.HasPrefix(kv, "COPILOT_PKG_CACHE_HOME=") }) {
		t.Fatalf("a package that is not there is given: %v", spec.Env)
	}
}

func TestExecutableByOthers(t *testing.T) {
	dir := openTempDir(t)
	os.Chmod(dir, 0o700)
	bin := filepath.Join(dir, "cli")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	if err := executableByOthers(bin); err == nil || !strings.Contains(err.Error(), dir+" (mode 0700)") {
		t.Fatalf("cli in a 0700 dir: %v", err)
	}
	os.Chmod(dir, 0o711)
	os.Chmod(bin, 0o700)
	if err := executableByOthers(bin); err == nil || !strings.Contains(err.Error(), "o+rx") {
		t.Fatalf("cli 0700: %v", err)
	}
	os.Chmod(bin, 0o755)
	link := filepath.Join(openTempDir(t), "link")
	os.Symlink(bin, link)
	if err := executableByOthers(link); err != nil {
		t.Fatal(err)
	}
}

// linkForAll hard-links (or copies) bin into dir, mode 0755.
func linkForAll(bin, dir string) (string, error) {
	src, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "copilot")
	if os.Link(src, dst) != nil {
		b, err := os.ReadFile(src)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			return "", err
		}
	}
	return dst, os.Chmod(dst, 0o755)
}
