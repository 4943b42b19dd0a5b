package sidecar

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

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
	p := &UserPool{Command: cli, Root: root, UIDs: rng, PkgCache: filepath.Join(root, ".copilot-pkg"), Cap: 5, IdleAfter: time.Minute}
	logs := observeLogs(p, zapcore.InfoLevel)
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
