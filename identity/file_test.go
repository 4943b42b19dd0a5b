package identity

import (
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/test/atomicwriter"
)

// keySet is a keys file's content: active, and each listed kid with a 32-byte secret.
func keySet(active string, kids ...string) string {
	var parts []string
	for _, kid := range kids {
		parts = append(parts, fmt.Sprintf("%q: %q", kid, base64.StdEncoding.EncodeToString([]byte(strings.Repeat(kid, 32)[:32]))))
	}
	return fmt.Sprintf(`{"active": %q, "keys": {%s}}`, active, strings.Join(parts, ", "))
}

// A key set mounted from a Secret rotates in place, as the kubelet updates it:
// the sidecar's copy learns the new key before the edge signs with it, the
// edge's copy switches, the old key is dropped; a broken update keeps the last
// good set.
func TestFileRotatesAsTheKubeletUpdatesIt(t *testing.T) {
	dir := t.TempDir()
	if _, err := atomicwriter.Write(dir, atomicwriter.Files(map[string]string{"keys.json": keySet("k1", "k1")})); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keys.json")
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	claims := Claims{User: "alice", Tenant: "acme", Expires: time.Now().Add(time.Minute).Unix()}
	old, _ := f.Sign(claims)
	update := func(content string) (bool, error) {
		t.Helper()
		if _, err := atomicwriter.Write(dir, atomicwriter.Files(map[string]string{"keys.json": content})); err != nil {
			t.Fatal(err)
		}
		return f.Refresh()
	}
	if changed, err := f.Refresh(); changed || err != nil {
		t.Fatalf("refresh without a change: %v %v", changed, err)
	}
	// 1. k2 added: both verify, k1 still signs.
	if changed, err := update(keySet("k1", "k1", "k2")); !changed || err != nil {
		t.Fatalf("k2 added: %v %v", changed, err)
	}
	if _, err := f.Verify(old, time.Now()); err != nil {
		t.Fatalf("an assertion of k1 after k2 was added: %v", err)
	}
	// 2. k2 active: new assertions carry k2.
	if changed, err := update(keySet("k2", "k1", "k2")); !changed || err != nil {
		t.Fatalf("k2 active: %v %v", changed, err)
	}
	if tok, _ := f.Sign(claims); !strings.HasPrefix(tok, "v1.k2.") {
		t.Fatalf("signed %q after k2 became active", tok)
	}
	// 3. A broken update is refused; the last good set keeps working.
	if changed, err := update(`{"active": "k3", "keys": {}}`); changed || err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("a broken set: %v %v (want an error naming %s)", changed, err, path)
	}
	if _, err := f.Verify(old, time.Now()); err != nil {
		t.Fatalf("the last good set is gone after a broken update: %v", err)
	}
	// 4. k1 dropped: its assertions no longer verify.
	if changed, err := update(keySet("k2", "k2")); !changed || err != nil {
		t.Fatalf("k1 dropped: %v %v", changed, err)
	}
	if _, err := f.Verify(old, time.Now()); !errors.Is(err, ErrUnknownID) {
		t.Fatalf("an assertion of a dropped key: %v", err)
	}
}
