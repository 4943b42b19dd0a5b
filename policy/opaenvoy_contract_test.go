package policy

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/climesh/climesh/protocol"
)

// The OPA-Envoy contract, on OPA's own documentation: the example policies and
// inputs of the Envoy pages in the docs of the OPA module this build depends on
// (read from the module cache at test time, unchanged; nothing of them is kept
// in this repository). For each documented policy and input, climesh's
// ext_authz — given the CheckRequest whose attributes are the documented input's
// — decides as OPA decides the documented query on the documented input, and
// where the docs print the answer, as they print it. A result object is taken
// field by field into the CheckResponse Envoy receives.

// opaDocs is the docs directory of the OPA module in the module cache.
func opaDocs(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/open-policy-agent/opa").Output()
	if err != nil {
		t.Fatalf("locating the OPA module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "docs")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the OPA module has no docs: %v", err)
	}
	return dir
}

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// primerBlocks are the primer's code blocks with the snippet line after each.
type primerBlock struct{ lang, text, after string }

var fence = regexp.MustCompile("(?s)```(\\w+)\\n(.*?)\\n```\\s*\\n([^\\n]*)")

func primerBlocks(doc string) []primerBlock {
	var out []primerBlock
	for _, m := range fence.FindAllStringSubmatch(doc, -1) {
		out = append(out, primerBlock{m[1], m[2], m[3]})
	}
	return out
}

// contractCase is one documented policy, input and query.
type contractCase struct {
	name, policy, input, query string
	documented                 any // the docs' printed answer (nil: none printed)
}

func documentedCases(t *testing.T) []contractCase {
	docs := opaDocs(t)
	primer := readDoc(t, filepath.Join(docs, "docs/envoy/primer.md"))
	blocks := primerBlocks(primer)
	byID := map[string]string{}
	var objectPolicy, resultSnippet string
	for _, b := range blocks {
		if m := regexp.MustCompile(`<RunSnippet id="([^"]+)"`).FindStringSubmatch(b.after); m != nil {
			byID[m[1]] = b.text
		}
		if b.lang == "rego" && strings.Contains(b.after, `files="#input2.json"`) {
			objectPolicy = b.text
		}
		if b.lang == "rego" && strings.Contains(b.text, `result["allowed"]`) {
			resultSnippet = b.text
		}
	}
	for _, need := range []string{"authz.rego", "input.json", "input2.json"} {
		if byID[need] == "" {
			t.Fatalf("the primer no longer has %s (its layout changed: update this test)", need)
		}
	}
	if objectPolicy == "" || resultSnippet == "" {
		t.Fatal("the primer no longer has the policy with additional controls, or the result snippet")
	}
	// The snippet names every field; the policy defines all but one
	// (query_parameters_to_remove), which OPA refuses to compile as an unsafe
	// variable. The lines for rules the policy defines are kept, as the docs
	// mean them to be used ("variables with undefined values simply have no key").
	var kept []string
	for _, line := range strings.Split(resultSnippet, "\n") {
		m := regexp.MustCompile(`^result\["\w+"\] :?= (\w+)$`).FindStringSubmatch(strings.TrimSpace(line))
		if m == nil || regexp.MustCompile(`(?m)^`+m[1]+`\b`).MatchString(objectPolicy) {
			kept = append(kept, line)
		}
	}
	resultSnippet = strings.Join(kept, "\n")
	cases := []contractCase{
		{"primer: role policy, guest token", byID["authz.rego"], byID["input.json"], "data.envoy.authz.allow", nil},
		{"primer: role policy, second token", byID["authz.rego"], byID["input2.json"], "data.envoy.authz.allow", nil},
		{"primer: additional controls", objectPolicy, byID["input2.json"], "data.envoy.authz.allow", nil},
		// The Output Document section: its snippet added to the policy, as it says.
		{"primer: the result object", objectPolicy + "\n" + resultSnippet, byID["input2.json"], "data.envoy.authz.result", nil},
		{"primer: the result object, guest token", objectPolicy + "\n" + resultSnippet, byID["input.json"], "data.envoy.authz.result", nil},
	}
	for _, ex := range []string{"src/pages/_examples/envoy", "docs/policy-reference/_examples/encoding/envoy_header_manipulation"} {
		dir := filepath.Join(docs, ex)
		var cfg struct{ Command string }
		if err := json.Unmarshal([]byte(readDoc(t, filepath.Join(dir, "config.json"))), &cfg); err != nil {
			t.Fatal(err)
		}
		var out any
		if err := json.Unmarshal([]byte(readDoc(t, filepath.Join(dir, "output.json"))), &out); err != nil {
			t.Fatal(err)
		}
		query := cfg.Command
		if m, ok := out.(map[string]any); ok { // a package printed whole: its allow decides
			query, out = query+".allow", m["allow"]
		}
		cases = append(cases, contractCase{ex, readDoc(t, filepath.Join(dir, "policy.rego")), readDoc(t, filepath.Join(dir, "input.json")), query, out})
	}
	return cases
}

// checkRequestOf is the CheckRequest whose attributes are input.attributes.
func checkRequestOf(t *testing.T, input map[string]any) *authv3.CheckRequest {
	t.Helper()
	b, err := json.Marshal(map[string]any{"attributes": input["attributes"]})
	if err != nil {
		t.Fatal(err)
	}
	var req authv3.CheckRequest
	if err := protojson.Unmarshal(b, &req); err != nil {
		t.Fatalf("the documented input is not a CheckRequest's attributes: %v", err)
	}
	return &req
}

func TestOPAEnvoyDocumentedPolicies(t *testing.T) {
	if testing.Short() {
		t.Skip("reads the OPA module's docs through the go command")
	}
	cases := documentedCases(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var input map[string]any
			if err := json.Unmarshal([]byte(tc.input), &input); err != nil {
				t.Fatal(err)
			}
			// OPA on the documented input.
			rs, err := rego.New(rego.Query(tc.query), rego.Module("doc.rego", tc.policy), rego.Input(input)).Eval(t.Context())
			if err != nil || len(rs) == 0 {
				t.Fatalf("OPA: %v (%d results)", err, len(rs))
			}
			want := rs[0].Expressions[0].Value
			if tc.documented != nil && fmt.Sprint(want) != fmt.Sprint(tc.documented) {
				t.Fatalf("OPA decides %v, the docs print %v", want, tc.documented)
			}
			// climesh's ext_authz on the CheckRequest, the policy in a directory.
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "doc.rego"), []byte(tc.policy), 0o644); err != nil {
				t.Fatal(err)
			}
			e, err := NewEngine(t.Context(), dir, []string{tc.query}, zap.NewNop(), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			a := newTestAuthz(t, e)
			a.Query = tc.query
			resp, err := a.Check(t.Context(), checkRequestOf(t, input))
			if err != nil {
				t.Fatal(err)
			}
			res, err := ParseResult(want)
			if err != nil {
				t.Fatalf("OPA's answer is not a decision: %v", err)
			}
			if got := resp.GetOkResponse() != nil; got != res.Allowed {
				t.Fatalf("climesh allowed=%v, OPA allowed=%v (%v)", got, res.Allowed, want)
			}
			compareResponse(t, resp, res)
			t.Logf("allowed=%v as OPA decides (%s)", res.Allowed, tc.query)
		})
	}
}

// compareResponse checks that every field of OPA's result reached the
// CheckResponse as OPA-Envoy puts it there; climesh adds its decision id (to
// a denial's headers, and to the dynamic metadata of every answer) and nothing
// else.
func compareResponse(t *testing.T, resp *authv3.CheckResponse, res Result) {
	t.Helper()
	md := resp.GetDynamicMetadata().AsMap()
	id, _ := md[DecisionIDKey].(string)
	if id == "" {
		t.Fatal("no decision id in the dynamic metadata")
	}
	delete(md, DecisionIDKey)
	pairs := func(hs []header) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.name+"="+h.value)
		}
		sort.Strings(out)
		return out
	}
	if ok := resp.GetOkResponse(); ok != nil {
		var got, toClient, query []string
		for _, h := range ok.GetHeaders() {
			got = append(got, h.GetHeader().GetKey()+"="+h.GetHeader().GetValue())
		}
		for _, h := range ok.GetResponseHeadersToAdd() {
			toClient = append(toClient, h.GetHeader().GetKey()+"="+h.GetHeader().GetValue())
		}
		for _, q := range ok.GetQueryParametersToSet() {
			query = append(query, q.GetKey()+"="+q.GetValue())
		}
		sort.Strings(got)
		sort.Strings(toClient)
		sort.Strings(query)
		if !slices.Equal(got, pairs(res.Headers)) || !slices.Equal(toClient, pairs(res.ResponseHeaders)) ||
			!slices.Equal(query, pairs(res.SetQuery)) || !slices.Equal(ok.GetHeadersToRemove(), res.RemoveHeaders) ||
			!slices.Equal(ok.GetQueryParametersToRemove(), res.RemoveQuery) {
			t.Fatalf("allowed response %v differs from the result %+v", ok, res)
		}
	} else {
		d := resp.GetDeniedResponse()
		var got []string
		for _, h := range d.GetHeaders() {
			if h.GetHeader().GetKey() == protocol.HeaderDecisionID && h.GetHeader().GetValue() == id {
				continue
			}
			got = append(got, h.GetHeader().GetKey()+"="+h.GetHeader().GetValue())
		}
		sort.Strings(got)
		if int(d.GetStatus().GetCode()) != res.Status || d.GetBody() != res.Body || !slices.Equal(got, pairs(res.Headers)) {
			t.Fatalf("denied response %v differs from the result %+v", d, res)
		}
	}
	if res.DynamicMetadata == nil && len(md) > 0 || res.DynamicMetadata != nil && !maps.EqualFunc(md, jsonNumbersToFloats(res.DynamicMetadata).(map[string]any),
		func(a, b any) bool { return fmt.Sprint(a) == fmt.Sprint(b) }) {
		t.Fatalf("dynamic metadata %v, want %v", md, res.DynamicMetadata)
	}
}
