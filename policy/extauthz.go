package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/climesh/climesh/decisionlog"
	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/protocol"
)

// JWTMetadataNamespace and JWTPayloadKey are where Envoy's jwt_authn leaves the
// verified payload (climesh's xds translation configures both).
const (
	JWTMetadataNamespace = "envoy.filters.http.jwt_authn"
	JWTPayloadKey        = "jwt_payload"
)

// Claims names the JWT claims that make the identity assertion.
type Claims struct{ User, Tenant, Roles string }

// ExtAuthz is Envoy's ext_authz v3 gRPC service over an Engine. The input document
// has the OPA-Envoy plugin's shape (input.attributes.request.http..., parsed_path,
// parsed_query) plus input.jwt_payload; the result may be a boolean or the plugin's
// object form. An allowed tunnel gets the signed identity assertion header.
type ExtAuthz struct {
	authv3.UnimplementedAuthorizationServer
	Engine       *Engine
	Query        string
	Keys         identity.Signer
	Claims       Claims
	AssertionTTL time.Duration
	Log          *zap.Logger
	Now          func() time.Time
	// Decisions, when set, logs every decision (OPA's decision log format).
	Decisions *decisionlog.Logger

	decisions *prometheus.CounterVec
	latency   prometheus.Histogram
}

// NewExtAuthz registers the service's metrics on reg.
func NewExtAuthz(e *Engine, keys identity.Signer, claims Claims, ttl time.Duration, log *zap.Logger, reg prometheus.Registerer) *ExtAuthz {
	f := promauto.With(reg)
	return &ExtAuthz{
		Engine: e, Query: EdgeQuery, Keys: keys, Claims: claims, AssertionTTL: ttl, Log: log, Now: time.Now,
		decisions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "climesh_extauthz_decisions_total", Help: "ext_authz decisions, by result (allowed, denied, error).",
		}, []string{"result"}),
		latency: f.NewHistogram(prometheus.HistogramOpts{
			Name: "climesh_extauthz_seconds", Help: "Time to decide one ext_authz check.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14),
		}),
	}
}

// Check decides one request. Every answer carries its decision id: a denial
// in the x-climesh-decision-id header the client sees, every answer in the
// dynamic metadata Envoy's access log reads (decision_id); the decision is
// logged under it (Decisions).
func (a *ExtAuthz) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	defer func() { a.latency.Observe(time.Since(start).Seconds()) }()
	id := decisionlog.NewID()
	var d decided
	resp := a.check(ctx, req, &d)
	if resp.DynamicMetadata == nil {
		resp.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	resp.DynamicMetadata.Fields[DecisionIDKey] = structpb.NewStringValue(id)
	if dr := resp.GetDeniedResponse(); dr != nil {
		dr.Headers = append(dr.Headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: protocol.HeaderDecisionID, Value: id}})
	}
	if a.Decisions != nil {
		ev := decisionlog.Event{DecisionID: id, Path: strings.ReplaceAll(strings.TrimPrefix(a.Query, "data."), ".", "/"), Result: d.result, Error: d.err}
		if d.input != nil {
			ev.Input, _ = ast.JSON(d.input)
		}
		if rev := a.Engine.Revision(); rev != "" {
			ev.Bundles = map[string]decisionlog.BundleRevision{"climesh": {Revision: rev}}
		}
		a.Decisions.Log(ev)
	}
	return resp, nil
}

// DecisionIDKey is where a decision's id is in the dynamic metadata (under
// Envoy's ext_authz filter namespace: %DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%).
const DecisionIDKey = "decision_id"

// decided is what check saw, for the decision log.
type decided struct {
	input  ast.Value
	result any
	err    string
}

func (a *ExtAuthz) check(ctx context.Context, req *authv3.CheckRequest, d *decided) *authv3.CheckResponse {
	input, payload, err := InputValue(req, a.Claims)
	if err != nil {
		a.decisions.WithLabelValues("error").Inc()
		d.err = "unreadable request: " + err.Error()
		return denied(403, "climesh: unreadable request", nil)
	}
	d.input = input
	v, err := a.Engine.EvalValue(ctx, a.Query, input)
	if err != nil {
		a.decisions.WithLabelValues("error").Inc()
		a.Log.Warn("ext_authz: policy error; denied", zap.Error(err))
		d.err = err.Error()
		return denied(403, "climesh: policy error", nil)
	}
	d.result = v
	res, err := ParseResult(v)
	if err != nil {
		a.Engine.CountError(a.Query)
		a.decisions.WithLabelValues("error").Inc()
		a.Log.Warn("ext_authz: unusable policy result; denied", zap.Error(err))
		return denied(403, "climesh: policy error", nil)
	}
	md, err := dynamicMetadata(res.DynamicMetadata)
	if err != nil {
		a.Engine.CountError(a.Query)
		a.decisions.WithLabelValues("error").Inc()
		a.Log.Warn("ext_authz: unusable dynamic_metadata; denied", zap.Error(err))
		return denied(403, "climesh: policy error", nil)
	}
	if !res.Allowed {
		a.decisions.WithLabelValues("denied").Inc()
		resp := denied(res.Status, res.Body, res.Headers)
		resp.DynamicMetadata = md
		return resp
	}
	headers := res.Headers
	if user, _ := payload[a.Claims.User].(string); user != "" && a.Keys != nil {
		tenant, _ := payload[a.Claims.Tenant].(string)
		assertion, err := a.Keys.Sign(identity.Claims{User: user, Tenant: tenant, Roles: stringList(payload[a.Claims.Roles]),
			Expires: a.Now().Add(a.AssertionTTL).Unix()})
		if err != nil {
			a.decisions.WithLabelValues("error").Inc()
			return denied(403, "climesh: cannot sign identity", nil)
		}
		headers = append(headers, header{protocol.HeaderIdentity, assertion})
	}
	a.decisions.WithLabelValues("allowed").Inc()
	ok := &authv3.OkHttpResponse{HeadersToRemove: res.RemoveHeaders, QueryParametersToRemove: res.RemoveQuery}
	for _, q := range res.SetQuery {
		ok.QueryParametersToSet = append(ok.QueryParametersToSet, &corev3.QueryParameter{Key: q.name, Value: q.value})
	}
	seen := map[string]bool{}
	for _, h := range headers {
		// A header the result names twice keeps both values (OPA-Envoy's array form).
		action := corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		if seen[h.name] {
			action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
		}
		seen[h.name] = true
		ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: h.name, Value: h.value}, AppendAction: action})
	}
	for _, h := range res.ResponseHeaders {
		ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: h.name, Value: h.value},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	return &authv3.CheckResponse{Status: &status.Status{Code: int32(code.Code_OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
		DynamicMetadata: md}
}

// dynamicMetadata is a result's dynamic_metadata as Envoy takes it (nil: none).
func dynamicMetadata(m map[string]any) (*structpb.Struct, error) {
	if m == nil {
		return nil, nil
	}
	return structpb.NewStruct(jsonNumbersToFloats(m).(map[string]any))
}

// jsonNumbersToFloats turns json.Number values (OPA's numbers) into float64s,
// which structpb takes.
func jsonNumbersToFloats(v any) any {
	switch x := v.(type) {
	case json.Number:
		f, _ := x.Float64()
		return f
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonNumbersToFloats(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonNumbersToFloats(e)
		}
		return out
	}
	return v
}

type header struct{ name, value string }

// Result is a policy answer in any of the OPA-Envoy plugin's forms: a boolean,
// or an object with
//   - allowed (required, boolean);
//   - headers: an object of strings, or an array of such objects (a header
//     named twice gets both values) — added to the request when allowed, to
//     the response when denied;
//   - response_headers_to_add: the same forms, added to the response when allowed;
//   - request_headers_to_remove: an array of header names, removed from the
//     request when allowed;
//   - http_status (status_code is read too): the status of a denial, 200-599;
//   - body: the body of a denial;
//   - dynamic_metadata: an object Envoy hands to the filters after ext_authz;
//   - query_parameters_to_set: an object of strings or arrays of strings (one
//     parameter per value), and query_parameters_to_remove: an array of names —
//     the request's query changed when allowed.
//
// climesh's own headers (the identity assertion, the edge credential) may be
// neither set nor removed by a policy.
type Result struct {
	Allowed         bool
	Status          int
	Body            string
	Headers         []header // added to the request (allowed) or the response (denied)
	ResponseHeaders []header // added to the response when allowed
	RemoveHeaders   []string // removed from the request when allowed
	DynamicMetadata map[string]any
	SetQuery        []header // query parameters set when allowed (a key may repeat)
	RemoveQuery     []string // query parameters removed when allowed
}

// ParseResult reads a decision in any of Result's forms; anything else is an
// error naming the field (the caller denies).
func ParseResult(v any) (Result, error) {
	switch x := v.(type) {
	case bool:
		return Result{Allowed: x, Status: 403}, nil
	case map[string]any:
		allowed, ok := x["allowed"].(bool)
		if !ok {
			return Result{}, fmt.Errorf("result object has no boolean \"allowed\"")
		}
		r := Result{Allowed: allowed, Status: 403}
		for _, key := range []string{"http_status", "status_code"} {
			s, ok := x[key]
			if !ok {
				continue
			}
			n, err := number(s)
			if err != nil || n < 200 || n > 599 {
				return Result{}, fmt.Errorf("%s %v: want 200-599", key, s)
			}
			if r.Status != 403 && r.Status != n {
				return Result{}, fmt.Errorf("http_status and status_code disagree")
			}
			r.Status = n
		}
		if b, ok := x["body"]; ok {
			s, ok := b.(string)
			if !ok {
				return Result{}, fmt.Errorf("body: want a string")
			}
			r.Body = s
		}
		var err error
		if r.Headers, err = headerList(x["headers"]); err != nil {
			return Result{}, fmt.Errorf("headers: %w", err)
		}
		if r.ResponseHeaders, err = headerList(x["response_headers_to_add"]); err != nil {
			return Result{}, fmt.Errorf("response_headers_to_add: %w", err)
		}
		if r.RemoveHeaders, err = headerNames(x["request_headers_to_remove"]); err != nil {
			return Result{}, fmt.Errorf("request_headers_to_remove: %w", err)
		}
		if r.SetQuery, err = queryParams(x["query_parameters_to_set"]); err != nil {
			return Result{}, fmt.Errorf("query_parameters_to_set: %w", err)
		}
		if r.RemoveQuery, err = stringArray(x["query_parameters_to_remove"]); err != nil {
			return Result{}, fmt.Errorf("query_parameters_to_remove: %w", err)
		}
		if md, ok := x["dynamic_metadata"]; ok {
			if r.DynamicMetadata, ok = md.(map[string]any); !ok {
				return Result{}, fmt.Errorf("dynamic_metadata: want an object")
			}
		}
		return r, nil
	}
	return Result{}, fmt.Errorf("result is %T, want a boolean or an object", v)
}

// ownHeader reports whether name is one of the headers climesh sets itself.
func ownHeader(name string) bool {
	return strings.EqualFold(name, protocol.HeaderIdentity) || strings.EqualFold(name, protocol.HeaderEdgeCredential)
}

// headerList reads an object of strings, or an array of them.
func headerList(v any) ([]header, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case map[string]any:
		return headerMap(x)
	case []any:
		var out []header
		for i, item := range x {
			m, ok := item.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("[%d]: want an object of strings", i)
			}
			hs, err := headerMap(m)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out = append(out, hs...)
		}
		return out, nil
	}
	return nil, fmt.Errorf("want an object of strings, or an array of them")
}

func headerMap(m map[string]any) ([]header, error) {
	out := make([]header, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		s, ok := m[k].(string)
		if !ok {
			return nil, fmt.Errorf("%s: want a string", k)
		}
		if ownHeader(k) {
			return nil, fmt.Errorf("%s is climesh's own", k)
		}
		out = append(out, header{strings.ToLower(k), s})
	}
	return out, nil
}

// queryParams reads an object of strings or arrays of strings, in key order.
func queryParams(v any) ([]header, error) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want an object")
	}
	var out []header
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch x := m[k].(type) {
		case string:
			out = append(out, header{k, x})
		case []any:
			for i, e := range x {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("%s[%d]: want a string", k, i)
				}
				out = append(out, header{k, s})
			}
		default:
			return nil, fmt.Errorf("%s: want a string or an array of strings", k)
		}
	}
	return out, nil
}

// stringArray reads an array of non-empty strings.
func stringArray(v any) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want an array of strings")
	}
	out := make([]string, 0, len(list))
	for i, x := range list {
		s, ok := x.(string)
		if !ok || s == "" {
			return nil, fmt.Errorf("[%d]: want a non-empty string", i)
		}
		out = append(out, s)
	}
	return out, nil
}

// headerNames reads an array of header names, none of them climesh's own.
func headerNames(v any) ([]string, error) {
	names, err := stringArray(v)
	for i, n := range names {
		if ownHeader(n) {
			return nil, fmt.Errorf("%s is climesh's own", n)
		}
		names[i] = strings.ToLower(n)
	}
	return names, err
}

func number(v any) (int, error) {
	switch n := v.(type) {
	case int:
		return n, nil
	case float64:
		return int(n), nil
	case interface{ Int64() (int64, error) }:
		i, err := n.Int64()
		return int(i), err
	}
	return 0, fmt.Errorf("not a number")
}

func stringList(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func denied(statusCode int, body string, hdrs []header) *authv3.CheckResponse {
	d := &authv3.DeniedHttpResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode(statusCode)}, Body: body}
	for _, h := range hdrs {
		d.Headers = append(d.Headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: h.name, Value: h.value}})
	}
	c := code.Code_PERMISSION_DENIED
	if statusCode == 401 {
		c = code.Code_UNAUTHENTICATED
	}
	return &authv3.CheckResponse{Status: &status.Status{Code: int32(c), Message: body}, HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: d}}
}

// Input is the CheckRequest as the OPA-Envoy plugin gives it to a policy (v3):
// the request's attributes in protobuf's JSON mapping (lower camelCase keys,
// oneofs unwrapped: attributes.request.http.headers, attributes.source.address
// .socketAddress, attributes.destination, attributes.metadataContext, ...),
// input.version {"ext_authz": "v3", "encoding": "protojson"}, parsed_path,
// parsed_query, and — when Envoy sent the body — parsed_body (JSON, or a form
// as lists of values) and truncated_body. climesh adds input.jwt_payload: the
// payload Envoy's jwt_authn verified, as its policies read it. It also returns
// that payload, and input.identity: the user, tenant and roles read from it by
// the claim names configured (jwt.user_claim, tenant_claim, roles_claim), so
// that a policy reads input.identity.tenant whatever the issuer calls it.
func Input(req *authv3.CheckRequest, claims Claims) (map[string]any, map[string]any, error) {
	v, payload, err := InputValue(req, claims)
	if err != nil {
		return nil, nil, err
	}
	m, err := ast.JSON(v)
	if err != nil {
		return nil, nil, err
	}
	return m.(map[string]any), payload, nil
}

// InputValue is Input as an OPA value, built without a text round trip: the
// attributes go straight from protobuf into OPA's form (protoValue).
func InputValue(req *authv3.CheckRequest, claims Claims) (ast.Value, map[string]any, error) {
	attrs := req.GetAttributes()
	attributes, err := protoValue(attrs.ProtoReflect())
	if err != nil {
		return nil, nil, err
	}
	h := attrs.GetRequest().GetHttp()
	path, query, _ := strings.Cut(h.GetPath(), "?")
	segs := []*ast.Term{}
	for _, seg := range strings.Split(strings.Trim(path, "/"), "/") {
		if seg != "" {
			if u, err := url.PathUnescape(seg); err == nil {
				seg = u
			}
			segs = append(segs, ast.StringTerm(seg))
		}
	}
	parsedQuery := ast.NewObject()
	if q, err := url.ParseQuery(query); err == nil {
		for k, vs := range q {
			parsedQuery.Insert(ast.StringTerm(k), stringsTerm(vs))
		}
	}
	payload := map[string]any{}
	if md := attrs.GetMetadataContext().GetFilterMetadata()[JWTMetadataNamespace]; md != nil {
		if p := md.GetFields()[JWTPayloadKey].GetStructValue(); p != nil {
			payload = p.AsMap()
		}
	}
	payloadValue, err := ast.InterfaceToValue(payload)
	if err != nil {
		return nil, nil, err
	}
	item := func(k string, v ast.Value) [2]*ast.Term { return ast.Item(ast.StringTerm(k), ast.NewTerm(v)) }
	identity := ast.NewObject()
	for _, c := range []struct{ key, claim string }{{"user", claims.User}, {"tenant", claims.Tenant}} {
		if s, ok := payload[c.claim].(string); ok && c.claim != "" && s != "" {
			identity.Insert(ast.StringTerm(c.key), ast.StringTerm(s))
		}
	}
	if claims.Roles != "" {
		identity.Insert(ast.StringTerm("roles"), stringsTerm(stringList(payload[claims.Roles])))
	}
	input := ast.NewObject(
		item("attributes", attributes),
		item("identity", identity),
		item("version", ast.NewObject(item("ext_authz", ast.String("v3")), item("encoding", ast.String("protojson")))),
		item("parsed_path", ast.NewArray(segs...)),
		item("parsed_query", parsedQuery),
		item("jwt_payload", payloadValue),
	)
	body := h.GetBody()
	if body == "" && len(h.GetRawBody()) > 0 {
		body = string(h.GetRawBody())
	}
	if body != "" {
		truncated := strings.EqualFold(h.GetHeaders()["x-envoy-auth-partial-body"], "true")
		input.Insert(ast.StringTerm("truncated_body"), ast.BooleanTerm(truncated))
		if !truncated {
			if parsed, ok := parseBody(h.GetHeaders()["content-type"], body); ok {
				pv, err := ast.InterfaceToValue(parsed)
				if err != nil {
					return nil, nil, err
				}
				input.Insert(ast.StringTerm("parsed_body"), ast.NewTerm(pv))
			}
		}
	}
	return input, payload, nil
}

// parseBody reads a JSON or form body as OPA-Envoy does; other bodies (and
// bodies that do not parse) give no parsed_body.
func parseBody(contentType, body string) (any, bool) {
	mediaType, _, _ := strings.Cut(contentType, ";")
	switch strings.TrimSpace(strings.ToLower(mediaType)) {
	case "application/json":
		var v any
		dec := json.NewDecoder(strings.NewReader(body))
		dec.UseNumber()
		if dec.Decode(&v) != nil {
			return nil, false
		}
		return v, true
	case "application/x-www-form-urlencoded":
		q, err := url.ParseQuery(body)
		if err != nil {
			return nil, false
		}
		out := map[string]any{}
		for k, vs := range q {
			list := make([]any, len(vs))
			for i, v := range vs {
				list[i] = v
			}
			out[k] = list
		}
		return out, true
	}
	return nil, false
}
