// Package policies holds climesh's shipped Rego policies and their default data
// (policies/rego), built into the binaries so that a process can run them without
// a copy on disk: the xds-server's `policy.source: builtin` and the sidecar's
// `--policy builtin` (see package policy). An operator who changes the policy
// points those settings at a directory or bundle of their own instead.
package policies

import (
	"embed"
	"io/fs"
)

// The _test.rego files come along (they are small); the policy loader skips them.
//
//go:embed rego
var files embed.FS

// Rego is policies/rego as this binary was built with it: *.rego and data.json at
// its root.
func Rego() fs.FS {
	sub, err := fs.Sub(files, "rego")
	if err != nil {
		panic(err) // "rego" is embedded above; fs.Sub fails only on a bad name
	}
	return sub
}
