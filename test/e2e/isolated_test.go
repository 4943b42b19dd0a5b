package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

// cliPIDs finds the running copilot processes whose COPILOT_HOME is under root.
func cliPIDs(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{} // home -> pid
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(string(b), "\x00") {
			if home, ok := strings.CutPrefix(kv, "COPILOT_HOME="); ok && strings.HasPrefix(home, root) {
				pid := filepath.Base(filepath.Dir(p))
				if cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline"); strings.Contains(string(cmd), "--headless") {
					out[home] = pid
				}
			}
		}
	}
	return out
}

// processUID is the real UID a process runs under, from /proc.
func processUID(t *testing.T, pid string) uint32 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			var uid uint32
			fmt.Sscan(rest, &uid)
			return uid
		}
	}
	t.Fatalf("no Uid in /proc/%s/status", pid)
	return 0
}

func TestIsolatedOneCLIPerUser(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	in := func(tenant, user string) *copilot.Client {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token(user, tenant)}})
		if err := c.Start(ctx); err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		t.Cleanup(func() { c.Stop() })
		return c
	}
	solo := func(user string) *copilot.Client { return in("solo", user) }
	create := func(c *copilot.Client, prompt string) *copilot.Session {
		s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: prompt}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// ivy of tenant solo-b is another person than ivy of solo: another CLI, home and UID.
	ivy, max, ivyB := solo("ivy"), solo("max"), in("solo-b", "ivy")
	ivyS, maxS, ivyBS := create(ivy, "ivy's notes"), create(max, "max's notes"), create(ivyB, "the other ivy's notes")
	ivyHome, maxHome := filepath.Join(env.UsersRoot, "solo", "ivy", "home"), filepath.Join(env.UsersRoot, "solo", "max", "home")
	ivyBHome := filepath.Join(env.UsersRoot, "solo-b", "ivy", "home")

	// Three processes, three homes (0700), each session only in its owner's home;
	// run as root, each CLI under a UID of its own that owns its home.
	pids := cliPIDs(t, env.UsersRoot)
	if pids[ivyHome] == "" || pids[maxHome] == "" || pids[ivyBHome] == "" || pids[ivyHome] == pids[maxHome] || pids[ivyHome] == pids[ivyBHome] {
		t.Fatalf("per-user CLIs: %v", pids)
	}
	// Each CLI got its own secret from --user-secrets, and no other user's.
	for home, tu := range map[string][2]string{ivyHome: {"solo", "ivy"}, maxHome: {"solo", "max"}, ivyBHome: {"solo-b", "ivy"}} {
		environ, err := os.ReadFile("/proc/" + pids[home] + "/environ")
		if err != nil {
			t.Fatal(err)
		}
		vars := strings.Split(string(environ), "\x00")
		if want := "CLIMESH_TEST_SECRET=" + harness.UserSecret(tu[0], tu[1]); !slices.Contains(vars, want) {
			t.Errorf("the CLI of %s/%s lacks its secret %s", tu[0], tu[1], want)
		}
		for _, other := range harness.IsolatedUsers {
			if other != tu && strings.Contains(string(environ), harness.UserSecret(other[0], other[1])) {
				t.Errorf("the CLI of %s/%s holds the secret of %s/%s", tu[0], tu[1], other[0], other[1])
			}
		}
	}
	uids := map[string]bool{}
	for home, own := range map[string]string{ivyHome: ivyS.SessionID, maxHome: maxS.SessionID, ivyBHome: ivyBS.SessionID} {
		info, err := os.Stat(home)
		if err != nil || info.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v", home, info, err)
		}
		if os.Geteuid() == 0 {
			uid := processUID(t, pids[home])
			owner := info.Sys().(*syscall.Stat_t).Uid
			if uid == 0 || uid != owner || uids[fmt.Sprint(uid)] {
				t.Fatalf("%s: the CLI runs as UID %d, the home is owned by %d (UIDs so far %v): want a UID of its own that owns its home", home, uid, owner, uids)
			}
			uids[fmt.Sprint(uid)] = true
		}
		entries, _ := os.ReadDir(filepath.Join(home, "session-state"))
		var sessions []string
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") { // the CLI's own lock files
				sessions = append(sessions, e.Name())
			}
		}
		if len(sessions) != 1 || sessions[0] != own {
			t.Fatalf("%s holds sessions %v, want only %s", home, sessions, own)
		}
	}
	// Neither sees, resumes or reads the other's session on the wire.
	list, err := max.ListSessions(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range list {
		if m.SessionID == ivyS.SessionID {
			t.Fatal("max lists ivy's session")
		}
	}
	for who, c := range map[string]*copilot.Client{"max": max, "ivy of solo-b": ivyB} {
		if _, err := c.ResumeSession(ctx, ivyS.SessionID, &copilot.ResumeSessionConfig{Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll}); err == nil ||
			!strings.Contains(err.Error(), "access denied") {
			t.Fatalf("%s resumes ivy's session: %v", who, err)
		}
	}
	ivyB.Stop()

	// Idle: ivy's CLI is reaped; the next connection brings it back, sessions resumable.
	ivy.Stop()
	max.Stop()
	pid := pids[ivyHome]
	err = harness.Poll(ctx, 100*time.Millisecond, func() error {
		if cliPIDs(t, env.UsersRoot)[ivyHome] != "" {
			return fmt.Errorf("ivy's CLI still runs")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	back := solo("ivy")
	r, err := back.ResumeSession(ctx, ivyS.SessionID, &copilot.ResumeSessionConfig{Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := r.SendAndWait(ctx, copilot.MessageOptions{Prompt: "where was I"})
	if err != nil || !strings.Contains(answer(t, ev), "first: ivy's notes") {
		t.Fatalf("resumed after the reap: %v", err)
	}
	if now := cliPIDs(t, env.UsersRoot)[ivyHome]; now == "" || now == pid {
		t.Fatalf("ivy's CLI after the reap: pid %q (was %s)", now, pid)
	}
}

func TestTenantDedicatedPools(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	shared := []string{env.Homes["cli-a"], env.Homes["cli-b"], env.CollabHome}
	where := func(sid string) string {
		for _, h := range shared {
			if _, err := os.Stat(filepath.Join(h, "session-state", sid)); err == nil {
				return "shared"
			}
		}
		if m, _ := filepath.Glob(filepath.Join(env.UsersRoot, "*", "*", "home", "session-state", sid)); len(m) == 1 {
			return "isolated"
		}
		return "nowhere"
	}
	for i := range 6 {
		for tenant, want := range map[string]string{"solo": "isolated", "acme": "shared"} {
			// A client that names another tenant in its own header is not believed.
			c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr,
				ConnectionToken: env.Token(fmt.Sprintf("%s-user-%d", tenant, i), tenant)}})
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
			s, err := c.CreateSession(ctx, &copilot.SessionConfig{SessionID: fmt.Sprintf("%s-%d-%d", tenant, i, time.Now().UnixNano()), Model: "double-1",
				Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "hi"}); err != nil {
				t.Fatal(err)
			}
			if got := where(s.SessionID); got != want {
				t.Fatalf("tenant %s's session is on the %s pool, want %s", tenant, got, want)
			}
			c.Stop()
		}
	}
	// The edge refuses a tenant on a pool it is not admitted to, whatever it sends.
	h := bearer(env.Token("intruder", "globex"))
	h.Set("X-Climesh-Tenant", "solo")
	_, send, recv := rawTunnel(t, env.EdgeURL, h)
	call(t, send, recv, 1, "connect", map[string]string{})
	created := call(t, send, recv, 2, "session.create", map[string]any{"model": "double-1"})
	sid, _ := created["result"].(map[string]any)["sessionId"].(string)
	rec, err := (&registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}).Get(ctx, sid)
	if err != nil || rec == nil || rec.Tenant != "globex" || strings.HasPrefix(rec.Instance, "isolated") {
		t.Fatalf("a globex user with a forged tenant header: %+v %v", rec, err)
	}
}
