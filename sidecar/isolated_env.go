package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// unpackPackage has the CLI unpack its package into PkgCache (the copilot
// binary does so, and only that, with COPILOT_SEA_EXTRACT_ONLY=1; a version
// already there is kept), then makes it readable and traversable by all, and
// writable by the sidecar only: a CLI must not be able to change the code
// another user's CLI runs.
func (p *UserPool) unpackPackage() error {
	dir := p.PkgCache
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, st, err := openDir(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to UID %d: it must be the sidecar's", dir, st.Uid)
	}
	if err := f.Chmod(0o755); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.Command, "--binary-version")
	cmd.Env = []string{"PATH=" + pathEnv(), "HOME=" + dir, "COPILOT_SEA_EXTRACT_ONLY=1", "COPILOT_PKG_CACHE_HOME=" + dir}
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s --binary-version: %v: %s", p.Command, err, bytes.TrimSpace(out))
	}
	if _, err := os.Stat(filepath.Join(dir, "pkg")); err != nil {
		return fmt.Errorf("%s did not unpack a package into %s", p.Command, dir)
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode().Perm()&^0o022 | 0o444
		if d.IsDir() || mode&0o100 != 0 {
			mode |= 0o111
		}
		if mode == info.Mode().Perm() {
			return nil
		}
		return os.Chmod(path, mode)
	})
	if err != nil {
		return err
	}
	if p.UIDs.Set() {
		return searchable(dir)
	}
	return nil
}

func pathEnv() string {
	if path := os.Getenv("PATH"); path != "" {
		return path
	}
	return "/usr/local/bin:/usr/bin:/bin"
}

// warnOldLayout names homes left from when users were keyed by name alone
// (Root/<user>/home, Root/<user> 0700; a tenant directory is 0711): they are
// not used, and should move to Root/<tenant>/<user>/home.
func (p *UserPool) warnOldLayout() {
	entries, _ := os.ReadDir(p.Root)
	var old []string
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		info, err := e.Info()
		if err != nil || info.Mode().Perm() != 0o700 {
			continue
		}
		if h, err := os.Lstat(filepath.Join(p.Root, e.Name(), "home")); err == nil && h.IsDir() {
			old = append(old, e.Name())
		}
	}
	if len(old) > 0 {
		p.Log.Warn("isolated pool: homes from before tenants (Root/<user>/home) are not used; move each to Root/<tenant>/<user>/home",
			zap.String("root", p.Root), zap.Strings("old_users", old))
	}
}

// prepareUser readies the user's directories (and UID) and says how its CLI runs.
func (p *UserPool) prepareUser(tenant, user string) (childSpec, error) {
	tenantDir := filepath.Join(p.Root, tenant)
	userDir := filepath.Join(tenantDir, user)
	home, tmp := filepath.Join(userDir, "home"), filepath.Join(userDir, "tmp")
	var cred *syscall.Credential
	if p.UIDs.Set() {
		p.prepMu.Lock()
		uid, fresh, err := p.uids.assign(tenant + "/" + user)
		p.prepMu.Unlock()
		if err != nil {
			return childSpec{}, fmt.Errorf("isolated pool: no UID for %s/%s: %w", tenant, user, err)
		}
		if fresh {
			p.Log.Info("gave a user a UID", zap.String("tenant", tenant), zap.String("user", user), zap.Int("uid", uid))
		}
		// The tenant directory stays the sidecar's: its users go through it, none
		// lists it or renames a neighbour. Everything below is the user's.
		if err := ownDir(tenantDir, 0o711, os.Geteuid(), os.Getegid()); err != nil {
			return childSpec{}, fmt.Errorf("isolated pool: directory of tenant %s: %w", tenant, err)
		}
		for _, dir := range []string{userDir, home, tmp} {
			if err := adopt(dir, uid, uid); err != nil {
				return childSpec{}, fmt.Errorf("isolated pool: directories of %s/%s: %w", tenant, user, err)
			}
		}
		// No supplementary groups: an empty list (and NoSetGroups false) drops
		// the sidecar's.
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}, NoSetGroups: false}
	} else {
		if err := os.Mkdir(tenantDir, 0o711); err != nil && !errors.Is(err, fs.ErrExist) {
			return childSpec{}, fmt.Errorf("isolated pool: directory of tenant %s: %w", tenant, err)
		}
		os.Chmod(tenantDir, 0o711)
		for _, dir := range []string{userDir, home, tmp} {
			if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return childSpec{}, fmt.Errorf("isolated pool: directories of %s/%s: %w", tenant, user, err)
			}
			os.Chmod(dir, 0o700)
		}
	}
	secrets, err := p.secrets(tenant, user)
	if err != nil {
		return childSpec{}, err
	}
	return childSpec{Command: p.Command, Home: home, Env: p.childEnv(home, tmp, secrets), Dir: home, Cred: cred}, nil
}

// childEnv is a user's CLI's whole environment but COPILOT_HOME and the token:
// PATH, the shared package, what PassEnv names, the user's secrets, then HOME
// and TMPDIR (last, so that a secrets file cannot move them).
func (p *UserPool) childEnv(home, tmp string, secrets []string) []string {
	env := []string{"PATH=" + pathEnv()}
	p.prepMu.Lock()
	if p.pkgReady {
		env = append(env, "COPILOT_PKG_CACHE_HOME="+p.PkgCache)
	}
	p.prepMu.Unlock()
	for _, name := range p.PassEnv {
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
		}
	}
	env = append(env, secrets...)
	return append(env, "HOME="+home, "TMPDIR="+tmp)
}

// secrets reads Secrets/<tenant>/<user>.env (KEY=VALUE per line, # comments).
func (p *UserPool) secrets(tenant, user string) ([]string, error) {
	if p.Secrets == "" {
		return nil, nil
	}
	path := filepath.Join(p.Secrets, tenant, user+".env")
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("isolated pool: secrets of %s/%s: %w", tenant, user, err)
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
			return nil, fmt.Errorf("isolated pool: %s line %d: want KEY=VALUE (the line is not shown)", path, n)
		}
		env = append(env, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("isolated pool: %s: %w", path, err)
	}
	return env, nil
}
