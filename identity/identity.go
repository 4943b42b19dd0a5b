// Package identity is the short-lived, signed identity assertion the edge adds to
// every tunnel it admits, and that sidecars verify: nothing else tells a sidecar
// who is calling. HMAC-SHA256 over user, tenant, roles and expiry, with key ids so
// that keys can rotate (sign with the active key, verify with any listed key).
//
// Wire form: v1.<kid>.<base64url(JSON claims)>.<base64url(HMAC)>
package identity

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	secretfile "github.com/climesh/climesh/config/secret"
)

// Claims are what the edge vouches for.
type Claims struct {
	User    string   `json:"sub"`
	Tenant  string   `json:"tenant"`
	Roles   []string `json:"roles,omitempty"`
	Expires int64    `json:"exp"` // unix seconds
}

// HasRole reports whether the claims carry role.
func (c Claims) HasRole(role string) bool { return slices.Contains(c.Roles, role) }

// Keys sign and verify. Active signs; every key verifies.
type Keys struct {
	Active string            `json:"active"`
	Keys   map[string][]byte `json:"keys"` // kid -> secret (base64 in the file)
}

// Errors Verify returns, matched with errors.Is.
var (
	ErrMissing   = errors.New("identity assertion missing")
	ErrMalformed = errors.New("identity assertion malformed")
	ErrUnknownID = errors.New("identity assertion signed with an unknown key")
	ErrSignature = errors.New("identity assertion signature invalid")
	ErrExpired   = errors.New("identity assertion expired")
)

// LoadKeys reads a keys file: {"active": "k2", "keys": {"k1": "<base64>", "k2": "<base64>"}}.
func LoadKeys(path string) (*Keys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity keys: %w", err)
	}
	return parseKeys(path, b)
}

func parseKeys(path string, b []byte) (*Keys, error) {
	var k Keys
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("identity keys %s: %w", path, err)
	}
	if err := k.Validate(); err != nil {
		return nil, fmt.Errorf("identity keys %s: %w", path, err)
	}
	return &k, nil
}

// Validate checks the key set.
func (k *Keys) Validate() error {
	if len(k.Keys) == 0 {
		return errors.New("keys: none listed")
	}
	if _, ok := k.Keys[k.Active]; !ok {
		return fmt.Errorf("active: %q is not one of the keys", k.Active)
	}
	for kid, secret := range k.Keys {
		if len(secret) < 32 {
			return fmt.Errorf("keys.%s: %d bytes, want at least 32", kid, len(secret))
		}
		if secretfile.IsPlaceholder(secret) {
			return fmt.Errorf("keys.%s: a placeholder (it decodes to text containing %q): use 32 random bytes, base64", kid, secretfile.Marker)
		}
		if strings.ContainsAny(kid, ".") || kid == "" {
			return fmt.Errorf("keys: id %q must be non-empty and contain no '.'", kid)
		}
	}
	return nil
}

// Sign makes an assertion with the active key.
func (k *Keys) Sign(c Claims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	body := "v1." + k.Active + "." + base64.RawURLEncoding.EncodeToString(payload)
	return body + "." + base64.RawURLEncoding.EncodeToString(mac(k.Keys[k.Active], body)), nil
}

// Verify checks the signature and expiry at now.
func (k *Keys) Verify(token string, now time.Time) (Claims, error) {
	if token == "" {
		return Claims{}, ErrMissing
	}
	parts := strings.Split(token, ".")
	if len(parts) != 4 || parts[0] != "v1" {
		return Claims{}, ErrMalformed
	}
	secret, ok := k.Keys[parts[1]]
	if !ok {
		return Claims{}, fmt.Errorf("%w: %q", ErrUnknownID, parts[1])
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[3])
	if err != nil {
		return Claims{}, ErrMalformed
	}
	if !hmac.Equal(sig, mac(secret, strings.Join(parts[:3], "."))) {
		return Claims{}, ErrSignature
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return Claims{}, ErrMalformed
	}
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil || c.User == "" {
		return Claims{}, ErrMalformed
	}
	if now.Unix() >= c.Expires {
		return Claims{}, fmt.Errorf("%w at %s", ErrExpired, time.Unix(c.Expires, 0).UTC().Format(time.RFC3339))
	}
	return c, nil
}

func mac(secret []byte, body string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(body))
	return h.Sum(nil)
}
