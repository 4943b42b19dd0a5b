package sidecar

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestAdminOnly(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	cases := map[string]struct {
		cred, auth string
		want       int
	}{
		"no credential configured": {"", "", http.StatusNoContent},
		"right bearer":             {"s3cret-s3cret-s3cret", "Bearer s3cret-s3cret-s3cret", http.StatusNoContent},
		"missing":                  {"s3cret-s3cret-s3cret", "", http.StatusUnauthorized},
		"wrong":                    {"s3cret-s3cret-s3cret", "Bearer s3cret-s3cret-s3creX", http.StatusUnauthorized},
		"not a bearer":             {"s3cret-s3cret-s3cret", "s3cret-s3cret-s3cret", http.StatusUnauthorized},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, "/drain", nil)
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			AdminOnly(c.cred, ok).ServeHTTP(rec, req)
			if rec.Code != c.want {
				t.Fatalf("%d, want %d", rec.Code, c.want)
			}
		})
	}
}
