package sidecar

import (
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/climesh/climesh/protocol"
)

// AdminOnly guards an admin call (drain, sweep): with a credential, the request
// must carry it as a bearer token; without one, the listener is loopback (the
// command refuses any other) and the call is open to the host.
func AdminOnly(credential string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if credential != "" {
			got, ok := strings.CutPrefix(r.Header.Get(protocol.HeaderAuthorization), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(credential)) != 1 {
				http.Error(w, "climesh sidecar: admin credential required", http.StatusUnauthorized)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
