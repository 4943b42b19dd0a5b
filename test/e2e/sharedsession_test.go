package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/session/lock"
	"github.com/climesh/climesh/test/harness"
)

// collabRoom creates a shared session owned by "olga" of tenant with the given
// members (membership in the policy's data, which the mesh hot-reloads), and
// returns its name and two climesh-connect addresses for it: one that waits for
// a busy session, one that does not. Tenant "acme" reaches the shared collab
// pool; a scratch pool's tenant, that pool.
func collabRoom(t *testing.T, env *meshEnv, tenant string, members []string) (name, waitAddr, noWaitAddr string) {
	t.Helper()
	name = fmt.Sprintf("room-%d", time.Now().UnixNano())
	dir := t.TempDir()
	p, waitAddr, err := harness.StartConnect(t.Context(), dir, "connect-wait", env.EdgeURL, "--session", name, "--lock-wait", "90s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	q, noWaitAddr, err := harness.StartConnect(t.Context(), dir, "connect-nowait", env.EdgeURL, "--session", name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Stop(time.Second) })

	quoted, _ := json.Marshal(append([]string{"olga"}, members...)) // the owner creates the room: a member
	membersFile := filepath.Join(env.PolicyDir, "members-"+name+".json")
	data := fmt.Sprintf(`{"climesh": {"shared_sessions": {%q: {"tenant": %q, "members": %s}}}}`, name, tenant, quoted)
	if err := os.WriteFile(membersFile, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(membersFile) })

	olga := clientAt(t, waitAddr, env.Token("olga", tenant))
	s, err := olga.CreateSession(t.Context(), &copilot.SessionConfig{SessionID: name, Model: "double-1", Provider: env.provider(),
		OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatalf("olga creates %s: %v", name, err)
	}
	// The CLI writes a session to disk with its first turn.
	if _, err := s.SendAndWait(t.Context(), copilot.MessageOptions{Prompt: "room opened"}); err != nil {
		t.Fatal(err)
	}
	olga.Stop()
	return name, waitAddr, noWaitAddr
}

func clientAt(t *testing.T, addr, token string) *copilot.Client {
	t.Helper()
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: addr, ConnectionToken: token}})
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// resume retries while a member's policy data is still loading.
func resume(ctx context.Context, t *testing.T, c *copilot.Client, env *meshEnv, name string) *copilot.Session {
	t.Helper()
	var err error
	for range 100 {
		var s *copilot.Session
		if s, err = c.ResumeSession(ctx, name, &copilot.ResumeSessionConfig{Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll}); err == nil {
			return s
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("resume %s: %v", name, err)
	return nil
}

// turnOrder reads the session's events.jsonl and checks that every user message
// is followed by its turn's end before the next user message.
func turnOrder(t *testing.T, home, id string) (users, turns int) {
	t.Helper()
	f, err := os.Open(filepath.Join(home, "session-state", id, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	open := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev struct {
			Type string `json:"type"`
		}
		json.Unmarshal(sc.Bytes(), &ev)
		switch ev.Type {
		case "user.message":
			if open {
				t.Fatalf("events.jsonl: a user message began before the previous turn ended (turn %d)", turns+1)
			}
			open = true
			users++
		case "assistant.turn_end", "session.idle":
			if open {
				turns++
			}
			open = false
		}
	}
	return users, turns
}

// ownTurn sends a prompt and waits for the answer to it. Members of a shared
// session see each other's turns, so SendAndWait (which returns at the next
// session.idle) could return at someone else's turn end: wait for our own answer.
func ownTurn(ctx context.Context, s *copilot.Session, prompt string) (string, error) {
	want := "echo: " + prompt
	got := make(chan string, 1)
	failed := make(chan string, 1)
	var sent atomic.Bool
	unsubscribe := s.On(func(ev copilot.SessionEvent) {
		switch d := ev.Data.(type) {
		case *copilot.AssistantMessageData:
			if strings.Contains(d.Content, want) {
				select {
				case got <- d.Content:
				default:
				}
			}
		case *copilot.SessionErrorData: // e.g. the turn was lost with its instance
			if sent.Load() {
				select {
				case failed <- d.Message:
				default:
				}
			}
		}
	})
	defer unsubscribe()
	if _, err := s.Send(ctx, copilot.MessageOptions{Prompt: prompt}); err != nil {
		return "", err
	}
	sent.Store(true)
	select {
	case text := <-got:
		return text, nil
	case msg := <-failed:
		return "", fmt.Errorf("session error: %s", msg)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// dumpSidecars logs the tails of the sidecars whose id starts with prefix, and of
// climesh-connect and Envoy, when the test failed.
func dumpSidecars(t *testing.T, env *meshEnv, prefix string) {
	if !t.Failed() {
		return
	}
	for id, sc := range env.Sidecars {
		if strings.HasPrefix(id, prefix) {
			t.Logf("--- %s ---\n%s", id, sc.Proc.Tail(60))
		}
	}
	t.Logf("--- climesh-connect ---\n%s", env.Connect.Tail(40))
	t.Logf("--- envoy ---\n%s", env.Envoy.Proc.Tail(30))
}

func TestSharedSessionSerialisedTurns(t *testing.T) {
	env := startMesh(t)
	defer dumpSidecars(t, env, "collab")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var members []string
	for i := range 20 {
		members = append(members, fmt.Sprintf("m-%02d", i))
	}
	name, waitAddr, noWaitAddr := collabRoom(t, env, "acme", members)

	// A non-member is refused.
	zed := clientAt(t, waitAddr, env.Token("zed", "acme"))
	if _, err := zed.ResumeSession(ctx, name, &copilot.ResumeSessionConfig{Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll}); err == nil ||
		!strings.Contains(err.Error(), "access denied") {
		t.Fatalf("non-member resume: %v", err)
	}

	// A long turn holds the session; a member who would not wait is told who holds it.
	holder := resume(ctx, t, clientAt(t, waitAddr, env.Token("m-00", "acme")), env, name)
	slow := make(chan error, 1)
	go func() { _, err := ownTurn(ctx, holder, "slow 3000"); slow <- err }()
	busyClient := clientAt(t, noWaitAddr, env.Token("m-01", "acme"))
	busy := resume(ctx, t, busyClient, env, name)
	var busyErr error
	for range 50 { // until m-00's turn has taken the lock
		if _, busyErr = busy.Send(ctx, copilot.MessageOptions{Prompt: "me first"}); busyErr != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if busyErr == nil || !strings.Contains(busyErr.Error(), "session is in use by another user") {
		t.Fatalf("busy send: %v, want the documented busy error", busyErr)
	}
	if err := <-slow; err != nil {
		t.Fatal(err)
	}

	// 20 members send at once and wait their turn: every turn completes.
	var wg sync.WaitGroup
	errs := make(chan error, len(members))
	for _, m := range members {
		wg.Go(func() {
			c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: waitAddr, ConnectionToken: env.Token(m, "acme")}})
			if err := c.Start(ctx); err != nil {
				errs <- fmt.Errorf("%s: %w", m, err)
				return
			}
			defer c.Stop()
			s, err := c.ResumeSession(ctx, name, &copilot.ResumeSessionConfig{Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			if err != nil {
				errs <- fmt.Errorf("%s resume: %w", m, err)
				return
			}
			if _, err := ownTurn(ctx, s, "turn of "+m); err != nil {
				errs <- fmt.Errorf("%s: %w", m, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	// The CLI persists events shortly after it sends them: read until all are there.
	var users, turns int
	err := harness.Poll(ctx, 100*time.Millisecond, func() error {
		if users, turns = turnOrder(t, env.CollabHome, name); users < 22 || turns < users {
			return fmt.Errorf("events.jsonl: %d user messages, %d complete turns", users, turns)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v; want at least 22 (the opening, the long one, 20 members), each ended before the next", err)
	}
	t.Logf("events.jsonl: %d user messages, %d turns, none overlapping", users, turns)
	waits, errs13 := 0.0, 0.0
	for id, sc := range env.Sidecars {
		if strings.HasPrefix(id, "collab") {
			page := sidecarMetrics(t, sc.AdminPort)
			waits += metricValue(page, "climesh_sidecar_lock_wait_seconds_count")
			errs13 += metricValue(page, `climesh_sidecar_refused_total{reason="session_busy"}`)
		}
	}
	if waits < 21 || errs13 < 1 {
		t.Fatalf("collab sidecars counted %v lock waits and %v busy answers", waits, errs13)
	}
}

// TestSharedSessionHolderCrash: the sidecar holding a shared session's turn lock
// is killed (on a collab pool of its own); the lock frees within the bound and
// another member's turn runs on the other instance.
func TestSharedSessionHolderCrash(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const tenant = "crashroom"
	pool := env.startPool(ctx, t, tenant, harness.PoolOptions{Instances: 2,
		Extra: []string{"--mode", "collab", "--lock-ttl", "10s", "--lock-delay", "1s", "--log-level", "debug"}})
	name, waitAddr, _ := collabRoom(t, env, tenant, []string{"m-a", "m-b"})

	holder := resume(ctx, t, clientAt(t, waitAddr, env.Token("m-a", tenant)), env, name)
	go ownTurn(ctx, holder, "slow 60000")
	var h lock.Holder
	err := harness.Poll(ctx, 50*time.Millisecond, func() error {
		pair, _, err := env.Consul.Client.KV().Get("climesh/locks/"+name, nil)
		if err != nil || pair == nil {
			return fmt.Errorf("no lock yet (%v)", err)
		}
		return json.Unmarshal(pair.Value, &h)
	})
	if err != nil || h.User != tenant+"/m-a" {
		t.Fatalf("lock holder %+v: %v", h, err)
	}
	killed := time.Now()
	if err := pool.Sidecars[h.Instance].Proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	// m-b comes in (on the other instance, over the shared session state) and
	// waits for the lock: it frees when Consul invalidates the dead holder's session.
	var text string
	err = harness.Poll(ctx, 500*time.Millisecond, func() error {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: waitAddr, ConnectionToken: env.Token("m-b", tenant)}})
		if err := c.Start(ctx); err != nil {
			return err
		}
		defer c.Stop()
		s, err := c.ResumeSession(ctx, name, &copilot.ResumeSessionConfig{Provider: env.provider(), OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
		if err != nil {
			return err
		}
		tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		text, err = ownTurn(tctx, s, "after the crash")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(killed)
	t.Logf("lock freed and m-b's turn done %.1fs after the holder's sidecar was killed (lock TTL 10s)", took.Seconds())
	if !strings.Contains(text, "echo: after the crash") {
		t.Fatalf("m-b's answer %q", text)
	}
	// Consul invalidates a session between TTL and 2×TTL after its last renewal.
	if took > 2*10*time.Second+20*time.Second { // 2×TTL, lock-delay, re-routing off the dead instance
		t.Fatalf("the lock took %v to free; the TTL is 10s", took)
	}
}
