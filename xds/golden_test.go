package xds

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/model"
)

var update = flag.Bool("update", false, "rewrite xds/testdata/out from the current translation")

// goldenInput is one file under testdata/in: a config and the fleet discovery saw.
type goldenInput struct {
	Config string                      `yaml:"config"`
	Fleet  map[string][]goldenInstance `yaml:"fleet"`
}

type goldenInstance struct {
	ID      string            `yaml:"id"`
	Address string            `yaml:"address"`
	Port    int               `yaml:"port"`
	Health  string            `yaml:"health"`
	Meta    map[string]string `yaml:"meta"`
}

func loadGoldenInput(t *testing.T, path string) (*config.Config, model.Fleet) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var in goldenInput
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&in); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	cfg, err := config.Load([]byte(in.Config))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := cfg.ResolveFiles(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var pools []model.Pool
	for name, list := range in.Fleet {
		var instances []model.Instance
		for _, g := range list {
			h := model.Healthy
			if g.Health != "" {
				if h, err = model.ParseHealth(g.Health); err != nil {
					t.Fatalf("%s: %v", path, err)
				}
			}
			instances = append(instances, model.Instance{ID: g.ID, Address: g.Address, Port: g.Port, Health: h, Meta: g.Meta})
		}
		pools = append(pools, model.NewPool(name, instances))
	}
	return cfg, model.NewFleet(pools...)
}

// toYAML renders resources as YAML through protojson, so that golden files read
// like the Envoy config users know, keyed by node group where types differ by group.
func toYAML(t *testing.T, v any) []byte {
	t.Helper()
	var tree any
	switch x := v.(type) {
	case proto.Message:
		tree = protoTree(t, x)
	case []any:
		list := make([]any, len(x))
		for i, m := range x {
			list[i] = protoTree(t, m.(proto.Message))
		}
		tree = list
	case map[string][]any:
		m := map[string]any{}
		for k, ms := range x {
			list := make([]any, len(ms))
			for i, msg := range ms {
				list[i] = protoTree(t, msg.(proto.Message))
			}
			m[k] = list
		}
		tree = m
	}
	out, err := sigsyaml.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func protoTree(t *testing.T, m proto.Message) any {
	t.Helper()
	j, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	if err := sigsyaml.Unmarshal(j, &tree); err != nil {
		t.Fatal(err)
	}
	return tree
}

func asAny[T proto.Message](xs []T) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	want := map[string]bool{}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			cfg, fleet := loadGoldenInput(t, in)
			groups, err := Translate(cfg, fleet)
			if err != nil {
				t.Fatal(err)
			}
			first := groups[cfg.NodeGroups()[0]]
			listeners, routes := map[string][]any{}, map[string][]any{}
			for g, r := range groups {
				listeners[g], routes[g] = asAny(r.Listeners), asAny(r.Routes)
			}
			files := map[string][]byte{
				"clusters":  toYAML(t, asAny(first.Clusters)),
				"endpoints": toYAML(t, asAny(first.Endpoints)),
				"listeners": toYAML(t, listeners),
				"routes":    toYAML(t, routes),
			}
			if len(first.Secrets) > 0 {
				// Redacted, as /debug/xds shows them: a golden file is read by all.
				redacted := make([]any, len(first.Secrets))
				for i, s := range first.Secrets {
					redacted[i] = RedactSecret(s)
				}
				files["secrets"] = toYAML(t, redacted)
			}
			for kind, got := range files {
				path := filepath.Join("testdata/out", name+"."+kind+".yaml")
				want[path] = true
				if *update {
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				exp, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test ./xds -update)", err)
				}
				if !bytes.Equal(exp, got) {
					t.Errorf("%s differs from the translation (review, then go test ./xds -update):\n%s", path, lineDiff(string(exp), string(got)))
				}
			}
		})
	}
	outs, _ := filepath.Glob("testdata/out/*.yaml")
	for _, out := range outs {
		if !want[out] {
			if *update {
				os.Remove(out)
				continue
			}
			t.Errorf("%s is stale: no input makes it (go test ./xds -update deletes it)", out)
		}
	}
}

// TestGoldenHoldNoSecret: the edge credential the inputs name is in no golden
// output, and reaches Envoy only as an SDS secret.
func TestGoldenHoldNoSecret(t *testing.T) {
	cred, err := os.ReadFile("testdata/edge-credential")
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(string(cred))
	outs, _ := filepath.Glob("testdata/out/*.yaml")
	for _, out := range outs {
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the edge credential in clear", out)
		}
	}
	cfg, fleet := loadGoldenInput(t, "testdata/in/policy_jwt.yaml")
	groups, err := Translate(cfg, fleet)
	if err != nil {
		t.Fatal(err)
	}
	r := groups["edge"]
	if len(r.Secrets) != 1 || r.Secrets[0].GetGenericSecret().GetSecret().GetInlineString() != secret {
		t.Fatalf("the edge credential is not the one SDS secret: %v", r.Secrets)
	}
	for _, m := range append(asAny(r.Listeners), asAny(r.Routes)...) {
		if j := protojson.Format(m.(proto.Message)); strings.Contains(j, secret) {
			t.Fatalf("a listener or route holds the edge credential: %.300s", j)
		}
	}
	if got := RedactSecret(r.Secrets[0]).GetGenericSecret().GetSecret().GetInlineString(); got != Redacted {
		t.Fatalf("redacted secret reads %q", got)
	}
}

// lineDiff shows the first lines that differ; enough to see what moved.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out strings.Builder
	shown := 0
	for i := 0; i < max(len(al), len(bl)) && shown < 10; i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			fmt.Fprintf(&out, "line %d:\n- %s\n+ %s\n", i+1, x, y)
			shown++
		}
	}
	return out.String()
}
