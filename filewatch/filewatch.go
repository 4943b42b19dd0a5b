// Package filewatch keeps a value parsed from a file that may change under a
// running process — a Kubernetes Secret the kubelet updates — so that what it
// holds (keys, credentials) rotates without a restart. The file is read again
// every interval; a new content is parsed and, if it parses, used from then on;
// one that does not (missing, half-written, invalid) keeps the last good value.
package filewatch

import (
	"bytes"
	"context"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/climesh/climesh/periodic"
)

// File is one watched file and the value parsed from it.
type File[T any] struct {
	path  string
	parse func(path string, content []byte) (T, error)
	cur   atomic.Pointer[T]

	mu  sync.Mutex
	raw []byte // the content cur was parsed from
}

// Open reads and parses path; it must hold a good value now.
func Open[T any](path string, parse func(path string, content []byte) (T, error)) (*File[T], error) {
	f := &File[T]{path: path, parse: parse}
	if _, err := f.Refresh(); err != nil {
		return nil, err
	}
	return f, nil
}

// Current is the value in use.
func (f *File[T]) Current() T { return *f.cur.Load() }

// Refresh reads the file again; changed says whether a new value is now in use.
func (f *File[T]) Refresh() (changed bool, err error) {
	raw, err := os.ReadFile(f.path)
	if err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.raw != nil && bytes.Equal(raw, f.raw) {
		return false, nil
	}
	v, err := f.parse(f.path, raw)
	if err != nil {
		return false, err
	}
	f.cur.Store(&v)
	f.raw = raw
	return true, nil
}

// Watch refreshes every interval until ctx ends, reporting each new value and
// each failure (a failure repeats until the file is fixed).
func (f *File[T]) Watch(ctx context.Context, interval time.Duration, report func(changed bool, err error)) {
	periodic.Every(ctx, interval, func() bool {
		if changed, err := f.Refresh(); changed || err != nil {
			report(changed, err)
		}
		return true
	})
}
