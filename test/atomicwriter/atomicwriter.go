// Package atomicwriter lays out a directory the way the kubelet lays out a
// ConfigMap, Secret or downward-API volume (its AtomicWriter,
// pkg/volume/util/atomic_writer.go), so that tests see what a pod sees:
//
//	<dir>/..2026_11_29_15_00_00.123456789/   the files of one version
//	<dir>/..data -> ..2026_11_29_15_00_00.123456789
//	<dir>/<key>  -> ..data/<key>             one per top-level name
//
// An update writes a new timestamped directory, points a temporary symlink
// (..data_tmp) at it, renames that over ..data (the one atomic step), adds the
// per-key links of new keys, removes those of keys that went away, and removes
// the old timestamped directory. A reader that opens <dir>/<key> sees either
// the old version or the new one, never a mix; a reader that walks the
// directory sees the timestamped directories and ..data as well, which is what
// programs that read "every file of a directory" trip over.
package atomicwriter

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The names the kubelet reserves in a volume (every name starting with ".." is).
const (
	DataDir    = "..data"
	newDataDir = "..data_tmp"
)

// File is one key's content and mode (the volume's defaultMode, 0644 unless set).
type File struct {
	Data []byte
	Mode fs.FileMode
}

// Files makes a payload of string contents, mode 0644 (a ConfigMap's or
// Secret's data under the default defaultMode).
func Files(data map[string]string) map[string]File {
	out := make(map[string]File, len(data))
	for k, v := range data {
		out[k] = File{Data: []byte(v), Mode: 0o644}
	}
	return out
}

// Write projects payload (relative path -> file) into dir, which must exist:
// the first write lays the volume out, later ones update it as the kubelet
// does when the ConfigMap or Secret changes. A payload equal to what is there
// changes nothing (no new timestamped directory), as with the kubelet. It
// returns the name of the timestamped directory that ..data points to after.
func Write(dir string, payload map[string]File) (string, error) {
	clean := make(map[string]File, len(payload))
	for p, f := range payload {
		if err := validPath(p); err != nil {
			return "", err
		}
		clean[filepath.Clean(p)] = f
	}
	dataLink := filepath.Join(dir, DataDir)
	oldTs, err := os.Readlink(dataLink)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	var gone []string
	if oldTs != "" {
		old, err := listFiles(filepath.Join(dir, oldTs))
		if err != nil {
			return "", err
		}
		for _, p := range old {
			if _, ok := clean[p]; !ok {
				gone = append(gone, p)
			}
		}
		if len(gone) == 0 && same(filepath.Join(dir, oldTs), clean) {
			return oldTs, links(dir, clean) // up to date; make sure the per-key links exist
		}
	}
	tsDir, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return "", err
	}
	if err := os.Chmod(tsDir, 0o755); err != nil {
		return "", err
	}
	for p, f := range clean {
		full := filepath.Join(tsDir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return "", err
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := os.WriteFile(full, f.Data, mode); err != nil {
			return "", err
		}
		if err := os.Chmod(full, mode); err != nil { // whatever the umask
			return "", err
		}
	}
	ts := filepath.Base(tsDir)
	tmp := filepath.Join(dir, newDataDir)
	if err := os.Symlink(ts, tmp); err != nil {
		os.RemoveAll(tsDir)
		return "", err
	}
	if err := os.Rename(tmp, dataLink); err != nil { // the atomic swap
		os.Remove(tmp)
		os.RemoveAll(tsDir)
		return "", err
	}
	if err := links(dir, clean); err != nil {
		return "", err
	}
	for _, p := range gone {
		top, _, _ := strings.Cut(p, string(filepath.Separator))
		if _, still := topNames(clean)[top]; still {
			continue // a nested key went away; its top-level link stays for the others
		}
		if err := os.Remove(filepath.Join(dir, top)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	if oldTs != "" {
		if err := os.RemoveAll(filepath.Join(dir, oldTs)); err != nil {
			return "", err
		}
	}
	return ts, nil
}

// validPath refuses what the kubelet refuses: absolute paths, ".." elements,
// and a first element starting with ".." (those names are the writer's own).
func validPath(p string) error {
	if p == "" || filepath.IsAbs(p) {
		return fmt.Errorf("atomicwriter: path %q: want a non-empty relative path", p)
	}
	parts := strings.Split(p, string(filepath.Separator))
	if slices.Contains(parts, "..") {
		return fmt.Errorf("atomicwriter: path %q: must not contain '..'", p)
	}
	if strings.HasPrefix(parts[0], "..") {
		return fmt.Errorf("atomicwriter: path %q: must not start with '..' (reserved for the writer)", p)
	}
	return nil
}

// links creates <dir>/<top> -> ..data/<top> for every top-level name of the
// payload that has no link yet.
func links(dir string, payload map[string]File) error {
	for top := range topNames(payload) {
		link := filepath.Join(dir, top)
		if _, err := os.Readlink(link); err == nil {
			continue
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.Symlink(filepath.Join(DataDir, top), link); err != nil {
			return err
		}
	}
	return nil
}

func topNames(payload map[string]File) map[string]struct{} {
	out := map[string]struct{}{}
	for p := range payload {
		top, _, _ := strings.Cut(p, string(filepath.Separator))
		out[top] = struct{}{}
	}
	return out
}

// listFiles lists the regular files below root, relative to it.
func listFiles(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, path)
		out = append(out, rel)
		return err
	})
	return out, err
}

// same reports whether tsDir already holds exactly payload's contents.
func same(tsDir string, payload map[string]File) bool {
	for p, f := range payload {
		b, err := os.ReadFile(filepath.Join(tsDir, p))
		if err != nil || !bytes.Equal(b, f.Data) {
			return false
		}
	}
	return true
}
