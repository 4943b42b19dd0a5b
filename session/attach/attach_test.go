package attach

import (
	"testing"

	"github.com/climesh/climesh/session/jsonrpc"
)

func msg(t *testing.T, s string) jsonrpc.Message {
	t.Helper()
	m, err := jsonrpc.ParseTrusted([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTrackerFollowsAttachedSessions(t *testing.T) {
	var tr Tracker
	// A create whose answer names the session; the resume params keep the options.
	tr.Request(msg(t, `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m","provider":{"baseUrl":"u"}}}`))
	if got := tr.Answer(msg(t, `{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s1"}}`)); got != "s1" {
		t.Fatalf("create attached %q", got)
	}
	if p, ok := tr.ResumeParams("s1"); !ok || string(p) != `{"model":"m","provider":{"baseUrl":"u"},"sessionId":"s1"}` {
		t.Fatalf("resume params %s %v", p, ok)
	}
	// A resume naming its session, answered without one.
	tr.Request(msg(t, `{"jsonrpc":"2.0","id":"r","method":"session.resume","params":{"sessionId":"s2"}}`))
	if got := tr.Answer(msg(t, `{"jsonrpc":"2.0","id":"r","result":{}}`)); got != "s2" {
		t.Fatalf("resume attached %q", got)
	}
	// A failed create attaches nothing; an answer nobody asked for neither.
	tr.Request(msg(t, `{"jsonrpc":"2.0","id":3,"method":"session.create","params":{"sessionId":"s3"}}`))
	if got := tr.Answer(msg(t, `{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"no"}}`)); got != "" {
		t.Fatalf("failed create attached %q", got)
	}
	if got := tr.Answer(msg(t, `{"jsonrpc":"2.0","id":99,"result":{"sessionId":"s9"}}`)); got != "" {
		t.Fatalf("unasked answer attached %q", got)
	}
	// A withdrawn request (refused on the way) is not attached by a later answer with its id.
	tr.Request(msg(t, `{"jsonrpc":"2.0","id":4,"method":"session.create","params":{"sessionId":"s4"}}`))
	tr.Withdraw("4")
	if got := tr.Answer(msg(t, `{"jsonrpc":"2.0","id":4,"result":{"sessionId":"s4"}}`)); got != "" {
		t.Fatalf("withdrawn create attached %q", got)
	}
	// destroy, detach and delete let a session go at the request.
	if got := tr.Request(msg(t, `{"jsonrpc":"2.0","id":5,"method":"session.destroy","params":{"sessionId":"s1"}}`)); got != "s1" {
		t.Fatalf("destroy detached %q", got)
	}
	if s := tr.Sessions(); len(s) != 1 || s["s2"] == nil {
		t.Fatalf("sessions %v", s)
	}
	if ids := tr.Reset(); len(ids) != 1 || ids[0] != "s2" || len(tr.Sessions()) != 0 {
		t.Fatalf("reset %v, then %v", ids, tr.Sessions())
	}
}
