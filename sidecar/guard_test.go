package sidecar

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/registry"
)

func shippedPolicy(t testing.TB) *policy.Engine {
	t.Helper()
	e, err := policy.NewEngine(context.Background(), "../policies/rego", []string{policy.MessageQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func msg(t testing.TB, body string) jsonrpc.Message {
	t.Helper()
	m, err := jsonrpc.Classify([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestGuardOwnership(t *testing.T) {
	e, reg := shippedPolicy(t), &registry.Memory{}
	alice := &Guard{Engine: e, Registry: reg, Caller: identity.Claims{User: "alice", Tenant: "acme"}, Log: zap.NewNop()}
	bob := &Guard{Engine: e, Registry: reg, Caller: identity.Claims{User: "bob", Tenant: "acme"}, Log: zap.NewNop()}
	ctx := t.Context()

	// alice creates; the CLI answers with the new id; the registry learns the owner.
	if ans, fwd := alice.Inbound(ctx, msg(t, `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m"}}`)); ans != nil || !fwd {
		t.Fatalf("create: %s %v", ans, fwd)
	}
	alice.Outbound(ctx, msg(t, `{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s-a"}}`))
	if rec, _ := reg.Get(ctx, "s-a"); rec == nil || rec.Owner != "alice" {
		t.Fatalf("record %+v", rec)
	}
	// bob may not send to it; the answer is the documented error.
	ans, fwd := bob.Inbound(ctx, msg(t, `{"jsonrpc":"2.0","id":7,"method":"session.send","params":{"sessionId":"s-a","prompt":"x"}}`))
	if fwd || !strings.Contains(string(ans), `"code":-32012`) || !strings.Contains(string(ans), "session belongs to another user") {
		t.Fatalf("bob send: %s %v", ans, fwd)
	}
	// alice may, twice (the second from the decision cache).
	for range 2 {
		if ans, fwd := alice.Inbound(ctx, msg(t, `{"jsonrpc":"2.0","id":8,"method":"session.send","params":{"sessionId":"s-a","prompt":"x"}}`)); ans != nil || !fwd {
			t.Fatalf("alice send: %s", ans)
		}
	}
	// bob's list is filtered; so are alice's events on bob's tunnel.
	bob.Inbound(ctx, msg(t, `{"jsonrpc":"2.0","id":9,"method":"session.list","params":{}}`))
	out, _ := bob.Outbound(ctx, msg(t, `{"jsonrpc":"2.0","id":9,"result":{"sessions":[{"sessionId":"s-a"},{"sessionId":"s-unknown"}],"total":2}}`))
	if strings.Contains(string(out), "s-a") || !strings.Contains(string(out), `"total":2`) {
		t.Fatalf("bob's list: %s", out)
	}
	if _, send := bob.Outbound(ctx, msg(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-a"}}`)); send {
		t.Fatal("alice's event reached bob")
	}
	if _, send := alice.Outbound(ctx, msg(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-a"}}`)); !send {
		t.Fatal("alice's event did not reach alice")
	}
	// getLastId naming alice's session reads null for bob.
	bob.Inbound(ctx, msg(t, `{"jsonrpc":"2.0","id":10,"method":"session.getLastId","params":{}}`))
	if out, _ := bob.Outbound(ctx, msg(t, `{"jsonrpc":"2.0","id":10,"result":{"sessionId":"s-a"}}`)); !strings.Contains(string(out), `"sessionId":null`) {
		t.Fatalf("bob's last id: %s", out)
	}
	// alice deletes: the record goes.
	alice.Inbound(ctx, msg(t, `{"jsonrpc":"2.0","id":11,"method":"session.delete","params":{"sessionId":"s-a"}}`))
	alice.Outbound(ctx, msg(t, `{"jsonrpc":"2.0","id":11,"result":{}}`))
	if rec, _ := reg.Get(ctx, "s-a"); rec != nil {
		t.Fatalf("deleted session still registered: %+v", rec)
	}
}

func TestGuardCreateWithIDClaimsFirst(t *testing.T) {
	e, reg := shippedPolicy(t), &registry.Memory{}
	alice := &Guard{Engine: e, Registry: reg, Caller: identity.Claims{User: "alice"}, Log: zap.NewNop()}
	bob := &Guard{Engine: e, Registry: reg, Caller: identity.Claims{User: "bob"}, Log: zap.NewNop()}
	create := `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"sessionId":"chosen"}}`
	if ans, _ := alice.Inbound(t.Context(), msg(t, create)); ans != nil {
		t.Fatalf("alice: %s", ans)
	}
	if ans, fwd := bob.Inbound(t.Context(), msg(t, create)); fwd || !strings.Contains(string(ans), "session belongs to another user") {
		t.Fatalf("bob: %s", ans)
	}
	// The CLI refuses alice's create: the claim is released.
	alice.Outbound(t.Context(), msg(t, `{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"no"}}`))
	if rec, _ := reg.Get(t.Context(), "chosen"); rec != nil {
		t.Fatalf("claim kept after a failed create: %+v", rec)
	}
}

func BenchmarkGuardInboundCached(b *testing.B) {
	e, reg := shippedPolicy(b), &registry.Memory{}
	reg.Create(context.Background(), &registry.Record{ID: "s1", Owner: "alice"})
	g := &Guard{Engine: e, Registry: reg, Caller: identity.Claims{User: "alice"}, Log: zap.NewNop(), RecordTTL: 1 << 62}
	m := msg(b, `{"jsonrpc":"2.0","id":8,"method":"session.send","params":{"sessionId":"s1","prompt":"x"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, fwd := g.Inbound(b.Context(), m); !fwd {
			b.Fatal("refused")
		}
	}
}
