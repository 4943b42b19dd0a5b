package identity

import (
	"time"

	"github.com/climesh/climesh/filewatch"
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
// changes (filewatch), so that keys rotate without a restart: add the new key to
// every copy, then make it active where assertions are signed, then drop the old
// key. A read that fails (a missing or half-written file, an invalid set) keeps
// the last good set.
type File struct {
	*filewatch.File[*Keys]
}

// OpenFile reads path; it must hold a valid key set now.
func OpenFile(path string) (*File, error) {
	f, err := filewatch.Open(path, parseKeys) // parseKeys's errors name the file
	if err != nil {
		return nil, err
	}
	return &File{f}, nil
}

// Sign signs with the current set's active key.
func (f *File) Sign(c Claims) (string, error) { return f.Current().Sign(c) }

// Verify verifies with the current set.
func (f *File) Verify(token string, now time.Time) (Claims, error) {
	return f.Current().Verify(token, now)
}
