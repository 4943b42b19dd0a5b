package harness

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Issuer is a test JWT issuer: an RSA key, its JWKS file, and RS256 tokens.
type Issuer struct {
	Key      *rsa.PrivateKey
	Kid      string
	Issuer   string
	Audience string
	JWKSPath string
}

// NewIssuer makes a key and writes dir/jwks.json, for the test issuer
// https://issuer.climesh.test and audience climesh.
func NewIssuer(dir string) (*Issuer, error) {
	return NewIssuerAt(filepath.Join(dir, "jwks.json"), "https://issuer.climesh.test", "climesh")
}

// NewIssuerAt makes a key and writes its JWKS to jwksPath; tokens name issuer and
// audience.
func NewIssuerAt(jwksPath, issuer, audience string) (*Issuer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	i := &Issuer{Key: key, Kid: "test-1", Issuer: issuer, Audience: audience, JWKSPath: jwksPath}
	jwks := map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": i.Kid, "use": "sig", "alg": "RS256",
		"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes()),
	}}}
	b, _ := json.Marshal(jwks)
	return i, os.WriteFile(i.JWKSPath, b, 0o644)
}

// Token is a valid token for user in tenant, with roles, for ttl.
func (i *Issuer) Token(user, tenant string, roles []string, ttl time.Duration) string {
	claims := map[string]any{"iss": i.Issuer, "aud": i.Audience, "sub": user, "tenant": tenant,
		"iat": time.Now().Unix(), "exp": time.Now().Add(ttl).Unix()}
	if len(roles) > 0 {
		claims["roles"] = roles
	}
	return i.Sign(claims)
}

// Sign makes an RS256 token of any claims (for expired or wrong-issuer tokens).
func (i *Issuer) Sign(claims map[string]any) string {
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": i.Kid})
	payload, _ := json.Marshal(claims)
	input := b64(header) + "." + b64(payload)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, i.Key, crypto.SHA256, sum[:])
	if err != nil {
		panic(err) // a fresh 2048-bit key always signs
	}
	return input + "." + b64(sig)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
