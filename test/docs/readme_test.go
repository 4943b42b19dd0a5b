// Package docs_test keeps the README's references honest: every flag of the three
// binaries and every field of the xds-server's config must be documented there.
package docs_test

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/test/harness"
)

func readme(t *testing.T) string {
	t.Helper()
	root, err := harness.Root()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReadmeDocumentsEveryFlag(t *testing.T) {
	text := readme(t)
	for _, cmd := range []string{"xds-server", "climesh-sidecar", "climesh-connect"} {
		flags, err := harness.Flags(cmd)
		if err != nil {
			t.Fatal(err)
		}
		for name := range flags {
			if !regexp.MustCompile(`--` + regexp.QuoteMeta(name) + `\b`).MatchString(text) {
				t.Errorf("README.md does not document %s --%s", cmd, name)
			}
		}
	}
}

// yamlFields lists the yaml keys of a config type, recursively.
func yamlFields(t reflect.Type, seen map[reflect.Type]bool, out map[string]bool) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return
	}
	seen[t] = true
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[name] = true
		yamlFields(f.Type, seen, out)
	}
}

func TestReadmeDocumentsEveryConfigField(t *testing.T) {
	text := readme(t)
	fields := map[string]bool{}
	yamlFields(reflect.TypeOf(config.Config{}), map[reflect.Type]bool{}, fields)
	if len(fields) < 30 {
		t.Fatalf("found %d config fields; the walk is broken", len(fields))
	}
	for name := range fields {
		if !regexp.MustCompile(`\b` + regexp.QuoteMeta(name) + `\b`).MatchString(text) {
			t.Errorf("README.md does not document the config field %q", name)
		}
	}
}
