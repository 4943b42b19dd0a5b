package harness

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// BundleServer is an OPA bundle service on loopback: it serves the bundle
// published last at URL, with an ETag, and answers 304 to a request naming it.
// Bundles are built from a policy directory (its Rego, tests left out, and its
// data.json) and signed with the server's own RSA key, whose public half is
// KeyFile — or left unsigned, or tampered with after signing, for tests of
// refusals.
type BundleServer struct {
	URL     string
	KeyFile string

	priv string
	srv  *http.Server
	mu   sync.Mutex
	body []byte
	etag string
}

// How Publish signs.
type BundleSigning int

const (
	Signed   BundleSigning = iota
	Unsigned               // no .signatures.json
	Tampered               // signed, then a module rewritten to allow everything
)

// StartBundleServer starts the service, its key written under dir.
func StartBundleServer(dir string) (*BundleServer, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, err
	}
	b := &BundleServer{
		KeyFile: filepath.Join(dir, "bundle-signing.pub.pem"),
		priv:    string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})),
	}
	if err := os.WriteFile(b.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b.URL = "http://" + l.Addr().String() + "/bundles/climesh.tar.gz"
	b.srv = &http.Server{Handler: b}
	go b.srv.Serve(l)
	return b, nil
}

func (b *BundleServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	body, etag := b.body, b.etag
	b.mu.Unlock()
	if body == nil {
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/gzip")
	w.Write(body)
}

// Publish builds a bundle of policyDir at revision, its data changed by edit
// (nil: as it is), and serves it from now on.
func (b *BundleServer) Publish(policyDir, revision string, edit func(data map[string]any), how BundleSigning) error {
	bn := bundle.Bundle{Manifest: bundle.Manifest{Revision: revision, Roots: &[]string{""}}, Data: map[string]any{}}
	entries, err := os.ReadDir(policyDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		raw, err := os.ReadFile(filepath.Join(policyDir, name))
		switch {
		case err != nil:
			return err
		case name == "data.json":
			if err := json.Unmarshal(raw, &bn.Data); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case strings.HasSuffix(name, ".rego") && !strings.HasSuffix(name, "_test.rego"):
			m, err := ast.ParseModule(name, string(raw))
			if err != nil {
				return err
			}
			bn.Modules = append(bn.Modules, bundle.ModuleFile{URL: "/" + name, Path: "/" + name, Raw: raw, Parsed: m})
		}
	}
	if edit != nil {
		edit(bn.Data)
	}
	if how != Unsigned {
		if err := bn.GenerateSignature(bundle.NewSigningConfig(b.priv, "RS256", ""), "climesh-test", false); err != nil {
			return err
		}
	}
	if how == Tampered && len(bn.Modules) > 0 {
		evil := "package climesh.edge\n\nallow := true\n"
		bn.Modules[0].Raw, bn.Modules[0].Parsed = []byte(evil), ast.MustParseModule(evil)
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(bn); err != nil {
		return err
	}
	sum := sha256.Sum256(buf.Bytes())
	b.mu.Lock()
	b.body, b.etag = buf.Bytes(), `"`+hex.EncodeToString(sum[:8])+`"`
	b.mu.Unlock()
	return nil
}

// Close stops the service.
func (b *BundleServer) Close() { b.srv.Close() }
