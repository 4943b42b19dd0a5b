package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/test/harness"
)

// demoTenant is the tenant of every demo user (the shipped policy's pool "demo"
// admits every tenant); tokenTTL how long their tokens last.
const (
	demoTenant = "demo"
	tokenTTL   = 24 * time.Hour
)

// credentials are what the embedded config names, made fresh on every run in the
// demo's directory (the xds-server's working directory), and one token per user.
type credentials struct {
	EdgeCredentialFile string
	IdentityKeysFile   string
	DataFile           string            // --policy-data: the model double's URL for pool demo
	Tokens             map[string]string // user -> JWT
	TokenFiles         map[string]string // user -> <dir>/tokens/<user>.jwt
}

// writeCredentials makes the edge credential, the identity keys and a signing key
// whose JWKS the config's JWT provider reads, mints a token per user (tenant
// demoTenant) into dir/tokens, and writes the sidecars' policy data: the pool
// "demo" may name modelURL as its model endpoint.
func writeCredentials(dir string, cfg *config.Config, users []string, modelURL string) (*credentials, error) {
	if len(cfg.JWT.Providers) != 1 || cfg.Identity.EdgeCredentialFile == "" || cfg.Policy.IdentityKeysFile == "" {
		return nil, fmt.Errorf("the embedded config is not the demo's: want one jwt provider, identity.edge_credential_file and policy.identity_keys_file")
	}
	c := &credentials{
		EdgeCredentialFile: inDir(dir, cfg.Identity.EdgeCredentialFile),
		IdentityKeysFile:   inDir(dir, cfg.Policy.IdentityKeysFile),
		DataFile:           filepath.Join(dir, "demo-data.json"),
		Tokens:             map[string]string{},
		TokenFiles:         map[string]string{},
	}
	if _, err := harness.WriteCredential(c.EdgeCredentialFile); err != nil {
		return nil, err
	}
	if _, err := harness.WriteKeys(c.IdentityKeysFile); err != nil {
		return nil, err
	}
	p := cfg.JWT.Providers[0]
	if p.LocalJWKSFile == "" || len(p.Audiences) == 0 {
		return nil, fmt.Errorf("jwt.providers[0] %q: the demo signs tokens for a local_jwks_file and an audience", p.Name)
	}
	issuer, err := harness.NewIssuerAt(inDir(dir, p.LocalJWKSFile), p.Issuer, p.Audiences[0])
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, err
	}
	for _, u := range users {
		c.Tokens[u] = issuer.Token(u, demoTenant, nil, tokenTTL)
		c.TokenFiles[u] = filepath.Join(tokens, u+".jwt")
		if err := os.WriteFile(c.TokenFiles[u], []byte(c.Tokens[u]+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	data := `{"climesh": {"pools": {"demo": {"provider_base_urls": [` + strconv.Quote(modelURL) + `]}}}}` + "\n"
	if err := os.WriteFile(c.DataFile, []byte(data), 0o644); err != nil {
		return nil, err
	}
	return c, nil
}

// inDir resolves a path of the config as the xds-server does when it runs in dir.
func inDir(dir, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}
