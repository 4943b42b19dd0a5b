package policy

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// signer makes bundles signed (or not) with a fresh RSA key.
type signer struct {
	privPEM, pubPEM string
}

func newSigner(t *testing.T) signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	return signer{
		privPEM: string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})),
		pubPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})),
	}
}

// bundleOf is a bundle of one module allowing user, at revision rev; signed
// when s is given; tamper rewrites its module after signing.
func bundleOf(t *testing.T, s *signer, rev, user string, tamper bool) []byte {
	t.Helper()
	src := "package climesh.edge\n\nallow if input.user == \"" + user + "\"\n"
	b := bundle.Bundle{
		Manifest: bundle.Manifest{Revision: rev, Roots: &[]string{""}},
		Data:     map[string]any{},
		Modules:  []bundle.ModuleFile{{URL: "/edge.rego", Path: "/edge.rego", Raw: []byte(src), Parsed: ast.MustParseModule(src)}},
	}
	if s != nil {
		if err := b.GenerateSignature(bundle.NewSigningConfig(s.privPEM, "RS256", ""), "any-key-id", false); err != nil {
			t.Fatal(err)
		}
	}
	if tamper {
		evil := "package climesh.edge\n\nallow := true\n"
		b.Modules[0].Raw, b.Modules[0].Parsed = []byte(evil), ast.MustParseModule(evil)
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bundleServer serves the bundle set last, with an ETag, answering 304 to a
// request that names it.
type bundleServer struct {
	mu          sync.Mutex
	body        []byte
	etag        string
	gets, noMod atomic.Int64
}

func (s *bundleServer) set(b []byte) {
	sum := sha256.Sum256(b)
	s.mu.Lock()
	s.body, s.etag = b, `"`+hex.EncodeToString(sum[:8])+`"`
	s.mu.Unlock()
}

func (s *bundleServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	body, etag := s.body, s.etag
	s.mu.Unlock()
	s.gets.Add(1)
	if r.Header.Get("If-None-Match") == etag {
		s.noMod.Add(1)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/gzip")
	w.Write(body)
}

func allows(t *testing.T, e *Engine, user string) bool {
	t.Helper()
	v, err := e.Eval(t.Context(), "data.climesh.edge.allow", map[string]any{"user": user})
	return err == nil && v == true
}

// A bundle service's signed bundles serve in turn; an unchanged bundle costs a
// 304; a tampered or unsigned bundle is refused and the last good one keeps
// deciding.
func TestBundleServiceRevisionsAndRefusals(t *testing.T) {
	s := newSigner(t)
	srv := &bundleServer{}
	srv.set(bundleOf(t, &s, "A", "alice", false))
	ts := httptest.NewServer(srv)
	defer ts.Close()
	url := ts.URL + "/bundles/climesh.tar.gz"
	reg := prometheus.NewRegistry()
	e, err := NewEngine(t.Context(), url, []string{"data.climesh.edge.allow"}, zap.NewNop(), reg, WithBundleSigning(BundleSigning{PublicKeyPEM: []byte(s.pubPEM)}))
	if err != nil {
		t.Fatal(err)
	}
	if !allows(t, e, "alice") || allows(t, e, "bob") {
		t.Fatal("revision A does not decide")
	}
	if testutil.ToFloat64(e.metrics.revision.WithLabelValues("A")) != 1 {
		t.Fatal("revision A not reported")
	}
	go e.Watch(t.Context(), 50*time.Millisecond)
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s", what)
			}
		}
	}
	waitUntil("a poll answered 304", func() bool { return srv.noMod.Load() > 0 })
	gen := e.Generation()

	srv.set(bundleOf(t, &s, "B", "bob", false))
	waitUntil("revision B decides", func() bool { return allows(t, e, "bob") && !allows(t, e, "alice") })
	if testutil.ToFloat64(e.metrics.revision.WithLabelValues("B")) != 1 || e.Generation() != gen+1 {
		t.Fatalf("revision B: reported %v, generation %d (was %d)", testutil.ToFloat64(e.metrics.revision.WithLabelValues("B")), e.Generation(), gen)
	}
	atB := e.Status()
	if b := atB.Bundles["climesh"]; b.ActiveRevision != "B" || b.Code != "" || b.LastSuccessfulActivation.IsZero() ||
		b.LastSuccessfulActivation.Before(b.LastSuccessfulDownload) || atB.Source != url || len(atB.Fingerprint) != 64 {
		t.Fatalf("status at revision B: %+v", atB)
	}

	for name, body := range map[string][]byte{
		"tampered": bundleOf(t, &s, "C", "carol", true),
		"unsigned": bundleOf(t, nil, "D", "dave", false),
	} {
		errs := testutil.ToFloat64(e.metrics.reloads.WithLabelValues("error"))
		srv.set(body)
		waitUntil(name+" bundle refused", func() bool { return testutil.ToFloat64(e.metrics.reloads.WithLabelValues("error")) > errs })
		if !allows(t, e, "bob") || allows(t, e, "carol") || allows(t, e, "dave") || allows(t, e, "mallory") {
			t.Fatalf("after a %s bundle, B does not decide alone", name)
		}
		// The status says B still decides, and why the new one was refused.
		st := e.Status()
		if b := st.Bundles["climesh"]; b.ActiveRevision != "B" || b.Code != "bundle_error" || b.Message == "" ||
			!b.LastSuccessfulActivation.Equal(atB.Bundles["climesh"].LastSuccessfulActivation) || st.Fingerprint != atB.Fingerprint {
			t.Fatalf("status after a %s bundle: %+v", name, st)
		}
	}
}

func TestBundleServiceRefusesWhatItCannotTrust(t *testing.T) {
	s := newSigner(t)
	for name, tc := range map[string]struct {
		url  string
		sign *BundleSigning
		want string
	}{
		"no key":             {"http://127.0.0.1:1/b.tar.gz", nil, "no public key"},
		"plain http outside": {"http://bundles.example.com/b.tar.gz", &BundleSigning{PublicKeyPEM: []byte(s.pubPEM)}, "loopback only"},
		"not a bundle":       {"https://bundles.example.com/b", &BundleSigning{PublicKeyPEM: []byte(s.pubPEM)}, ".tar.gz"},
	} {
		var opts []Option
		if tc.sign != nil {
			opts = append(opts, WithBundleSigning(*tc.sign))
		}
		_, err := NewEngine(t.Context(), tc.url, []string{"data.climesh.edge.allow"}, zap.NewNop(), prometheus.NewRegistry(), opts...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
	// The first bundle must verify: an engine is not made on an unsigned one.
	srv := &bundleServer{}
	srv.set(bundleOf(t, nil, "A", "alice", false))
	ts := httptest.NewServer(srv)
	defer ts.Close()
	_, err := NewEngine(t.Context(), ts.URL+"/b.tar.gz", []string{"data.climesh.edge.allow"}, zap.NewNop(), prometheus.NewRegistry(),
		WithBundleSigning(BundleSigning{PublicKeyPEM: []byte(s.pubPEM)}))
	if err == nil {
		t.Fatal("an engine was made on an unsigned first bundle")
	}
}
