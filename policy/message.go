package policy

import (
	"context"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"
)

// MessageQuery is the sidecar's per-message entry point.
const MessageQuery = "data.climesh.session.decision"

// EdgeQuery is the ext_authz entry point (OPA-Envoy's result forms).
const EdgeQuery = "data.climesh.edge.allow"

// MessageInput is what a per-message decision sees.
type MessageInput struct {
	User, Tenant string
	Roles        []string
	Method       string
	SessionID    string         // params.sessionId, "" when the message names none
	Record       map[string]any // the registry entry for SessionID, nil if none
}

// Decision is a per-message answer.
type Decision struct {
	Allow  bool
	Reason string
}

// DecideMessage evaluates MessageQuery; any error or malformed result denies.
func (e *Engine) DecideMessage(ctx context.Context, in MessageInput) Decision {
	// Built as an AST value directly: converting a Go map by reflection costs more
	// than the evaluation itself.
	doc := ast.NewObject(
		ast.Item(ast.StringTerm("user"), ast.StringTerm(in.User)),
		ast.Item(ast.StringTerm("tenant"), ast.StringTerm(in.Tenant)),
		ast.Item(ast.StringTerm("roles"), stringsTerm(in.Roles)),
		ast.Item(ast.StringTerm("method"), ast.StringTerm(in.Method)),
	)
	if in.SessionID != "" {
		doc.Insert(ast.StringTerm("session_id"), ast.StringTerm(in.SessionID))
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
	return Decision{Allow: allow, Reason: reason}
}

func stringsTerm(ss []string) *ast.Term {
	terms := make([]*ast.Term, 0, len(ss))
	for _, s := range slices.Compact(slices.Sorted(slices.Values(ss))) {
		terms = append(terms, ast.StringTerm(s))
	}
	return ast.ArrayTerm(terms...)
}
