package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFileWatchSeesContentChanges(t *testing.T) {
	dir := t.TempDir()
	jwks, cred := filepath.Join(dir, "jwks.json"), filepath.Join(dir, "credential")
	os.WriteFile(jwks, []byte(`{"keys":[]}`), 0o644)
	os.WriteFile(cred, []byte("first-credential-of-length"), 0o600)
	w := newFileWatch([]string{jwks, cred, jwks})
	if w.changed() {
		t.Fatal("changed before anything changed")
	}
	os.WriteFile(jwks, []byte(`{"keys":[{"kid":"new"}]}`), 0o644)
	if !w.changed() {
		t.Fatal("a rotated JWKS was not seen")
	}
	if w.changed() {
		t.Fatal("one change reported twice")
	}
	os.Remove(cred)
	if w.changed() {
		t.Fatal("a file removed mid-rotation counted as a change")
	}
	os.WriteFile(cred, []byte("second-credential-of-length"), 0o600)
	if !w.changed() {
		t.Fatal("the rotated credential was not seen")
	}
}
