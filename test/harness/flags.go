package harness

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/climesh/climesh/connector"
	"github.com/climesh/climesh/sidecar"
)

// configFlags are the commands whose flags are their typed config's flag set:
// listed from it, not from main.go.
var configFlags = map[string]func() *flag.FlagSet{
	"climesh-connect": func() *flag.FlagSet { c := connector.DefaultConfig(); return c.FlagSet() },
	"climesh-sidecar": func() *flag.FlagSet { c := sidecar.DefaultConfig(); return c.FlagSet() },
}

// Flags lists the flags cmd/<name> defines: its config's flag set (configFlags),
// or else read from its main.go: every flag.String("name", ...)-style call and
// every fs.StringVar(&v, "name", ...) (the package flag or a FlagSet named fs).
// Tests use it to check that manifests and docs name real flags.
func Flags(name string) (map[string]bool, error) {
	if fs, ok := configFlags[name]; ok {
		names := map[string]bool{}
		fs().VisitAll(func(f *flag.Flag) { names[f.Name] = true })
		return names, nil
	}
	root, err := Root()
	if err != nil {
		return nil, err
	}
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(root, "cmd", name, "main.go"), nil, 0)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) < 2 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if recv, ok := sel.X.(*ast.Ident); !ok || (recv.Name != "flag" && recv.Name != "fs") {
			return true // zap.String("key", ...) and the like
		}
		arg := 0
		if strings.HasSuffix(sel.Sel.Name, "Var") {
			arg = 1
		} else if !slices.Contains([]string{"String", "Int", "Bool", "Duration"}, sel.Sel.Name) {
			return true
		}
		if lit, ok := call.Args[arg].(*ast.BasicLit); ok && lit.Kind == token.STRING {
			n, _ := strconv.Unquote(lit.Value)
			names[n] = true
		}
		return true
	})
	if len(names) == 0 {
		return nil, fmt.Errorf("cmd/%s defines no flags that could be found", name)
	}
	return names, nil
}
