package datapath

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/decisionlog"
	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/registry"
)

func shippedPolicy(t testing.TB) *policy.Engine {
	t.Helper()
	e, err := policy.NewEngine(context.Background(), "../../policies/rego", []string{policy.MessageQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func msg(t testing.TB, body string) jsonrpc.Message {
	t.Helper()
	m, err := jsonrpc.ParseTrusted([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tunnelGuard is a Guard as a tunnel runs it (with the call table).
type tunnelGuard = PolicyPath

// memoryRegistry is a session registry that holds recs.
func memoryRegistry(t testing.TB, recs ...*registry.Record) *registry.Memory {
	t.Helper()
	reg := &registry.Memory{}
	for _, rec := range recs {
		if _, err := reg.Create(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

func guardFor(e *policy.Engine, reg registry.Registry, tenant, user string) *tunnelGuard {
	return &tunnelGuard{Guard: &Guard{Policy: Policy{Engine: e, Registry: reg, Pool: "copilot", Mode: "shared"}, Caller: identity.Claims{User: user, Tenant: tenant}, Log: zap.NewNop()}}
}

// inbound is what the relay does with a client's frame: the strict reading, then
// the guard. It returns what the CLI would receive ("" when nothing) and the answer.
func inbound(t testing.TB, g *tunnelGuard, body string) (toCLI string, answer string) {
	t.Helper()
	m, err := jsonrpc.Parse([]byte(body))
	if err != nil {
		return "", "parse: " + err.Error()
	}
	fwd, ans := g.Inbound(t.(interface{ Context() context.Context }).Context(), m)
	if fwd != nil {
		toCLI = string(fwd.Raw)
	}
	return toCLI, string(ans)
}

func TestGuardOwnership(t *testing.T) {
	e, reg := shippedPolicy(t), memoryRegistry(t)
	alice, bob := guardFor(e, reg, "acme", "alice"), guardFor(e, reg, "acme", "bob")
	ctx := t.Context()

	// alice creates without an id: the sidecar names the session and claims it first.
	toCLI, ans := inbound(t, alice, `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m"}}`)
	fwd := msg(t, toCLI)
	if ans != "" || fwd.SessionID == "" {
		t.Fatalf("create: %q %q", toCLI, ans)
	}
	sid := fwd.SessionID
	if rec, _ := reg.Get(ctx, sid); rec == nil || rec.Owner != "alice" || rec.Tenant != "acme" {
		t.Fatalf("record %+v", rec)
	}
	alice.Outbound(ctx, msg(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"result":{"sessionId":%q}}`, sid)))
	// bob may not send to it, and is told what an unknown session gets.
	_, foreign := inbound(t, bob, fmt.Sprintf(`{"jsonrpc":"2.0","id":7,"method":"session.send","params":{"sessionId":%q,"prompt":"x"}}`, sid))
	_, unknown := inbound(t, bob, `{"jsonrpc":"2.0","id":7,"method":"session.send","params":{"sessionId":"nope","prompt":"x"}}`)
	if !strings.Contains(foreign, `"code":-32012`) || !strings.Contains(foreign, noSession) ||
		strings.Replace(foreign, sid, "X", 1) != strings.Replace(unknown, "nope", "X", 1) {
		t.Fatalf("foreign and unknown sessions answered differently:\n%s\n%s", foreign, unknown)
	}
	// alice may, twice (the second from the decision cache).
	for i := range 2 {
		if toCLI, ans := inbound(t, alice, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"session.send","params":{"sessionId":%q,"prompt":"x"}}`, 8+i, sid)); ans != "" || toCLI == "" {
			t.Fatalf("alice send: %s", ans)
		}
	}
	// bob's list is filtered; so are alice's events on bob's tunnel.
	inbound(t, bob, `{"jsonrpc":"2.0","id":9,"method":"session.list","params":{}}`)
	out, _ := bob.Outbound(ctx, msg(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":9,"result":{"sessions":[{"sessionId":%q},{"sessionId":"s-unknown"},{"sessionId":5}],"total":3}}`, sid)))
	if strings.Contains(string(out), sid) || strings.Contains(string(out), "s-unknown") || strings.Contains(string(out), ":5") {
		t.Fatalf("bob's list: %s", out)
	}
	for _, ev := range []string{
		fmt.Sprintf(`{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":%q}}`, sid),
		fmt.Sprintf(`{"jsonrpc":"2.0","method":"host.event","params":{"scope":{"type":"session","sessionId":%q}}}`, sid),
		fmt.Sprintf(`{"jsonrpc":"2.0","method":"session.lifecycle","params":{"type":"session.updated","sessionId":%q}}`, sid),
	} {
		if _, send := bob.Outbound(ctx, msg(t, ev)); send {
			t.Fatalf("alice's event reached bob: %s", ev)
		}
		if _, send := alice.Outbound(ctx, msg(t, ev)); !send {
			t.Fatalf("alice's own event was dropped: %s", ev)
		}
	}
	inbound(t, bob, `{"jsonrpc":"2.0","id":10,"method":"session.getLastId","params":{}}`)
	if out, _ := bob.Outbound(ctx, msg(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":10,"result":{"sessionId":%q}}`, sid))); !strings.Contains(string(out), `"sessionId":null`) {
		t.Fatalf("bob's getLastId: %s", out)
	}
	// An answer nobody on this tunnel asked for does not pass.
	if _, send := bob.Outbound(ctx, msg(t, `{"jsonrpc":"2.0","id":99,"result":{"sessions":[]}}`)); send {
		t.Fatal("an unasked answer reached the client")
	}
	// delete removes the record.
	inbound(t, alice, fmt.Sprintf(`{"jsonrpc":"2.0","id":11,"method":"session.delete","params":{"sessionId":%q}}`, sid))
	alice.Outbound(ctx, msg(t, `{"jsonrpc":"2.0","id":11,"result":{}}`))
	if rec, _ := reg.Get(ctx, sid); rec != nil {
		t.Fatalf("deleted session still registered: %+v", rec)
	}
}

// TestGuardRefusesAttacks sends, as bob of acme, frames that try to reach alice's
// session "s-a" (or the CLI's host) by another reading, type, kind or option.
// None may reach the CLI naming s-a, and none may carry a host option.
func TestGuardRefusesAttacks(t *testing.T) {
	cases := map[string]string{
		"case variant beside":       `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s-a","SessionId":"s-b","prompt":"x"}}`,
		"case variant alone":        `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"SessionId":"s-a","prompt":"x"}}`,
		"unicode fold":              `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"ſessionId":"s-a","prompt":"x"}}`,
		"duplicate sessionId":       `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s-b","sessionId":"s-a","prompt":"x"}}`,
		"escaped duplicate":         `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s-b","sess\u0069onId":"s-a","prompt":"x"}}`,
		"sessionId of another type": `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s-b","sessionID":5}}`,
		"numeric sessionId":         `{"jsonrpc":"2.0","id":1,"method":"session.delete","params":{"sessionId":5}}`,
		"duplicate method":          `{"jsonrpc":"2.0","id":1,"method":"ping","method":"session.delete","params":{"sessionId":"s-a"}}`,
		"case variant method":       `{"jsonrpc":"2.0","id":1,"Method":"session.delete","method":"ping","params":{"sessionId":"s-a"}}`,
		"duplicate params":          `{"jsonrpc":"2.0","id":1,"method":"session.delete","params":{"sessionId":"s-b"},"params":{"sessionId":"s-a"}}`,
		"request dressed as answer": `{"jsonrpc":"2.0","id":1,"method":"session.delete","params":{"sessionId":"s-a"},"result":{}}`,
		"notification send":         `{"jsonrpc":"2.0","method":"session.send","params":{"sessionId":"s-a","prompt":"x"}}`,
		"notification own session":  `{"jsonrpc":"2.0","method":"session.send","params":{"sessionId":"s-b","prompt":"x"}}`,
		"unasked answer":            `{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s-a"}}`,
		"reserved id":               `{"jsonrpc":"2.0","id":"climesh-sidecar-1","method":"ping","params":{}}`,
		"path as session id":        `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"sessionId":"../s-a","model":"m"}}`,
		"mcp server on create":      `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m","mcpServers":{"x":{"command":"sh","args":["-c","id"]}}}}`,
		"mcp server on resume":      `{"jsonrpc":"2.0","id":1,"method":"session.resume","params":{"sessionId":"s-b","mcpServers":{"x":{"command":"sh"}}}}`,
		"working directory":         `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m","workingDirectory":"/"}}`,
		"custom agent":              `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m","customAgents":[{"name":"a","tools":["bash"]}]}}`,
		"case variant option":       `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m","McpServers":{}}}`,
		"file attachment":           `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s-b","prompt":"x","attachments":[{"type":"file","path":"/proc/self/environ"}]}}`,
		"options update":            `{"jsonrpc":"2.0","id":1,"method":"session.options.update","params":{"sessionId":"s-b","workingDirectory":"/"}}`,
		"create alice's id":         `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"sessionId":"s-a","model":"m"}}`,
	}
	for name, frame := range cases {
		t.Run(name, func(t *testing.T) {
			e, reg := shippedPolicy(t), memoryRegistry(t, &registry.Record{ID: "s-a", Owner: "alice", Tenant: "acme", Mode: "shared"}, &registry.Record{ID: "s-b", Owner: "bob", Tenant: "acme", Mode: "shared"})
			bob := guardFor(e, reg, "acme", "bob")
			toCLI, ans := inbound(t, bob, frame)
			if toCLI != "" {
				t.Fatalf("forwarded %s (answer %q)", toCLI, ans)
			}
			if rec, _ := reg.Get(t.Context(), "s-a"); rec == nil || rec.Owner != "alice" {
				t.Fatalf("alice's record changed: %+v", rec)
			}
		})
	}
}

func TestGuardTenantQualifiedOwnership(t *testing.T) {
	e, reg := shippedPolicy(t), memoryRegistry(t, &registry.Record{ID: "s-a", Owner: "alice", Tenant: "acme", Mode: "shared"})
	otherAlice := guardFor(e, reg, "globex", "alice")
	if toCLI, ans := inbound(t, otherAlice, `{"jsonrpc":"2.0","id":1,"method":"session.getMessages","params":{"sessionId":"s-a"}}`); toCLI != "" || !strings.Contains(ans, noSession) {
		t.Fatalf("alice of globex reached alice of acme's session: %q %q", toCLI, ans)
	}
	if _, send := otherAlice.Outbound(t.Context(), msg(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-a"}}`)); send {
		t.Fatal("alice of globex got alice of acme's events")
	}
}

func TestGuardLimitsBuiltinTools(t *testing.T) {
	e, reg := shippedPolicy(t), memoryRegistry(t)
	g := guardFor(e, reg, "acme", "alice")
	cases := map[string]struct{ params, want string }{
		"nothing asked":          {`{"model":"m"}`, `[]`},
		"null asks for all":      {`{"model":"m","availableTools":null}`, `[]`},
		"built-in asked":         {`{"model":"m","availableTools":["bash","view"]}`, `[]`},
		"client tools kept":      {`{"model":"m","tools":[{"name":"lookup"},{"name":"bash"}]}`, `["bash","lookup"]`},
		"client narrows":         {`{"model":"m","tools":[{"name":"lookup"},{"name":"other"}],"availableTools":["lookup","bash"]}`, `["lookup"]`},
		"excluded stays allowed": {`{"model":"m","tools":[{"name":"lookup"}],"excludedTools":["lookup"]}`, `["lookup"]`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			toCLI, ans := inbound(t, g, `{"jsonrpc":"2.0","id":"`+name+`","method":"session.create","params":`+c.params+`}`)
			if toCLI == "" {
				t.Fatalf("refused: %s", ans)
			}
			fwd := msg(t, toCLI)
			got, _ := jsonrpc.Member(fwd.Params, "availableTools")
			if string(got) != c.want {
				t.Fatalf("availableTools %s, want %s (%s)", got, c.want, toCLI)
			}
			if strings.Contains(c.params, `"tools"`) && strings.Count(toCLI, `"overridesBuiltInTool":true`) != strings.Count(c.params, `"name"`) {
				t.Fatalf("client tools not marked as overriding built-ins: %s", toCLI)
			}
		})
	}
}

func TestGuardBounds(t *testing.T) {
	e, reg := shippedPolicy(t), memoryRegistry(t)
	g := guardFor(e, reg, "acme", "alice")
	g.Bounds = Bounds{Pending: 2}
	for i := range 2 {
		if toCLI, ans := inbound(t, g, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"ping","params":{}}`, i)); toCLI == "" {
			t.Fatalf("ping %d: %s", i, ans)
		}
	}
	if _, ans := inbound(t, g, `{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}`); !strings.Contains(ans, "awaits its answer") {
		t.Fatalf("a second request with an id in flight: %s", ans)
	}
	if _, ans := inbound(t, g, `{"jsonrpc":"2.0","id":5,"method":"ping","params":{}}`); !strings.Contains(ans, "too many requests in flight") {
		t.Fatalf("past the bound: %s", ans)
	}
	g.Outbound(t.Context(), msg(t, `{"jsonrpc":"2.0","id":0,"result":{}}`))
	if toCLI, ans := inbound(t, g, `{"jsonrpc":"2.0","id":5,"method":"ping","params":{}}`); toCLI == "" {
		t.Fatalf("after an answer: %s", ans)
	}
}

func TestGuardCreateWithIDClaimsFirst(t *testing.T) {
	e, reg := shippedPolicy(t), memoryRegistry(t)
	alice, bob := guardFor(e, reg, "acme", "alice"), guardFor(e, reg, "acme", "bob")
	create := `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"sessionId":"chosen"}}`
	if _, ans := inbound(t, alice, create); ans != "" {
		t.Fatalf("alice: %s", ans)
	}
	if toCLI, ans := inbound(t, bob, create); toCLI != "" || !strings.Contains(ans, noSession) {
		t.Fatalf("bob: %s", ans)
	}
	// The CLI refuses alice's create: the claim is released.
	alice.Outbound(t.Context(), msg(t, `{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"no"}}`))
	if rec, _ := reg.Get(t.Context(), "chosen"); rec != nil {
		t.Fatalf("claim kept after a failed create: %+v", rec)
	}
}

func BenchmarkGuardInboundCached(b *testing.B) {
	e, reg := shippedPolicy(b), memoryRegistry(b, &registry.Record{ID: "s1", Owner: "alice", Tenant: "acme"})
	g := guardFor(e, reg, "acme", "alice")
	g.RecordTTL = 1 << 62
	m := msg(b, `{"jsonrpc":"2.0","id":8,"method":"session.send","params":{"sessionId":"s1","prompt":"x"}}`)
	answer := msg(b, `{"jsonrpc":"2.0","id":8,"result":{}}`)
	b.ReportAllocs()
	for b.Loop() {
		if fwd, _ := g.Inbound(b.Context(), m); fwd == nil {
			b.Fatal("refused")
		}
		g.Outbound(b.Context(), answer)
	}
}

func TestGuardPendingAnswersBoundToTheirSession(t *testing.T) {
	e, reg := shippedPolicy(t), memoryRegistry(t, &registry.Record{ID: "s-a", Owner: "alice", Tenant: "acme", Mode: "shared"}, &registry.Record{ID: "s-b", Owner: "bob", Tenant: "globex", Mode: "shared"})
	alice, bob := guardFor(e, reg, "acme", "alice"), guardFor(e, reg, "globex", "bob")
	event := `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-a","event":{"type":"external_tool.requested","data":{"requestId":"R1","toolName":"t1"}}}}`
	if _, send := alice.Outbound(t.Context(), msg(t, event)); !send {
		t.Fatal("alice's own tool request was dropped")
	}
	bob.Outbound(t.Context(), msg(t, event)) // dropped: not bob's session
	answer := func(sid, rid string) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","id":%q,"method":"session.tools.handlePendingToolCall","params":{"sessionId":%q,"requestId":%q,"result":"x"}}`, sid+rid, sid, rid)
	}
	for name, c := range map[string]struct {
		g     *tunnelGuard
		frame string
	}{
		"bob answers R1 on his own session":   {bob, answer("s-b", "R1")},
		"alice answers R1 on another session": {alice, answer("s-b", "R1")},
		"alice answers an unknown request":    {alice, answer("s-a", "R2")},
		"alice names no request":              {alice, `{"jsonrpc":"2.0","id":9,"method":"session.permissions.handlePendingPermissionRequest","params":{"sessionId":"s-a","result":{}}}`},
	} {
		if toCLI, ans := inbound(t, c.g, c.frame); toCLI != "" {
			t.Errorf("%s: forwarded (%s)", name, ans)
		}
	}
	if toCLI, ans := inbound(t, alice, answer("s-a", "R1")); toCLI == "" {
		t.Fatalf("alice answering her own pending request: %s", ans)
	}
	if toCLI, _ := inbound(t, alice, answer("s-a", "R1")); toCLI != "" {
		t.Fatal("a request answered twice")
	}
}

// Wrong types in the fields the tools rewrite and the pending-answer check read
// are refused, never read as "none".
func TestGuardWrongTypesRefused(t *testing.T) {
	e, reg := shippedPolicy(t), memoryRegistry(t, &registry.Record{ID: "s-a", Owner: "alice", Tenant: "acme", Mode: "shared"})
	alice := guardFor(e, reg, "acme", "alice")
	alice.Outbound(t.Context(), msg(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-a","event":{"type":"external_tool.requested","data":{"requestId":"7"}}}}`))
	for name, frame := range map[string]string{
		"availableTools a string":   `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m","availableTools":"bash"}}`,
		"availableTools of numbers": `{"jsonrpc":"2.0","id":2,"method":"session.create","params":{"model":"m","availableTools":[1]}}`,
		"tools an object":           `{"jsonrpc":"2.0","id":3,"method":"session.create","params":{"model":"m","tools":{"name":"bash"}}}`,
		"tool name a number":        `{"jsonrpc":"2.0","id":4,"method":"session.create","params":{"model":"m","tools":[{"name":7}]}}`,
		"requestId a number":        `{"jsonrpc":"2.0","id":5,"method":"session.tools.handlePendingToolCall","params":{"sessionId":"s-a","requestId":7,"result":"x"}}`,
		"requestId duplicated":      `{"jsonrpc":"2.0","id":6,"method":"session.tools.handlePendingToolCall","params":{"sessionId":"s-a","requestId":"x","requestId":"7","result":"x"}}`,
		"requestId case variant":    `{"jsonrpc":"2.0","id":7,"method":"session.tools.handlePendingToolCall","params":{"sessionId":"s-a","RequestId":"7","result":"x"}}`,
	} {
		if toCLI, ans := inbound(t, alice, frame); toCLI != "" {
			t.Errorf("%s: forwarded %s (%s)", name, toCLI, ans)
		}
	}
}

// brokenRegistry fails every call with err.
type brokenRegistry struct{ err error }

func (b brokenRegistry) Get(context.Context, string) (*registry.Record, error) { return nil, b.err }
func (b brokenRegistry) Create(context.Context, *registry.Record) (*registry.Record, error) {
	return nil, b.err
}
func (b brokenRegistry) Delete(context.Context, string) error { return b.err }
func (b brokenRegistry) Touch(context.Context, string, time.Time, string) error {
	return b.err
}
func (b brokenRegistry) List(context.Context) ([]*registry.Record, error) { return nil, b.err }

// When the registry does not answer, a call that needs it is answered -32010
// naming the session registry, and nothing reaches the CLI; a record the
// registry holds but cannot read is refused as any unknown session is.
func TestGuardRegistryUnavailable(t *testing.T) {
	e := shippedPolicy(t)
	down := guardFor(e, brokenRegistry{fmt.Errorf("%w: get s-1: no answer within 2s", registry.ErrUnavailable)}, "acme", "alice")
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m"}}`,
		`{"jsonrpc":"2.0","id":2,"method":"session.resume","params":{"sessionId":"s-1"}}`,
		`{"jsonrpc":"2.0","id":3,"method":"session.send","params":{"sessionId":"s-1","prompt":"x"}}`,
	} {
		toCLI, ans := inbound(t, down, body)
		if toCLI != "" {
			t.Fatalf("forwarded while the registry is down: %s", toCLI)
		}
		if !strings.Contains(ans, `"code":-32010`) || !strings.Contains(ans, `"unavailable":"session registry"`) || !strings.Contains(ans, "try again") {
			t.Fatalf("%s: answered %s", body, ans)
		}
		if strings.Contains(ans, "no answer within") {
			t.Fatalf("the answer tells the client the registry's internals: %s", ans)
		}
	}
	corrupt := guardFor(e, brokenRegistry{fmt.Errorf("%w: climesh/sessions/s-1 is not valid JSON", registry.ErrCorrupt)}, "acme", "alice")
	_, ans := inbound(t, corrupt, `{"jsonrpc":"2.0","id":2,"method":"session.resume","params":{"sessionId":"s-1"}}`)
	if !strings.Contains(ans, `"code":-32012`) || !strings.Contains(ans, noSession) {
		t.Fatalf("an unreadable record: %s", ans)
	}
	// An event of a session the registry could not answer for is not shown, and
	// not remembered as hidden: once it answers, the owner sees it.
	if _, send := down.Outbound(t.Context(), msg(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s-1"}}`)); send {
		t.Fatal("an event was shown without a decision")
	}
	down.Guard.mu.Lock()
	_, remembered := down.Guard.visible["s-1"]
	down.Guard.mu.Unlock()
	if remembered {
		t.Fatal("a failed decision was remembered")
	}
}

// With a decision log, every per-message decision is logged in OPA's format,
// masked by the shipped mask rule (a provider's key never reaches it), and a
// refusal names the decision it was.
func TestGuardDecisionLog(t *testing.T) {
	e, reg := shippedPolicy(t), memoryRegistry(t)
	var buf bytes.Buffer
	ctx, cancel := context.WithCancel(t.Context())
	logger := decisionlog.New(ctx, &decisionlog.WriterSink{W: &buf}, e.Mask, decisionlog.Options{}, prometheus.NewRegistry())
	alice, bob := guardFor(e, reg, "acme", "alice"), guardFor(e, reg, "acme", "bob")
	alice.Decisions, bob.Decisions = logger, logger
	toCLI, _ := inbound(t, alice, `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"model":"m"}}`)
	sid := msg(t, toCLI).SessionID
	// A provider the pool does not list: refused, and logged without its key.
	if _, ans := inbound(t, alice, `{"jsonrpc":"2.0","id":3,"method":"session.create","params":{"model":"m","provider":{"type":"openai","baseUrl":"http://127.0.0.1:1/v1","apiKey":"sk-very-secret"}}}`); !strings.Contains(ans, "-32012") {
		t.Fatalf("an unlisted provider: %s", ans)
	}
	_, ans := inbound(t, bob, fmt.Sprintf(`{"jsonrpc":"2.0","id":2,"method":"session.send","params":{"sessionId":%q,"prompt":"x"}}`, sid))
	var refusal struct {
		Error struct {
			Code int
			Data struct {
				DecisionID string `json:"decision_id"`
			}
		}
	}
	if err := json.Unmarshal([]byte(ans), &refusal); err != nil || refusal.Error.Code != -32012 || refusal.Error.Data.DecisionID == "" {
		t.Fatalf("bob's refusal names no decision: %s", ans)
	}
	cancel()
	<-logger.Done()
	out := buf.String()
	if !strings.Contains(out, `"decision_id":"`+refusal.Error.Data.DecisionID+`"`) || !strings.Contains(out, `"path":"climesh/session/decision"`) {
		t.Fatalf("bob's refused decision is not in the log:\n%s", out)
	}
	if strings.Contains(out, "sk-very-secret") || !strings.Contains(out, `"/input/params/provider/apiKey"`) {
		t.Fatalf("the provider's key reached the log, or its erasure is not recorded:\n%s", out)
	}
}
