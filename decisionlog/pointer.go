package decisionlog

import (
	"strconv"
	"strings"
)

// The mask rule names parts of the event by JSON pointer (RFC 6901), as OPA's
// does: "/input/password", "/input/headers/authorization".

// segments splits a pointer into its unescaped reference tokens; ok is false
// for a pointer that does not start with "/".
func segments(p string) ([]string, bool) {
	if !strings.HasPrefix(p, "/") {
		return nil, false
	}
	parts := strings.Split(p[1:], "/")
	for i, s := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
	}
	return parts, true
}

// remove deletes what p points to in doc, reporting whether it was there.
func remove(doc map[string]any, p string) bool {
	segs, ok := segments(p)
	if !ok || len(segs) == 0 {
		return false
	}
	parent, ok := walk(doc, segs[:len(segs)-1])
	if !ok {
		return false
	}
	last := segs[len(segs)-1]
	switch x := parent.(type) {
	case map[string]any:
		if _, ok := x[last]; !ok {
			return false
		}
		delete(x, last)
		return true
	case []any:
		i, err := strconv.Atoi(last)
		if err != nil || i < 0 || i >= len(x) {
			return false
		}
		x[i] = nil // arrays keep their length: the other pointers stay valid
		return true
	}
	return false
}

// set puts v where p points in doc, creating objects on the way as OPA's
// upsert does; it reports whether it could.
func set(doc map[string]any, p string, v any) bool {
	segs, ok := segments(p)
	if !ok || len(segs) == 0 {
		return false
	}
	cur := doc
	for _, s := range segs[:len(segs)-1] {
		next, ok := cur[s].(map[string]any)
		if !ok {
			if _, exists := cur[s]; exists {
				return false // a value that is not an object is in the way
			}
			next = map[string]any{}
			cur[s] = next
		}
		cur = next
	}
	cur[segs[len(segs)-1]] = v
	return true
}

func walk(doc any, segs []string) (any, bool) {
	cur := doc
	for _, s := range segs {
		switch x := cur.(type) {
		case map[string]any:
			next, ok := x[s]
			if !ok {
				return nil, false
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(s)
			if err != nil || i < 0 || i >= len(x) {
				return nil, false
			}
			cur = x[i]
		default:
			return nil, false
		}
	}
	return cur, true
}
