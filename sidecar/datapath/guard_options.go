package datapath

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
)

func newSessionID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// withMember is m with params[name] set to value.
func withMember(m jsonrpc.Message, name string, value any) (jsonrpc.Message, error) {
	obj := map[string]json.RawMessage{}
	if m.Params != nil {
		// A map matches names exactly; the params were read strictly (no duplicates).
		if err := json.Unmarshal(m.Params, &obj); err != nil {
			return m, fmt.Errorf("params: %v", err)
		}
	}
	v, err := json.Marshal(value)
	if err != nil {
		return m, err
	}
	obj[name] = v
	b, err := json.Marshal(obj)
	if err != nil {
		return m, err
	}
	return m.WithParams(jsontext.Value(b))
}

// setOptions applies the decision to a create's or resume's params: the policy's
// set_params, and the built-in tools it opened.
//
// The CLI's built-in tools (shell, files, web fetch...) become those the policy
// opened, whatever the client asked: availableTools is set to the client's own
// tools (declared in params.tools, which the CLI hands back to the client to run)
// and the opened built-ins, within the client's own availableTools if it gave one.
// Each client tool is marked overridesBuiltInTool, so that a client tool named like
// a built-in is the client's. ["*"] leaves the tools alone.
func setOptions(m jsonrpc.Message, d policy.Decision) (jsonrpc.Message, error) {
	if d.AllTools() && len(d.SetParams) == 0 {
		return m, nil
	}
	obj := map[string]json.RawMessage{}
	if m.Params != nil {
		if err := json.Unmarshal(m.Params, &obj); err != nil {
			return m, fmt.Errorf("params: %v", err)
		}
	}
	for name, v := range d.SetParams {
		b, err := json.Marshal(v)
		if err != nil {
			return m, fmt.Errorf("policy set_params.%s: %v", name, err)
		}
		obj[name] = b
	}
	if d.AllTools() {
		b, err := json.Marshal(obj)
		if err != nil {
			return m, err
		}
		return m.WithParams(jsontext.Value(b))
	}
	var allowed []string
	if raw, ok := obj["tools"]; ok && string(raw) != "null" {
		var tools []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &tools); err != nil {
			return m, errors.New("params.tools: want a list of tool objects")
		}
		for i, t := range tools {
			var name string
			if err := json.Unmarshal(t["name"], &name); err != nil || name == "" {
				return m, fmt.Errorf("params.tools[%d].name: want a string", i)
			}
			allowed = append(allowed, name)
			t["overridesBuiltInTool"] = json.RawMessage("true")
		}
		obj["tools"], _ = json.Marshal(tools)
	}
	allowed = append(allowed, d.BuiltinTools...)
	if raw, ok := obj["availableTools"]; ok && string(raw) != "null" {
		var asked []string
		if err := json.Unmarshal(raw, &asked); err != nil {
			return m, errors.New("params.availableTools: want a list of tool names")
		}
		allowed = slices.DeleteFunc(allowed, func(n string) bool { return !slices.Contains(asked, n) })
	}
	slices.Sort(allowed)
	allowed = slices.Compact(allowed)
	if allowed == nil {
		allowed = []string{} // [] is "no tools"; null would be "all of them"
	}
	obj["availableTools"], _ = json.Marshal(allowed)
	b, err := json.Marshal(obj)
	if err != nil {
		return m, err
	}
	return m.WithParams(jsontext.Value(b))
}
