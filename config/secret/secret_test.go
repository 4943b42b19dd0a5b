package secret_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/config/secret"
	"github.com/climesh/climesh/identity"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct {
		content string
		want    error // nil: accepted
	}{
		"a real secret":      {"  3f9a1c7e5b2d4086a1e3c5b7d9f0a2c4\n", nil},
		"empty":              {"", secret.ErrEmpty},
		"only white space":   {" \n\t\n", secret.ErrEmpty},
		"short":              {"0123456789abcde\n", secret.ErrShort},
		"shipped edge":       {"REPLACE-with-another-long-random-secret", secret.ErrPlaceholder},
		"placeholder inside": {"prefix-REPLACE-this-please-0123456789", secret.ErrPlaceholder},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := secret.ReadFile(path, secret.MinLength)
			if tc.want == nil {
				if err != nil || got != strings.TrimSpace(tc.content) {
					t.Fatalf("ReadFile = %q, %v; want the trimmed secret", got, err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("ReadFile = %q, %v; want %v naming %s", got, err, tc.want, path)
			}
		})
	}
}

// TestLinesOf: a rotating credential file lists the old and the new value,
// each checked; the line at fault is named.
func TestLinesOf(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct {
		content string
		want    []string
		err     error
		line    string // named in the error
	}{
		"one":                  {"3f9a1c7e5b2d4086a1e3c5b7d9f0a2c4\n", []string{"3f9a1c7e5b2d4086a1e3c5b7d9f0a2c4"}, nil, ""},
		"two, blank between":   {" old-0123456789abcdef \n\nnew-0123456789abcdef\n", []string{"old-0123456789abcdef", "new-0123456789abcdef"}, nil, ""},
		"empty":                {"\n \n", nil, secret.ErrEmpty, ""},
		"second a placeholder": {"old-0123456789abcdef\nREPLACE-with-another-long-random-secret\n", nil, secret.ErrPlaceholder, "line 2"},
		"second short":         {"old-0123456789abcdef\nshort\n", nil, secret.ErrShort, "line 2"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			content, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := secret.LinesOf(path, content, secret.MinLength)
			if tc.err == nil {
				if err != nil || strings.Join(got, ",") != strings.Join(tc.want, ",") {
					t.Fatalf("LinesOf = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.line) {
				t.Fatalf("LinesOf = %q, %v; want %v naming %s %s", got, err, tc.err, path, tc.line)
			}
		})
	}
}

// TestShippedSecretsRefused feeds every value of the shipped Secrets to the check
// that reads it at start: none passes.
func TestShippedSecretsRefused(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/kubernetes/base/secrets.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	seen := 0
	for {
		var doc struct {
			Metadata   struct{ Name string }
			StringData map[string]string `yaml:"stringData"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		for key, value := range doc.StringData {
			seen++
			name := doc.Metadata.Name + "/" + key
			path := filepath.Join(dir, doc.Metadata.Name+"-"+key)
			if err := os.WriteFile(path, []byte(value), 0o600); err != nil {
				t.Fatal(err)
			}
			var err error
			switch key {
			case "identity-keys.json":
				_, err = identity.LoadKeys(path)
			case "jwks.json":
				_, err = config.ReadJWKS(path)
			default:
				_, err = secret.ReadFile(path, secret.MinLength)
			}
			if err == nil {
				t.Errorf("the shipped %s (%q) is accepted", name, value)
			} else {
				t.Logf("%s: %v", name, err)
			}
		}
	}
	if seen < 5 {
		t.Fatalf("read %d shipped values, want the 5 of secrets.yaml", seen)
	}
}
