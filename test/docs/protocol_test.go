package docs_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/climesh/climesh/test/harness"
)

// protocolName matches a string literal that spells a name package protocol
// owns: a CLI method climesh acts on, a session event type, a climesh header.
var protocolName = regexp.MustCompile(`^"(connect|ping|runtime\.shutdown|session\.[A-Za-z.]+|(?i:x-climesh-[a-z-]+)|(?i:authorization))"$`)

// TestProtocolNamesHaveOneHome: the product's code names methods, events and
// headers through package protocol, never as string literals of its own (tests,
// benchmarks, examples and tools may spell them: they are the other side).
func TestProtocolNamesHaveOneHome(t *testing.T) {
	root, err := harness.Root()
	if err != nil {
		t.Fatal(err)
	}
	skip := regexp.MustCompile(`^(\.tools|protocol|test|bench|examples|tools|deploy)(/|$)`)
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() && (skip.MatchString(rel) || strings.HasPrefix(d.Name(), ".") && rel != ".") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING && protocolName.MatchString(lit.Value) {
				t.Errorf("%s: %s is package protocol's name; use the constant", fset.Position(lit.Pos()), lit.Value)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
