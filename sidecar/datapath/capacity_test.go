package datapath

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/tunnel"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// TestCapacityReleasesLRUAndResumesOnDemand: past the cap the least recently used
// session is destroyed in the CLI; when the client names it again the sidecar
// resumes it with the options of its create, and the client never sees either.
func TestCapacityReleasesLRUAndResumesOnDemand(t *testing.T) {
	cli, rl, c := capped(t, 2)
	for i, s := range []string{"s1", "s2", "s3"} {
		req := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"session.create","params":{"sessionId":%q,"model":"m","provider":{"type":"openai","baseUrl":"http://x"}}}`, 10+i, s)
		if got := exchange(t, c, req); !strings.Contains(got, `"sessionId":"`+s+`"`) {
			t.Fatalf("create %s answered %s", s, got)
		}
	}
	// s1 is released (the fake CLI no longer holds it) ...
	waitFor(t, func() bool { return strings.Contains(strings.Join(cli.methods(), ","), "session.destroy") })
	if n := rl.Capacity.Active(); n != 2 {
		t.Fatalf("active sessions %d, want 2", n)
	}
	// ... and a send to it works: resumed first, with the create's provider.
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":20,"method":"session.send","params":{"sessionId":"s1","prompt":"hi"}}`); !strings.Contains(got, `"messageId":"m-s1"`) {
		t.Fatalf("send to a released session answered %s", got)
	}
	cli.mu.Lock()
	resumes := cli.resumes
	cli.mu.Unlock()
	if len(resumes) != 1 || !strings.Contains(resumes[0], `"sessionId":"s1"`) || !strings.Contains(resumes[0], `"baseUrl":"http://x"`) {
		t.Fatalf("resumes %v, want one of s1 with its provider", resumes)
	}
	// s2 was now the least recently used: released in turn.
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":21,"method":"session.send","params":{"sessionId":"s3","prompt":"hi"}}`); !strings.Contains(got, `"messageId":"m-s3"`) {
		t.Fatalf("send to s3 answered %s", got)
	}
	waitFor(t, func() bool { return testutil.ToFloat64(rl.metrics.evicted) == 2 })
	if got := testutil.ToFloat64(rl.metrics.resumed); got != 1 {
		t.Fatalf("resumes on demand %v, want 1", got)
	}
	if got := rl.Load(); !strings.Contains(got, "active_sessions=2 capacity=2") {
		t.Fatalf("load %q", got)
	}
	c.Close("")
	waitFor(t, func() bool { return rl.Capacity.Active() == 0 })
}

// TestCapacityKeepsBusySessions: a session in a turn is never released; the cap
// is exceeded instead, and the least recently used idle one goes first.
func TestCapacityKeepsBusySessions(t *testing.T) {
	now := time.Unix(0, 0)
	c := &Capacity{Max: 2, Log: zap.NewNop(), now: func() time.Time { now = now.Add(time.Second); return now }}
	released := map[string]bool{}
	busy := map[string]bool{"a": true}
	ts := &tunnelSessions{cap: c, busy: func(id string) bool { return busy[id] }}
	evict := func(v map[string][]*tunnelSessions) {
		for id := range v {
			released[id] = true
		}
	}
	for _, id := range []string{"a", "b"} {
		c.attach(ts, id)
	}
	c.mu.Lock()
	c.active["c"] = &activeSession{lastUsed: now.Add(time.Hour), holders: map[*tunnelSessions]struct{}{ts: {}}}
	evict(c.overCap("c"))
	c.mu.Unlock()
	if !released["b"] || released["a"] || len(released) != 1 {
		t.Fatalf("released %v, want only b (a is busy, c is new)", released)
	}
	busy["c"] = true
	c.mu.Lock()
	c.active["d"] = &activeSession{lastUsed: now, holders: map[*tunnelSessions]struct{}{ts: {}}}
	v := c.overCap("d")
	n := len(c.active)
	c.mu.Unlock()
	if len(v) != 0 || n != 3 {
		t.Fatalf("with every other session busy: released %v, active %d; want none released, 3 active", v, n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCapacityDetachOfAReleasedSession: an SDK disconnecting from a session the
// sidecar released gets its success here; the CLI, which no longer has the
// session, is not asked.
func TestCapacityDetachOfAReleasedSession(t *testing.T) {
	cli, rl, c := capped(t, 1)
	for i, s := range []string{"s1", "s2"} {
		exchange(t, c, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"session.create","params":{"sessionId":%q}}`, 10+i, s))
	}
	destroys := func() int { return strings.Count(strings.Join(cli.methods(), ","), "session.destroy") }
	waitFor(t, func() bool { return destroys() == 1 })
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":30,"method":"session.destroy","params":{"sessionId":"s1"}}`); !strings.Contains(got, `"id":30,"result":{}`) {
		t.Fatalf("destroy of a released session answered %s", got)
	}
	if got := exchange(t, c, `{"jsonrpc":"2.0","id":31,"method":"ping","params":{}}`); !strings.Contains(got, "pong") || destroys() != 1 {
		t.Fatalf("the CLI was asked to destroy a session it no longer had (%d destroys; %s)", destroys(), got)
	}
	if n := rl.Capacity.Active(); n != 1 {
		t.Fatalf("active %d, want 1 (s2)", n)
	}
}

// capped is a relay with --capacity n before a fake CLI, and a connected tunnel.
func capped(t *testing.T, n int) (*fakeCLI, *Relay, *tunnel.Conn) {
	t.Helper()
	cli := startFakeCLI(t, "cli-secret")
	rl, url := startRelay(t, cli.addr, "cli-secret", cred)
	rl.SetCapacity(n)
	c := dialRelay(t, url, http.Header{"X-Climesh-Edge-Credential": {cred}})
	exchange(t, c, `{"jsonrpc":"2.0","id":1,"method":"connect","params":{"token":"u"}}`)
	return cli, rl, c
}
