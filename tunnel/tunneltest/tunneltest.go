// Package tunneltest serves tunnel handlers — an edge, a relay — on loopback for
// the tests of the packages that dial them.
package tunneltest

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Serve serves h on 127.0.0.1 until the test ends and returns the ws:// URL
// that reaches it.
func Serve(t testing.TB, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}
