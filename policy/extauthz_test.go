package policy

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/climesh/climesh/decisionlog"
	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/protocol"
)

var testKeys = &identity.Keys{Active: "k1", Keys: map[string][]byte{"k1": bytes.Repeat([]byte{7}, 32)}}

func newTestAuthz(t testing.TB, e *Engine) *ExtAuthz {
	a := NewExtAuthz(e, testKeys, Claims{User: "sub", Tenant: "tenant", Roles: "roles"}, time.Minute, zap.NewNop(), prometheus.NewRegistry())
	a.Now = func() time.Time { return time.Unix(1_800_000_000, 0) }
	return a
}

func loadCheck(t testing.TB, name string) *authv3.CheckRequest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata/check", name))
	if err != nil {
		t.Fatal(err)
	}
	var req authv3.CheckRequest
	if err := protojson.Unmarshal(b, &req); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &req
}

// TestCheckCanned replays canned CheckRequests through the shipped edge policy.
func TestCheckCanned(t *testing.T) {
	a := newTestAuthz(t, shippedEngine(t))
	cases := map[string]struct {
		status int // 0: allowed
		body   string
	}{
		"admitted.json":     {},
		"other_tenant.json": {403, `climesh: tenant "globex" may not use pool "acme-dedicated"`},
		"no_jwt.json":       {401, "climesh: no verified identity"},
	}
	for name, tc := range cases {
		resp, err := a.Check(t.Context(), loadCheck(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if tc.status == 0 {
			ok := resp.GetOkResponse()
			if ok == nil {
				t.Fatalf("%s: denied: %v", name, resp)
			}
			var assertion string
			for _, h := range ok.GetHeaders() {
				if h.GetHeader().GetKey() == protocol.HeaderIdentity {
					assertion = h.GetHeader().GetValue()
				}
			}
			c, err := testKeys.Verify(assertion, a.Now())
			if err != nil || c.User != "alice" || c.Tenant != "acme" || !c.HasRole("dev") {
				t.Fatalf("%s: assertion %+v %v", name, c, err)
			}
			continue
		}
		d := resp.GetDeniedResponse()
		if d == nil || int(d.GetStatus().GetCode()) != tc.status || d.GetBody() != tc.body {
			t.Fatalf("%s: %v, want %d %q", name, resp, tc.status, tc.body)
		}
	}
}

func TestInputShape(t *testing.T) {
	in, payload, err := Input(loadCheck(t, "admitted.json"), Claims{User: "sub", Tenant: "tenant", Roles: "roles"})
	if err != nil {
		t.Fatal(err)
	}
	http := in["attributes"].(map[string]any)["request"].(map[string]any)["http"].(map[string]any)
	if http["method"] != "GET" || http["headers"].(map[string]any)["upgrade"] != "websocket" {
		t.Fatalf("http %v", http)
	}
	if p := in["parsed_path"].([]any); len(p) != 2 || p[0] != "v1" || p[1] != "rpc" {
		t.Fatalf("parsed_path %v", p)
	}
	if q := in["parsed_query"].(map[string]any); q["client"].([]any)[0] != "sdk" {
		t.Fatalf("parsed_query %v", q)
	}
	if payload["sub"] != "alice" || in["jwt_payload"].(map[string]any)["tenant"] != "acme" {
		t.Fatalf("payload %v", payload)
	}
}

func TestParseResultForms(t *testing.T) {
	for name, tc := range map[string]struct {
		v       any
		allowed bool
		status  int
		err     string
	}{
		"true":                 {v: true, allowed: true, status: 403},
		"false":                {v: false, status: 403},
		"object":               {v: map[string]any{"allowed": false, "http_status": 429.0, "body": "slow down", "response_headers_to_add": map[string]any{"retry-after": "5"}}, status: 429},
		"with headers":         {v: map[string]any{"allowed": true, "headers": map[string]any{"X-Team": "a"}}, allowed: true, status: 403},
		"no allowed":           {v: map[string]any{"ok": true}, err: "no boolean"},
		"bad status":           {v: map[string]any{"allowed": false, "http_status": 99.0}, err: "http_status"},
		"string":               {v: "yes", err: "want a boolean or an object"},
		"own header":           {v: map[string]any{"allowed": true, "headers": map[string]any{"X-Climesh-Identity": "forged"}}, err: "climesh's own"},
		"bad header":           {v: map[string]any{"allowed": true, "headers": map[string]any{"a": 1.0}}, err: "want a string"},
		"header array":         {v: map[string]any{"allowed": true, "headers": []any{map[string]any{"x-a": "1"}, map[string]any{"x-a": "2"}}}, allowed: true, status: 403},
		"status_code":          {v: map[string]any{"allowed": false, "status_code": 401.0}, status: 401},
		"disagreeing statuses": {v: map[string]any{"allowed": false, "status_code": 401.0, "http_status": 429.0}, err: "disagree"},
		"remove own header":    {v: map[string]any{"allowed": true, "request_headers_to_remove": []any{"X-Climesh-Edge-Credential"}}, err: "climesh's own"},
		"remove not a list":    {v: map[string]any{"allowed": true, "request_headers_to_remove": "x-a"}, err: "request_headers_to_remove"},
		"metadata not object":  {v: map[string]any{"allowed": true, "dynamic_metadata": []any{"foo", "bar"}}, err: "dynamic_metadata"},
		"query not strings":    {v: map[string]any{"allowed": true, "query_parameters_to_set": map[string]any{"n": 1.0}}, err: "query_parameters_to_set"},
		"body not string":      {v: map[string]any{"allowed": false, "body": 3.0}, err: "body"},
	} {
		r, err := ParseResult(tc.v)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want error %q", name, err, tc.err)
			}
			continue
		}
		if err != nil || r.Allowed != tc.allowed || r.Status != tc.status {
			t.Errorf("%s: %+v %v", name, r, err)
		}
	}
}

func BenchmarkCheck(b *testing.B) {
	a := newTestAuthz(b, shippedEngine(b))
	req := loadCheck(b, "admitted.json")
	b.ReportAllocs()
	for b.Loop() {
		if resp, _ := a.Check(b.Context(), req); resp.GetOkResponse() == nil {
			b.Fatal("denied")
		}
	}
}

// The claim names the config gives reach the shipped edge policy through
// input.identity: an issuer that calls the user "email", the tenant "org" and
// the roles "groups" is admitted and refused by those claims, and a token that
// carries only the default names has no identity.
func TestConfiguredClaimNamesReachThePolicy(t *testing.T) {
	a := newTestAuthz(t, shippedEngine(t))
	a.Claims = Claims{User: "email", Tenant: "org", Roles: "groups"}
	check := func(payload map[string]any, pool string) *authv3.CheckResponse {
		t.Helper()
		req := loadCheck(t, "admitted.json")
		req.Attributes.ContextExtensions = map[string]string{"pool": pool}
		p, err := structpb.NewStruct(payload)
		if err != nil {
			t.Fatal(err)
		}
		req.Attributes.MetadataContext.FilterMetadata[JWTMetadataNamespace] = &structpb.Struct{Fields: map[string]*structpb.Value{JWTPayloadKey: structpb.NewStructValue(p)}}
		resp, err := a.Check(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	org := map[string]any{"email": "ann@globex.test", "org": "globex", "groups": []any{"dev"}}
	if resp := check(org, "globex-dedicated"); resp.GetOkResponse() == nil {
		t.Fatalf("a globex user (org claim) refused from globex's pool: %v", resp.GetDeniedResponse())
	}
	if resp := check(org, "acme-dedicated"); resp.GetDeniedResponse().GetStatus().GetCode() != 403 {
		t.Fatalf("a globex user (org claim) in acme's pool: %v", resp)
	}
	admin := map[string]any{"email": "root@ops.test", "org": "ops", "groups": []any{"admin"}}
	if resp := check(admin, "acme-dedicated"); resp.GetOkResponse() == nil {
		t.Fatalf("an admin (groups claim) refused: %v", resp.GetDeniedResponse())
	}
	defaults := map[string]any{"sub": "ann", "tenant": "globex"}
	if resp := check(defaults, "globex-dedicated"); resp.GetDeniedResponse().GetStatus().GetCode() != 401 {
		t.Fatalf("a token without the configured user claim: %v, want 401", resp)
	}
}

// Every edge decision is logged under the id the client sees, in OPA's
// format, masked by the policy's own system.log.mask rule.
func TestEdgeDecisionLog(t *testing.T) {
	dir := t.TempDir()
	for name, src := range map[string]string{
		"edge.rego": "package climesh.edge\n\nallow := {\"allowed\": false, \"http_status\": 403, \"body\": \"no\"} if input.identity.tenant == \"globex\"\nelse := true\n",
		"mask.rego": "package system.log\n\nmask contains \"/input/attributes/request/http/headers/authorization\"\nmask contains {\"op\": \"upsert\", \"path\": \"/input/jwt_payload/email\", \"value\": \"***\"}\n" +
			// The verified payload is in the input twice: as OPA-Envoy gives the
			// metadata, and as input.jwt_payload.
			"mask contains \"/input/attributes/metadataContext\"\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e, err := NewEngine(t.Context(), dir, []string{EdgeQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	ctx, cancel := context.WithCancel(t.Context())
	a := newTestAuthz(t, e)
	a.Decisions = decisionlog.New(ctx, &decisionlog.WriterSink{W: &buf}, e.Mask, decisionlog.Options{Labels: map[string]string{"app": "xds-server"}}, prometheus.NewRegistry())
	req := loadCheck(t, "admitted.json")
	req.Attributes.Request.Http.Headers["authorization"] = "Bearer the-secret-token"
	p, _ := structpb.NewStruct(map[string]any{"sub": "ann", "tenant": "globex", "email": "ann@globex.test"})
	req.Attributes.MetadataContext.FilterMetadata[JWTMetadataNamespace] = &structpb.Struct{Fields: map[string]*structpb.Value{JWTPayloadKey: structpb.NewStructValue(p)}}
	resp, err := a.Check(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for _, h := range resp.GetDeniedResponse().GetHeaders() {
		if h.GetHeader().GetKey() == protocol.HeaderDecisionID {
			id = h.GetHeader().GetValue()
		}
	}
	if id == "" || resp.GetDynamicMetadata().GetFields()[DecisionIDKey].GetStringValue() != id {
		t.Fatalf("the denial carries no decision id, or two: %v", resp)
	}
	cancel()
	<-a.Decisions.Done()
	out := buf.String()
	if !strings.Contains(out, `"decision_id":"`+id+`"`) || !strings.Contains(out, `"path":"climesh/edge/allow"`) {
		t.Fatalf("the decision %s is not in the log:\n%s", id, out)
	}
	if strings.Contains(out, "the-secret-token") || strings.Contains(out, "ann@globex.test") {
		t.Fatalf("a secret reached the decision log:\n%s", out)
	}
	if !strings.Contains(out, `"/input/attributes/request/http/headers/authorization"`) || !strings.Contains(out, `"/input/attributes/metadataContext"`) || !strings.Contains(out, `"masked":["/input/jwt_payload/email"]`) {
		t.Fatalf("erased and masked not recorded:\n%s", out)
	}
}

// Claims of the wrong type give no identity: a tenant claim that is a list
// (two tenants at once) admits to no tenant's pool, and a user claim that is
// not a string is no verified user at all.
func TestClaimsOfTheWrongTypeGiveNoIdentity(t *testing.T) {
	a := newTestAuthz(t, shippedEngine(t))
	check := func(payload map[string]any, pool string) *authv3.CheckResponse {
		t.Helper()
		req := loadCheck(t, "admitted.json")
		req.Attributes.ContextExtensions = map[string]string{"pool": pool}
		p, err := structpb.NewStruct(payload)
		if err != nil {
			t.Fatal(err)
		}
		req.Attributes.MetadataContext.FilterMetadata[JWTMetadataNamespace] = &structpb.Struct{Fields: map[string]*structpb.Value{JWTPayloadKey: structpb.NewStructValue(p)}}
		resp, err := a.Check(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := check(map[string]any{"sub": "ann", "tenant": []any{"acme", "globex"}}, "acme-dedicated"); resp.GetOkResponse() != nil {
		t.Fatal("a list of tenants was admitted to acme's pool")
	}
	if resp := check(map[string]any{"sub": 42.0, "tenant": "acme"}, "acme-dedicated"); resp.GetDeniedResponse().GetStatus().GetCode() != 401 {
		t.Fatalf("a numeric user claim: %v, want 401", resp)
	}
	if resp := check(map[string]any{"sub": "", "tenant": "acme"}, "acme-dedicated"); resp.GetDeniedResponse().GetStatus().GetCode() != 401 {
		t.Fatalf("an empty user claim: %v, want 401", resp)
	}
}
