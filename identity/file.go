package identity

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/climesh/climesh/periodic"
)

// Signer makes assertions (the edge); Verifier checks them (the sidecars).
// *Keys and *File are both.
type (
	Signer   interface{ Sign(Claims) (string, error) }
	Verifier interface {
		Verify(token string, now time.Time) (Claims, error)
	}
)

// File is a key set read from a file and read again when the file's content
// changes — a Kubernetes Secret the kubelet updates under a running process — so
// that keys rotate without a restart: add the new key to every copy, then make
// it active where assertions are signed, then drop the old key. A read that
// fails (a missing or half-written file, an invalid set) keeps the last good set.
type File struct {
	path string
	cur  atomic.Pointer[Keys]

	mu  sync.Mutex
	raw []byte // the content cur was read from
}

// OpenFile reads path; it must hold a valid key set now.
func OpenFile(path string) (*File, error) {
	f := &File{path: path}
	if _, err := f.Refresh(); err != nil {
		return nil, err
	}
	return f, nil
}

// Current is the key set in use.
func (f *File) Current() *Keys { return f.cur.Load() }

// Sign signs with the current set's active key.
func (f *File) Sign(c Claims) (string, error) { return f.Current().Sign(c) }

// Verify verifies with the current set.
func (f *File) Verify(token string, now time.Time) (Claims, error) {
	return f.Current().Verify(token, now)
}

// Refresh reads the file again; changed says whether a new set is now in use.
func (f *File) Refresh() (changed bool, err error) {
	raw, err := os.ReadFile(f.path)
	if err != nil {
		return false, fmt.Errorf("identity keys: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.raw != nil && bytes.Equal(raw, f.raw) {
		return false, nil
	}
	k, err := parseKeys(f.path, raw)
	if err != nil {
		return false, err
	}
	f.cur.Store(k)
	f.raw = raw
	return true, nil
}

// Watch refreshes every interval until ctx ends, reporting each new set and
// each failure (a failure repeats until the file is fixed).
func (f *File) Watch(ctx context.Context, interval time.Duration, report func(changed bool, err error)) {
	periodic.Every(ctx, interval, func() bool {
		if changed, err := f.Refresh(); changed || err != nil {
			report(changed, err)
		}
		return true
	})
}
