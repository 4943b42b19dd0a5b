package identity

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func keys(active string) *Keys {
	return &Keys{Active: active, Keys: map[string][]byte{"k1": bytes.Repeat([]byte{1}, 32), "k2": bytes.Repeat([]byte{2}, 32)}}
}

func TestSignVerifyRotate(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	old := keys("k1")
	tok, err := old.Sign(Claims{User: "alice", Tenant: "acme", Roles: []string{"admin"}, Expires: now.Add(time.Minute).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	// After rotation the new active key signs, and the old key still verifies.
	c, err := keys("k2").Verify(tok, now)
	if err != nil || c.User != "alice" || c.Tenant != "acme" || !c.HasRole("admin") {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	k := keys("k1")
	good, _ := k.Sign(Claims{User: "alice", Expires: now.Add(time.Minute).Unix()})
	expired, _ := k.Sign(Claims{User: "alice", Expires: now.Add(-time.Second).Unix()})
	parts := strings.Split(good, ".")
	forgedPayload := parts[0] + "." + parts[1] + ".eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo5OTk5OTk5OTk5fQ." + parts[3]
	unknown := "v1.k9." + parts[2] + "." + parts[3]
	cases := map[string]struct {
		tok  string
		want error
	}{
		"empty":          {"", ErrMissing},
		"garbage":        {"hello", ErrMalformed},
		"expired":        {expired, ErrExpired},
		"forged payload": {forgedPayload, ErrSignature},
		"unknown key":    {unknown, ErrUnknownID},
		"bad base64":     {parts[0] + "." + parts[1] + "." + parts[2] + ".!!!", ErrMalformed},
	}
	for name, tc := range cases {
		if _, err := k.Verify(tc.tok, now); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	other := &Keys{Active: "k1", Keys: map[string][]byte{"k1": bytes.Repeat([]byte{9}, 32)}}
	if _, err := other.Verify(good, now); !errors.Is(err, ErrSignature) {
		t.Errorf("another key's assertion: %v", err)
	}
}

func TestValidateKeys(t *testing.T) {
	for name, k := range map[string]*Keys{
		"none":           {Active: "a"},
		"active missing": {Active: "x", Keys: map[string][]byte{"a": bytes.Repeat([]byte{1}, 32)}},
		"short":          {Active: "a", Keys: map[string][]byte{"a": []byte("short")}},
		"dot in id":      {Active: "a.b", Keys: map[string][]byte{"a.b": bytes.Repeat([]byte{1}, 32)}},
		// deploy/kubernetes/base/secrets.yaml's key, decoded.
		"shipped placeholder": {Active: "k1", Keys: map[string][]byte{"k1": []byte("REPLACE-with-32-random-bytes-!!!")}},
	} {
		if err := k.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestLoadKeysRefusesPlaceholder: the shipped key file is refused, naming the
// file and the key.
func TestLoadKeysRefusesPlaceholder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity-keys.json")
	shipped := `{"active": "k1", "keys": {"k1": "UkVQTEFDRS13aXRoLTMyLXJhbmRvbS1ieXRlcy0hISE="}}`
	if err := os.WriteFile(path, []byte(shipped), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadKeys(path)
	if err == nil || !strings.Contains(err.Error(), path+": keys.k1: a placeholder") {
		t.Fatalf("LoadKeys = %v; want the placeholder refused naming %s and keys.k1", err, path)
	}
}
