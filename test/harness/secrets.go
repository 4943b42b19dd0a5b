package harness

import (
	"crypto/rand"
	"encoding/json"
	"os"

	"github.com/climesh/climesh/identity"
)

// WriteKeys makes an identity key set shared by the xds-server
// (policy.identity_keys_file) and the sidecars (--identity-keys), mode 0600.
func WriteKeys(path string) (*identity.Keys, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	k := &identity.Keys{Active: "k1", Keys: map[string][]byte{"k1": secret}}
	b, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	return k, os.WriteFile(path, b, 0o600)
}

// WriteCredential writes a new random edge credential (identity.edge_credential_file,
// the sidecars' --edge-credential-file), mode 0600, and returns it.
func WriteCredential(path string) (string, error) {
	cred := "edge-" + rand.Text()
	return cred, os.WriteFile(path, []byte(cred+"\n"), 0o600)
}
