package main

import (
	"crypto/sha256"
	"os"
	"slices"
	"sync"
)

// fileWatch says when the content of any of a set of files changed since it
// last looked (a file that cannot be read counts as unchanged: a rotation in
// progress is read when it is complete).
type fileWatch struct {
	mu   sync.Mutex
	sums map[string][32]byte
}

func newFileWatch(paths []string) *fileWatch {
	w := &fileWatch{}
	w.set(paths)
	return w
}

// set watches paths from now on, as they are now.
func (w *fileWatch) set(paths []string) {
	sums := map[string][32]byte{}
	for _, p := range slices.Compact(slices.Sorted(slices.Values(paths))) {
		if b, err := os.ReadFile(p); err == nil {
			sums[p] = sha256.Sum256(b)
		}
	}
	w.mu.Lock()
	w.sums = sums
	w.mu.Unlock()
}

// changed reports whether a watched file's content differs from what set or
// the last call saw, and remembers the new content.
func (w *fileWatch) changed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	changed := false
	for p, old := range w.sums {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if sum := sha256.Sum256(b); sum != old {
			w.sums[p], changed = sum, true
		}
	}
	return changed
}
