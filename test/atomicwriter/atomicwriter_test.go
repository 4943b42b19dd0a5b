package atomicwriter

import (
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var tsName = regexp.MustCompile(`^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$`)

// entries lists dir's top level: name -> symlink target ("" for a directory).
func entries(t *testing.T, dir string) map[string]string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, de := range des {
		target, err := os.Readlink(filepath.Join(dir, de.Name()))
		if err != nil && de.Type()&os.ModeSymlink != 0 {
			t.Fatal(err)
		}
		out[de.Name()] = target
	}
	return out
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFirstWriteLaysOutTheKubeletShape(t *testing.T) {
	dir := t.TempDir()
	ts, err := Write(dir, Files(map[string]string{"edge.rego": "package e", "data.json": "{}"}))
	if err != nil {
		t.Fatal(err)
	}
	if !tsName.MatchString(ts) {
		t.Errorf("timestamped directory %q does not look like ..YYYY_MM_DD_HH_MM_SS.N", ts)
	}
	want := map[string]string{ts: "", "..data": ts, "edge.rego": "..data/edge.rego", "data.json": "..data/data.json"}
	if got := entries(t, dir); !maps.Equal(got, want) {
		t.Errorf("layout %v, want %v", got, want)
	}
	if got := read(t, filepath.Join(dir, "edge.rego")); got != "package e" {
		t.Errorf("edge.rego through its link: %q", got)
	}
	info, err := os.Stat(filepath.Join(dir, ts, "data.json"))
	if err != nil || info.Mode().Perm() != 0o644 {
		t.Errorf("data.json mode %v (%v), want 0644", info.Mode(), err)
	}
}

func TestUpdateSwapsDataAndRemovesTheOldVersion(t *testing.T) {
	dir := t.TempDir()
	first, err := Write(dir, Files(map[string]string{"a": "1", "b": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	// Keep a reader's view of the first version open across the swap: the
	// kubelet's readers see the old file until they reopen.
	f, err := os.Open(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	second, err := Write(dir, Files(map[string]string{"a": "2", "c": "2"}))
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatalf("an update reused the timestamped directory %s", first)
	}
	want := map[string]string{second: "", "..data": second, "a": "..data/a", "c": "..data/c"}
	if got := entries(t, dir); !maps.Equal(got, want) {
		t.Errorf("after the update %v, want %v (b's link and the first version gone)", got, want)
	}
	if got := read(t, filepath.Join(dir, "a")); got != "2" {
		t.Errorf("a after the swap: %q, want 2", got)
	}
	old := make([]byte, 1)
	if _, err := f.Read(old); err != nil || string(old) != "1" {
		t.Errorf("an open reader of the first version read %q (%v), want 1", old, err)
	}

	// The same payload again changes nothing.
	again, err := Write(dir, Files(map[string]string{"a": "2", "c": "2"}))
	if err != nil || again != second {
		t.Errorf("rewriting the same payload: %s (%v), want %s kept", again, err, second)
	}
}

func TestNestedPathsLinkTheirTopDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := Write(dir, Files(map[string]string{"acme/bob.env": "K=1", "acme/amy.env": "K=2"})); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, dir)["acme"]; got != "..data/acme" {
		t.Errorf("acme -> %q, want ..data/acme", got)
	}
	if _, err := Write(dir, Files(map[string]string{"acme/bob.env": "K=1"})); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "acme", "amy.env")); !os.IsNotExist(err) {
		t.Errorf("acme/amy.env after it left the payload: %v", err)
	}
	if got := read(t, filepath.Join(dir, "acme", "bob.env")); got != "K=1" {
		t.Errorf("acme/bob.env: %q", got)
	}
}

func TestReservedAndEscapingPathsAreRefused(t *testing.T) {
	for _, p := range []string{"..data", "..x/y", "a/../b", "/etc/passwd", ""} {
		_, err := Write(t.TempDir(), Files(map[string]string{p: "x"}))
		if err == nil || !strings.Contains(err.Error(), "atomicwriter: path") {
			t.Errorf("path %q: %v, want a refusal naming the path", p, err)
		}
	}
}
