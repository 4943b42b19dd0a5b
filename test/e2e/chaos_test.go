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
		// climesh's own codes (-32010 unavailable, -32011 refused by the edge,
		// -32012 denied, -32013 busy) each come with a message that says what.
		msg := err.Error()
		if strings.Contains(msg, "JSON-RPC Error -3201") || strings.Contains(msg, "climesh:") {
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
func startChaosMesh(t *testing.T, o harness.MeshOptions) *meshEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: starts a mesh of its own")
	}
	m, err := harness.StartMesh(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return &meshEnv{m}
}

// chaosRun is what users saw through one fault.
type chaosRun struct {
	existing  outcome       // users with a session and a tunnel from before, taking turns throughout
	reopened  outcome       // a new tunnel resuming a session from before, and a turn on it
	newcomers outcome       // a new user's session.create during the fault
	after     outcome       // a new user's whole turn after the fault ends, until one works
	recovered time.Duration // from the fault's end to a new user's whole turn
	ending    time.Duration // what ending the fault took (a restart's start-up)
}

// throughFault runs users through a fault: two users with a session and a turn
// each; then fault() starts it and returns what ends it; for window the users
// take turns, a new tunnel resumes the first user's session, a new user creates
// one; then the fault ends, and a new user tries a whole turn until one works
// (recovered is from the end of the fault to that turn's end).
func throughFault(t *testing.T, env *meshEnv, window time.Duration, fault func() (end func())) *chaosRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	type user struct {
		name    string
		session *copilot.Session
	}
	var users []*user
	for _, name := range []string{"ann", "ben"} {
		u := &user{name: name}
		u.session = env.newSession(ctx, t, env.clientOf(ctx, t, "acme", name))
		if _, err := ownTurn(ctx, u.session, "before "+name); err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	run := &chaosRun{}
	end := fault()
	started := time.Now()
	// The fault ends on its own clock: calls held during it (climesh-connect
	// holds them while it reconnects) may complete after.
	var endedAt time.Time
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		time.Sleep(window)
		endStart := time.Now()
		end()
		endedAt = time.Now()
		run.ending = endedAt.Sub(endStart)
	}()
	defer func() { <-ended }()
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Go(func() {
			for i := 0; time.Since(started) < window+2*time.Second; i++ {
				bounded(ctx, &run.existing, func(ctx context.Context) error {
					_, err := ownTurn(ctx, u.session, fmt.Sprintf("during %s %d", u.name, i))
					return err
				})
			}
		})
	}
	wg.Go(func() {
		time.Sleep(time.Second)
		var s *copilot.Session
		err := bounded(ctx, &run.reopened, func(ctx context.Context) (err error) {
			again, err := startClient(ctx, t, env, "acme", users[0].name)
			if err != nil {
				return err
			}
			s, err = again.ResumeSession(ctx, users[0].session.SessionID, &copilot.ResumeSessionConfig{Model: "double-1", Provider: env.provider(),
				OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			return err
		})
		if err == nil {
			bounded(ctx, &run.reopened, func(ctx context.Context) error {
				_, err := ownTurn(ctx, s, "reopened during the fault")
				return err
			})
		}
	})
	wg.Go(func() {
		time.Sleep(2 * time.Second)
		bounded(ctx, &run.newcomers, func(ctx context.Context) error {
			c, err := startClient(ctx, t, env, "acme", "cat")
			if err != nil {
				return err
			}
			_, err = c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(),
				OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			return err
		})
	})
	wg.Wait()
	<-ended
	pctx, pcancel := context.WithTimeout(ctx, time.Minute)
	defer pcancel()
	err := harness.Poll(pctx, 200*time.Millisecond, func() error {
		c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token("dan", "acme")}})
		if err := c.Start(pctx); err != nil {
			return err
		}
		defer c.Stop()
		return bounded(pctx, &run.after, func(ctx context.Context) error {
			s, err := c.CreateSession(ctx, &copilot.SessionConfig{Model: "double-1", Provider: env.provider(),
				OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
			if err != nil {
				return err
			}
			_, err = ownTurn(ctx, s, "after the fault")
			return err
		})
	})
	run.recovered = time.Since(endedAt)
	t.Logf("through the fault (%v):\n  existing users, existing tunnels: %s\n  new tunnel resuming a session: %s\n  new user's session.create: %s\n  after: ending the fault took %v; a new user's full turn worked %v after it ended (%s)",
		window, &run.existing, &run.reopened, &run.newcomers, run.ending.Round(time.Millisecond), run.recovered.Round(time.Millisecond), &run.after)
	if err != nil {
		t.Fatalf("no new user's turn worked within a minute of the fault's end: %v", err)
	}
	return run
}

// startClient starts an SDK client through climesh-connect for user of tenant,
// stopped with the test; unlike clientOf it reports a failure to start.
func startClient(ctx context.Context, t *testing.T, env *meshEnv, tenant, user string) (*copilot.Client, error) {
	c := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: env.ConnectAddr, ConnectionToken: env.Token(user, tenant)}})
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Stop() })
	return c, nil
}

// expectGoesOn checks what a Consul fault must leave working: nothing hangs,
// every failure names what is unavailable, existing users and a reopened
// session go on, and a new user's create gets a session or a clear error.
func expectGoesOn(t *testing.T, run *chaosRun) {
	t.Helper()
	for name, o := range map[string]*outcome{"existing users": &run.existing, "the reopened tunnel": &run.reopened, "the new user": &run.newcomers} {
		if o.hung > 0 {
			t.Errorf("%s: a call hung past %v", name, callBound)
		}
		if o.unclears > 0 {
			t.Errorf("%s: a call failed without saying what is unavailable", name)
		}
	}
	if run.existing.completed == 0 || run.existing.failed > 0 {
		t.Errorf("existing users on existing tunnels did not go on: %s", &run.existing)
	}
	if run.reopened.completed != 2 {
		t.Errorf("a new tunnel resuming a session this sidecar had seen did not go on: %s", &run.reopened)
	}
	if run.newcomers.completed+run.newcomers.clearErrors != 1 {
		t.Errorf("the new user's create got neither a session nor a clear error: %s", &run.newcomers)
	}
}

// TestChaosConsulPaused: Consul stops answering (SIGSTOP, state kept) for
// longer than the sidecars' check TTL (3s) while users take turns, then
// resumes. Existing users on existing tunnels go on; a new tunnel resuming a
// session this sidecar has seen goes on (its record is answered from memory);
// a new user's session.create is refused with a clear error within the bound,
// never left without an answer; after Consul resumes, a new user's turn works.
func TestChaosConsulPaused(t *testing.T) {
	env := startChaosMesh(t, harness.MeshOptions{Instances: 2})
	run := throughFault(t, env, 6*time.Second, func() func() {
		if err := env.Consul.Proc.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		return func() { env.Consul.Proc.Signal(syscall.SIGCONT) }
	})
	expectGoesOn(t, run)
}

// TestChaosConsulRestarted: Consul (a server with a data directory) stops and
// starts again while users take turns: the same as a pause while it is down
// (calls fail at once instead of waiting), and afterwards registrations,
// checks and watches come back by themselves.
func TestChaosConsulRestarted(t *testing.T) {
	env := startChaosMesh(t, harness.MeshOptions{Instances: 2, PersistentConsul: true})
	run := throughFault(t, env, 6*time.Second, func() func() {
		env.Consul.Proc.Stop(5 * time.Second)
		return func() {
			if err := env.Consul.Start(t.Context()); err != nil {
				t.Fatalf("consul did not start again: %v", err)
			}
		}
	})
	expectGoesOn(t, run)
}

// expectNoHang checks what every fault must keep: no call hangs past its bound,
// and every failure says what is unavailable.
func expectNoHang(t *testing.T, run *chaosRun) {
	t.Helper()
	for name, o := range map[string]*outcome{"existing users": &run.existing, "the reopened tunnel": &run.reopened, "the new user": &run.newcomers, "after": &run.after} {
		if o.hung > 0 {
			t.Errorf("%s: a call hung past %v", name, callBound)
		}
		if o.unclears > 0 {
			t.Errorf("%s: a call failed without saying what is unavailable: %s", name, o)
		}
	}
}

// killThenStart is the fault of a process killed with SIGKILL and started again.
func killThenStart(t *testing.T, p *harness.Proc, start func(context.Context) error) func() func() {
	return func() func() {
		if err := p.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := start(t.Context()); err != nil {
				t.Fatalf("did not start again: %v", err)
			}
		}
	}
}

// TestChaosXDSServerKilled: the xds-server (control plane and ext_authz) is
// killed with SIGKILL while users take turns, and started again. Envoy keeps
// routing what it has: existing tunnels go on. A new tunnel needs ext_authz,
// which fails closed: it is refused with a clear error, never left hanging.
// After the restart ADS resumes and a new user's turn works.
func TestChaosXDSServerKilled(t *testing.T) {
	env := startChaosMesh(t, harness.MeshOptions{Instances: 2})
	run := throughFault(t, env, 5*time.Second, killThenStart(t, env.XDS.Proc, env.XDS.Start))
	expectNoHang(t, run)
	if run.existing.completed == 0 || run.existing.failed > 0 {
		t.Errorf("existing tunnels did not go on while the control plane was down: %s", &run.existing)
	}
	// A new tunnel is refused while ext_authz is down (fail closed), as an
	// outage (-32010, try again), not as a denial.
	for name, o := range map[string]*outcome{"the reopened tunnel": &run.reopened, "the new user": &run.newcomers} {
		for _, e := range o.errors {
			if !strings.Contains(e, "-32010") || !strings.Contains(e, "503") {
				t.Errorf("%s was refused as %q, want -32010 for the edge's 503", name, e)
			}
		}
	}
	// Envoy's ADS stream comes back by itself, within its reconnect back-off.
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	err := harness.Poll(ctx, 100*time.Millisecond, func() error {
		if v, err := env.Envoy.Stat("control_plane.connected_state"); err != nil || v != 1 {
			return fmt.Errorf("connected_state %d (%v)", v, err)
		}
		return nil
	})
	t.Logf("Envoy's ADS stream connected again %v after the check began", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Errorf("Envoy's ADS stream did not resume: %v", err)
	}
}

// TestChaosEnvoyKilled: Envoy is killed with SIGKILL while users take turns,
// and started again on the same bootstrap. climesh-connect holds calls while it
// reconnects and resumes every session: existing users' turns complete or fail
// with a clear error, and afterwards every existing user's session works.
func TestChaosEnvoyKilled(t *testing.T) {
	env := startChaosMesh(t, harness.MeshOptions{Instances: 2})
	run := throughFault(t, env, 4*time.Second, killThenStart(t, env.Envoy.Proc, env.Envoy.Start))
	expectNoHang(t, run)
	if run.existing.completed == 0 {
		t.Errorf("no existing user's turn completed across Envoy's restart: %s", &run.existing)
	}
}

// TestChaosModelHangs: the model endpoint stops answering mid-turn (the double
// holds its answer for ten minutes). The sidecar's --turn-timeout (3s here)
// ends the turn: the client's SDK sees it fail with a message that says why,
// well within the bound, the CLI is told to abort, and the session takes its
// next turn. On a collab session the turn's lock is released with it: another
// member's turn goes through at once instead of finding the session busy.
func TestChaosModelHangs(t *testing.T) {
	const turnTimeout = 3 * time.Second
	env := startChaosMesh(t, harness.MeshOptions{Instances: 1, Collab: 1, TurnTimeout: turnTimeout})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	var hung, next outcome
	s := env.newSession(ctx, t, env.clientOf(ctx, t, "acme", "hal"))
	err := bounded(ctx, &hung, func(ctx context.Context) error {
		_, err := ownTurn(ctx, s, "slow 600000 for hal")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "--turn-timeout") {
		t.Fatalf("a turn whose model hangs ended with %v, want the turn timeout", err)
	}
	bounded(ctx, &next, func(ctx context.Context) error {
		_, err := ownTurn(ctx, s, "after the hang")
		return err
	})

	// Collab: olga's turn hangs; max, a member who does not wait for a busy
	// session, takes a turn once olga's has timed out.
	name, waitAddr, noWaitAddr := collabRoom(t, env, "acme", []string{"max"})
	olga := resume(ctx, t, clientAt(t, waitAddr, env.Token("olga", "acme")), env, name)
	max := resume(ctx, t, clientAt(t, noWaitAddr, env.Token("max", "acme")), env, name)
	var collabHung, collabNext outcome
	err = bounded(ctx, &collabHung, func(ctx context.Context) error {
		_, err := ownTurn(ctx, olga, "slow 600000 for olga")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "--turn-timeout") {
		t.Fatalf("olga's hung turn ended with %v, want the turn timeout", err)
	}
	released := time.Now()
	pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
	defer pcancel()
	var busy int
	err = harness.Poll(pctx, 100*time.Millisecond, func() error {
		return bounded(pctx, &collabNext, func(ctx context.Context) error {
			_, err := ownTurn(ctx, max, fmt.Sprintf("max after olga's hang %d", busy))
			if err != nil && strings.Contains(err.Error(), "-32013") {
				busy++
			}
			return err
		})
	})
	t.Logf("model hangs mid-turn (--turn-timeout %v):\n  the hung turn: %s\n  the session's next turn: %s\n  collab, the hung turn: %s\n  collab, another member's turn after it: %s (busy answers first: %d, %v after the timeout)",
		turnTimeout, &hung, &next, &collabHung, &collabNext, busy, time.Since(released).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("max never took a turn after olga's timed out: %v", err)
	}
	if next.completed != 1 {
		t.Errorf("the session took no turn after its hung one: %s", &next)
	}
	if hung.slowest > turnTimeout+5*time.Second || collabHung.slowest > turnTimeout+5*time.Second {
		t.Errorf("a hung turn ended %v / %v after it began, want about %v", hung.slowest, collabHung.slowest, turnTimeout)
	}
	if busy > 0 {
		t.Errorf("olga's lock outlived her timed-out turn: max was told busy %d times", busy)
	}
}

// TestChaosSidecarKilled: a sidecar of a shared-storage pool is killed with
// SIGKILL while its users' turns are at the model. Nothing of its CLI may live
// on (an orphan would go on writing the session that its user resumes
// elsewhere): the CLI's whole process group is gone within 5s. Each
// turn in flight ends — completed elsewhere or failed with a clear error, none
// hung — and every user's next turn works on the instance left.
func TestChaosSidecarKilled(t *testing.T) {
	env := startMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pool := env.startPool(ctx, t, "orphan", harness.PoolOptions{Instances: 2})
	all, busiest, there := env.poolUsers(ctx, t, pool, "orp", 6)
	if len(there) == 0 {
		t.Fatal("no user on the busiest instance")
	}
	sc := pool.Sidecars[busiest]
	cli := childCLI(t, sc.Proc.Pid())

	var inFlight, next outcome
	var wg sync.WaitGroup
	prompts := map[string]string{}
	for _, u := range there {
		prompts[u.name] = "slow 3000 for " + u.name
		wg.Go(func() {
			bounded(ctx, &inFlight, func(ctx context.Context) error {
				_, err := ownTurn(ctx, u.session, prompts[u.name])
				return err
			})
		})
	}
	if err := harness.Poll(ctx, 20*time.Millisecond, func() error {
		for name, p := range prompts {
			if _, ok := env.Model.Arrived(p); !ok {
				return fmt.Errorf("%s's turn has not reached the model", name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := syscall.Kill(sc.Proc.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The CLI's process group (the CLI and anything it started) empties.
	var gone time.Duration
	err := harness.Poll(ctx, 10*time.Millisecond, func() error {
		if err := syscall.Kill(-cli, 0); err == nil {
			return fmt.Errorf("process group %d still has a process", cli)
		}
		gone = time.Since(killed)
		return nil
	})
	if err != nil {
		syscall.Kill(-cli, syscall.SIGKILL)
		t.Fatalf("the CLI outlived its sidecar: %v", err)
	}
	wg.Wait()
	var recovered time.Duration
	for _, u := range all {
		err := bounded(ctx, &next, func(ctx context.Context) error {
			_, err := ownTurn(ctx, u.session, "next of "+u.name)
			return err
		})
		if err == nil && recovered == 0 {
			recovered = time.Since(killed)
		}
	}
	t.Logf("sidecar %s SIGKILLed with %d turns at the model: its CLI's process group empty after %v\n  turns in flight: %s\n  every user's next turn: %s (the first %v after the kill)",
		busiest, len(there), gone.Round(time.Millisecond), &inFlight, &next, recovered.Round(time.Millisecond))
	if gone > 5*time.Second {
		t.Errorf("the CLI lived %v after its sidecar died, want under 5s", gone)
	}
	if inFlight.hung > 0 || inFlight.unclears > 0 {
		t.Errorf("a turn in flight hung or failed without a clear error: %s", &inFlight)
	}
	if next.completed != len(all) {
		t.Errorf("not every user's next turn worked: %s", &next)
	}
}
