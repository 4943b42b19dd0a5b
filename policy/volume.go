package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// A policy directory may be a Kubernetes ConfigMap or Secret volume. The kubelet
// lays those out with its atomic writer:
//
//	policy/..2026_11_29_15_00_00.123456789/edge.rego   the files of one version
//	policy/..data -> ..2026_11_29_15_00_00.123456789
//	policy/edge.rego -> ..data/edge.rego               one link per key
//
// and updates them by writing a new timestamped directory and renaming a new
// ..data link over the old one. A reader must open each key through its own
// name (which follows the swap) and ignore the names starting with "..", which
// the kubelet reserves: a key can never start with "..". A plain directory has
// no such names, so it reads as before.

// reserved reports whether a directory entry is one of the kubelet's own.
func reserved(name string) bool { return strings.HasPrefix(name, "..") }

// maxDepth bounds how deep sourceFiles follows directories (and links to them):
// a link loop is an error, not a hang.
const maxDepth = 32

// sourceFiles lists the files of a policy source, sorted: the source itself if
// it is a file (an OPA bundle, say, possibly through a link), else every file
// below it, following links, skipping reserved names.
func sourceFiles(source string) ([]string, error) {
	info, err := os.Stat(source)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{source}, nil
	}
	var out []string
	if err := walk(source, 0, &out); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return out, nil
}

func walk(dir string, depth int, out *[]string) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: directories nested deeper than %d (a link loop?)", dir, maxDepth)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if reserved(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		info, err := os.Stat(path) // through a link: a key's file or an item path's directory
		if err != nil {
			return err
		}
		if info.IsDir() {
			if err := walk(path, depth+1, out); err != nil {
				return err
			}
			continue
		}
		*out = append(*out, path)
	}
	return nil
}
