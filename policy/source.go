package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"github.com/climesh/climesh/policies"
)

// Builtin, as a source, names the policies built into the binary: policies/rego
// as it was when the binary was built (its Rego and data.json). It is a word, not
// a path: a directory named builtin is ./builtin. Nothing falls back to it; a
// process runs it only when its config says so.
const Builtin = "builtin"

// Option changes how NewEngine loads its source.
type Option func(*Engine)

// WithData loads data files (JSON or YAML, as OPA reads them) beside the source
// and merges them into its data, as `opa run policy/ data.json` does: objects
// merge, and a value both set is an error naming the file and the path. With
// Builtin it keeps the shipped rules and adds an operator's data (pools, tenants,
// provider URLs). The files are watched like the source.
func WithData(files ...string) Option {
	return func(e *Engine) { e.data = append(e.data, files...) }
}

// loadSources loads the source (Builtin, a directory or a bundle) and the data
// files merged into it.
func (e *Engine) loadSources() (*ast.Compiler, storage.Store, error) {
	var (
		compiler *ast.Compiler
		store    storage.Store
		err      error
	)
	switch {
	case e.remote != nil:
		b, _, _ := e.remote.serving()
		if b == nil {
			return nil, nil, errNoBundle
		}
		compiler, store, err = compileBundle(b)
	case e.source == Builtin:
		compiler, store, err = loadFS(policies.Rego())
	default:
		compiler, store, err = load(e.source)
	}
	if err != nil || len(e.data) == 0 {
		return compiler, store, err
	}
	ctx := context.Background()
	root, err := storage.ReadOne(ctx, store, storage.RootPath)
	if err != nil {
		return nil, nil, err
	}
	merged, _ := root.(map[string]any)
	if merged == nil {
		merged = map[string]any{}
	}
	for _, f := range e.data {
		res, err := loader.NewFileLoader().All([]string{f})
		if err != nil {
			return nil, nil, fmt.Errorf("data file %s: %w", f, err)
		}
		if len(res.Modules) > 0 {
			return nil, nil, fmt.Errorf("data file %s: holds Rego; give policies as the source", f)
		}
		if err := mergeData(merged, res.Documents, ""); err != nil {
			return nil, nil, fmt.Errorf("data file %s: %w", f, err)
		}
	}
	return compiler, inmem.NewFromObject(merged), nil
}

// loadFS compiles the Rego of fsys (tests excluded) and reads its data files.
func loadFS(fsys fs.FS) (*ast.Compiler, storage.Store, error) {
	res, err := loader.NewFileLoader().WithFS(fsys).Filtered([]string{"."}, func(_ string, info fs.FileInfo, _ int) bool {
		return !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
	})
	if err != nil {
		return nil, nil, err
	}
	return compile(res)
}

// mergeData merges src into dst: objects merge key by key; any other value set
// in both is a conflict, reported with its dotted path.
func mergeData(dst, src map[string]any, at string) error {
	for _, k := range sortedKeys(src) {
		p := k
		if at != "" {
			p = at + "." + k
		}
		old, ok := dst[k]
		if !ok {
			dst[k] = src[k]
			continue
		}
		oldObj, ok1 := old.(map[string]any)
		newObj, ok2 := src[k].(map[string]any)
		if !ok1 || !ok2 {
			return fmt.Errorf("%s is set by the policy source too (data files add to its data, they do not replace it)", p)
		}
		if err := mergeData(oldObj, newObj, p); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// fingerprintSources is the fingerprint of what loadSources reads: the source's
// (Fingerprint, or FingerprintFS of the built-in policies) and each data file's.
func (e *Engine) fingerprintSources() (string, error) {
	var fp string
	var err error
	switch {
	case e.remote != nil:
		if _, fp, _ = e.remote.serving(); fp == "" {
			return "", errNoBundle
		}
	case e.source == Builtin:
		fp, err = FingerprintFS(policies.Rego())
	default:
		fp, err = Fingerprint(e.source)
	}
	if err != nil || len(e.data) == 0 {
		return fp, err
	}
	return hashFiles([]string{fp}, e.data)
}

// FingerprintFS hashes the names (relative to fsys) and contents of fsys's files:
// the same files give the same fingerprint in every process, wherever they run.
func FingerprintFS(fsys fs.FS) (string, error) {
	var lines []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		lines = append(lines, path.Clean(p)+" "+hex.EncodeToString(sum[:]))
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(lines)
	h := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(h[:]), nil
}

// compile compiles what a loader read and makes its data store.
func compile(res *loader.Result) (*ast.Compiler, storage.Store, error) {
	c := ast.NewCompiler()
	if c.Compile(res.ParsedModules()); c.Failed() {
		return nil, nil, c.Errors
	}
	store, err := res.Store()
	return c, store, err
}
