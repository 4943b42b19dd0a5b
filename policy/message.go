package policy

import (
	"bytes"
	"context"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// MessageQuery is the sidecar's per-message entry point.
const MessageQuery = "data.climesh.session.decision"

// EdgeQuery is the ext_authz entry point by default (OPA-Envoy's result forms).
const EdgeQuery = "data.climesh.edge.allow"

// DecisionQuery is the query of a decision path (OPA-Envoy's path setting:
// envoy/authz/allow is data.envoy.authz.allow).
func DecisionQuery(path string) string {
	return "data." + strings.ReplaceAll(strings.Trim(path, "/"), "/", ".")
}

// MessageInput is what a per-message decision sees (input.*):
//
//	user, tenant, roles   the verified caller
//	pool, mode            where the message arrived (mode: shared, collab, isolated)
//	kind                  request or notification
//	method, session_id    the message's method and params.sessionId
//	params                the whole params object, from the sidecar's one strict reading
//	record                the registry entry of session_id (owner, tenant, members, ...)
type MessageInput struct {
	User, Tenant string
	Roles        []string
	Pool, Mode   string
	Kind         string
	Method       string
	SessionID    string         // params.sessionId, "" when the message names none
	Params       []byte         // the params object as read (strictly), nil when absent
	Record       map[string]any // the registry entry for SessionID, nil if none
}

// Decision is a per-message answer.
type Decision struct {
	Allow  bool
	Reason string
	// BuiltinTools are the CLI's own tools a session.create or session.resume may
	// use (the policy's builtin_tools); nil means none, ["*"] all of them.
	BuiltinTools []string
	// SetParams are params members the sidecar sets on the message, whatever the
	// client sent (the policy's set_params), e.g. skipCustomInstructions: true.
	SetParams map[string]any
}

// AllTools reports whether the decision leaves the CLI's built-in tools alone.
func (d Decision) AllTools() bool { return slices.Contains(d.BuiltinTools, "*") }

// DecideMessage evaluates MessageQuery; any error or malformed result denies.
func (e *Engine) DecideMessage(ctx context.Context, in MessageInput) Decision {
	// Built as an AST value directly: converting a Go map by reflection costs more
	// than the evaluation itself.
	doc := ast.NewObject(
		ast.Item(ast.StringTerm("user"), ast.StringTerm(in.User)),
		ast.Item(ast.StringTerm("tenant"), ast.StringTerm(in.Tenant)),
		ast.Item(ast.StringTerm("roles"), stringsTerm(in.Roles)),
		ast.Item(ast.StringTerm("pool"), ast.StringTerm(in.Pool)),
		ast.Item(ast.StringTerm("mode"), ast.StringTerm(in.Mode)),
		ast.Item(ast.StringTerm("kind"), ast.StringTerm(in.Kind)),
		ast.Item(ast.StringTerm("method"), ast.StringTerm(in.Method)),
	)
	if in.SessionID != "" {
		doc.Insert(ast.StringTerm("session_id"), ast.StringTerm(in.SessionID))
	}
	if in.Params != nil {
		// The params were read strictly (no duplicate names anywhere), so OPA's
		// reading of these bytes is the sidecar's and the CLI's.
		p, err := ast.ValueFromReader(bytes.NewReader(in.Params))
		if err != nil {
			e.CountError(MessageQuery)
			return Decision{Reason: "access denied: unreadable params"}
		}
		doc.Insert(ast.StringTerm("params"), ast.NewTerm(p))
	}
	if in.Record != nil {
		rec, err := ast.InterfaceToValue(in.Record)
		if err != nil {
			e.CountError(MessageQuery)
			return Decision{Reason: "access denied: unreadable session record"}
		}
		doc.Insert(ast.StringTerm("record"), ast.NewTerm(rec))
	}
	v, err := e.EvalValue(ctx, MessageQuery, doc)
	if err != nil {
		return Decision{Reason: "access denied: policy error"}
	}
	m, ok := v.(map[string]any)
	allow, okA := m["allow"].(bool)
	reason, _ := m["reason"].(string)
	if !ok || !okA {
		e.CountError(MessageQuery)
		return Decision{Reason: "access denied: policy returned no decision"}
	}
	if reason == "" {
		reason = "access denied"
	}
	d := Decision{Allow: allow, Reason: reason}
	if tools, ok := m["builtin_tools"].([]any); ok {
		for _, t := range tools {
			if s, ok := t.(string); ok {
				d.BuiltinTools = append(d.BuiltinTools, s)
			}
		}
		slices.Sort(d.BuiltinTools)
	}
	if set, ok := m["set_params"].(map[string]any); ok && len(set) > 0 {
		d.SetParams = set
	}
	return d
}

func stringsTerm(ss []string) *ast.Term {
	terms := make([]*ast.Term, 0, len(ss))
	for _, s := range slices.Compact(slices.Sorted(slices.Values(ss))) {
		terms = append(terms, ast.StringTerm(s))
	}
	return ast.ArrayTerm(terms...)
}
