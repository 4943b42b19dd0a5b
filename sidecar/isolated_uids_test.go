package sidecar

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

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
	mustAcquire(t, p, "acme", "alice")
	mustAcquire(t, p, "globex", "alice")
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

func TestUserPoolPkgCache(t *testing.T) {
	p, f := newPool(t, 5)
	logs := observeLogs(p, zapcore.InfoLevel)
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
	logs = observeLogs(q, zapcore.InfoLevel)
	q.Command, q.PkgCache = "/bin/true", filepath.Join(q.Root, ".copilot-pkg")
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
