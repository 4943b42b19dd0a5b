// Package secret reads the secrets climesh's binaries are given as files, and
// refuses the ones that protect nothing: an empty file, a value too short to
// resist guessing, or a placeholder left from the shipped manifests.
//
// A placeholder is any value containing Marker: every value in
// deploy/kubernetes/base/secrets.yaml does (the identity key once decoded from
// base64), so that a deployment that forgot to replace one fails at start
// instead of running with a secret everyone can read in the repository.
package secret

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Marker marks a placeholder value.
const Marker = "REPLACE-"

// MinLength is the shortest secret accepted where a caller asks for no other.
const MinLength = 16

// Why a value is refused, matched with errors.Is.
var (
	ErrEmpty       = errors.New("empty")
	ErrShort       = errors.New("too short")
	ErrPlaceholder = errors.New("a placeholder")
)

// IsPlaceholder reports whether b holds the placeholder marker.
func IsPlaceholder(b []byte) bool { return bytes.Contains(b, []byte(Marker)) }

// Check refuses an empty value, one shorter than least bytes, and a placeholder.
// Its errors read after "<where> is ".
func Check(value []byte, least int) error {
	switch {
	case len(bytes.TrimSpace(value)) == 0:
		return ErrEmpty
	case IsPlaceholder(value):
		return fmt.Errorf("%w (it contains %q): put a real secret in it", ErrPlaceholder, Marker)
	case len(value) < least:
		return fmt.Errorf("%w: %d characters, want at least %d", ErrShort, len(value), least)
	}
	return nil
}

// ReadFile reads a secret file, trims surrounding white space and Checks it. Its
// errors name the file; the caller names the field or flag.
func ReadFile(path string, least int) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if err := Check([]byte(v), least); err != nil {
		return "", fmt.Errorf("%s is %w", path, err)
	}
	return v, nil
}

// CheckLines reads content as one or more secrets, one per non-empty line,
// trimmed — the current credential and, while one rotates, the other — and
// Checks each. Its errors read after the file's name: "is empty", "is too
// short: …", "line 2 is a placeholder …".
func CheckLines(content []byte, least int) ([]string, error) {
	var lines []string
	for _, line := range strings.Split(string(content), "\n") {
		if v := strings.TrimSpace(line); v != "" {
			lines = append(lines, v)
		}
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("is %w", ErrEmpty)
	}
	for i, v := range lines {
		if err := Check([]byte(v), least); err != nil {
			if len(lines) > 1 {
				return nil, fmt.Errorf("line %d is %w", i+1, err)
			}
			return nil, fmt.Errorf("is %w", err)
		}
	}
	return lines, nil
}

// LinesOf is CheckLines of the content of the file at path, its errors naming
// the file; the caller names the field or flag.
func LinesOf(path string, content []byte, least int) ([]string, error) {
	lines, err := CheckLines(content, least)
	if err != nil {
		return nil, fmt.Errorf("%s %w", path, err)
	}
	return lines, nil
}
