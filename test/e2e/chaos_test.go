package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/test/harness"
)

// The chaos suite (issue 17): each test breaks one dependency of a mesh of its
// own while users take turns, and reports what they saw — turns completed,
// failed with a clear error, hung — and how long until everything works again.
// No call may hang past its bound: every call below runs under callBound, and a
// call that reaches it counts as hung and fails the test.

// callBound is the longest any one user call may take during a fault: the
// sidecar's --consul-timeout (2s) plus a turn of the model double, with room
// for two loaded cores.
const callBound = 15 * time.Second

// outcome counts what users saw during one phase of a fault.
type outcome struct {
	mu                    sync.Mutex
	completed, failed     int
	hung                  int
	errors                []string
	slowest               time.Duration
	clearErrors, unclears int
}

// record files one call's result: err nil is completed; a context deadline is
// hung; any other error is a failure, clear when it names what is unavailable.
func (o *outcome) record(took time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.slowest = max(o.slowest, took)
	switch {
	case err == nil:
		o.completed++
	case errors.Is(err, context.DeadlineExceeded) || took >= callBound:
		o.hung++
		o.errors = append(o.errors, "hung: "+err.Error())
	default:
		o.failed++
		msg := err.Error()
		if strings.Contains(msg, "unavailable") {
			o.clearErrors++
		} else {
			o.unclears++
		}
		if len(o.errors) < 5 {
			o.errors = append(o.errors, msg)
		}
	}
}

func (o *outcome) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return fmt.Sprintf("%d completed, %d failed (%d with a clear error), %d hung, slowest %v; errors %q",
		o.completed, o.failed, o.clearErrors, o.hung, o.slowest.Round(time.Millisecond), o.errors)
}

// bounded runs one user call under callBound and files it in o.
func bounded(ctx context.Context, o *outcome, call func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, callBound)
	defer cancel()
	start := time.Now()
	err := call(ctx)
	o.record(time.Since(start), err)
	return err
}

// startChaosMesh is a mesh of its own (the fault must not reach other tests).
func startChaosMesh(t *testing.T) *meshEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: starts a mesh of its own")
	}
	m, err := harness.StartMesh(t.Context(), harness.MeshOptions{Instances: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return &meshEnv{m}
}

// TestChaosConsulPaused: Consul stops answering (SIGSTOP, state kept) for
// longer than the sidecars' check TTL while users take turns, then resumes.
// Existing users on existing tunnels go on; a new tunnel resuming a session this
// sidecar has seen goes on (its record is answered from memory); a new user's
// session.create is refused with a clear error within the bound, never left
// without an answer; after Consul resumes, a new user's turn works again.
func TestChaosConsulPaused(t *testing.T) {
	env := startChaosMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	// Before: two users with a session and a turn each.
	type user struct {
		name    string
		client  *copilot.Client
		session *copilot.Session
	}
	var users []*user
	for _, name := range []string{"ann", "ben"} {
		u := &user{name: name, client: env.clientOf(ctx, t, "acme", name)}
		u.session = env.newSession(ctx, t, u.client)
		if _, err := ownTurn(ctx, u.session, "before "+name); err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}

	// The fault: Consul paused for longer than the check TTL (3s here).
	const pause = 6 * time.Second
	if err := env.Consul.Proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			env.Consul.Proc.Signal(syscall.SIGCONT)
		}
	}
	defer resume()

	var existing, reopened, newcomers outcome
	var wg sync.WaitGroup
	// Existing users keep taking turns on their tunnels throughout the pause.
	for _, u := range users {
		wg.Go(func() {
			for i := 0; time.Since(pausedAt) < pause; i++ {
				bounded(ctx, &existing, func(ctx context.Context) error {
					_, err := ownTurn(ctx, u.session, fmt.Sprintf("during %s %d", u.name, i))
					return err
				})
			}
		})
	}
	// A new tunnel resumes ann's session and takes a turn.
	wg.Go(func() {
		time.Sleep(time.Second)
		again := env.clientOf(ctx, t, "acme", "ann")
		var s *copilot.Session
		err := bounded(ctx, &reopened, func(ctx context.Context) (err error) {
			s, err = again.ResumeSession(ctx, users[0].session.SessionID, &copilot.ResumeSessionConfig{Model: "double-1", Provider: env.provider(),
				OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			return err
		})
		if err == nil {
			bounded(ctx, &reopened, func(ctx context.Context) error {
				_, err := ownTurn(ctx, s, "reopened during the pause")
				return err
			})
		}
	})
	// A new user creates a session: the registry must be written first.
	wg.Go(func() {
		time.Sleep(2 * time.Second)
		c := env.clientOf(ctx, t, "acme", "cat")
		bounded(ctx, &newcomers, func(ctx context.Context) error {
			_, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(),
				OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			return err
		})
	})
	wg.Wait()
	resume()
	resumedAt := time.Now()

	// After: a new user's whole turn works again; time it from the resume.
	var after outcome
	var recovered time.Duration
	pctx, pcancel := context.WithTimeout(ctx, time.Minute)
	defer pcancel()
	err := harness.Poll(pctx, 200*time.Millisecond, func() error {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token("dan", "acme")}})
		if err := c.Start(pctx); err != nil {
			return err
		}
		defer c.Stop()
		return bounded(pctx, &after, func(ctx context.Context) error {
			s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(),
				OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			if err != nil {
				return err
			}
			_, err = ownTurn(ctx, s, "after the pause")
			return err
		})
	})
	recovered = time.Since(resumedAt)
	t.Logf("Consul paused %v (check TTL 3s, --consul-timeout 2s):\n  existing users, existing tunnels: %s\n  new tunnel resuming a session: %s\n  new user's session.create: %s\n  after the resume: a new user's full turn worked %v after SIGCONT (%s)",
		pause, &existing, &reopened, &newcomers, recovered.Round(time.Millisecond), &after)
	if err != nil {
		t.Fatalf("no new user's turn worked within a minute of the resume: %v", err)
	}
	for name, o := range map[string]*outcome{"existing users": &existing, "the reopened tunnel": &reopened, "the new user": &newcomers} {
		if o.hung > 0 {
			t.Errorf("%s: a call hung past %v", name, callBound)
		}
		if o.unclears > 0 {
			t.Errorf("%s: a call failed without saying what is unavailable", name)
		}
	}
	if existing.completed == 0 || existing.failed > 0 {
		t.Errorf("existing users on existing tunnels did not go on: %s", &existing)
	}
	if reopened.completed != 2 {
		t.Errorf("a new tunnel resuming a session this sidecar had seen did not go on: %s", &reopened)
	}
	if newcomers.completed+newcomers.clearErrors != 1 {
		t.Errorf("the new user's create got neither a session nor a clear error: %s", &newcomers)
	}
}
