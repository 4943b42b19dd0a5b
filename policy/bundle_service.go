package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/download"
	"github.com/open-policy-agent/opa/v1/logging"
	"github.com/open-policy-agent/opa/v1/plugins"
	"github.com/open-policy-agent/opa/v1/plugins/rest"
)

// A bundle service is a policy source the way OPA reads one: an HTTP(S) URL of
// a bundle (.tar.gz) fetched with OPA's downloader — If-None-Match with the
// last ETag, so an unchanged bundle costs a 304 — and activated only when its
// signature (.signatures.json, a JWT over every file's hash) verifies against
// the configured public key. A bundle that fails to download, verify or
// compile is refused and the last good one keeps serving; the first one must
// succeed, as any first load.
//
// Every process that reads the same service activates the same bytes: the
// fingerprint is the hash of the bundle as served, and its manifest's revision
// is reported beside it (climesh_policy_bundle_revision_info).

// IsBundleService reports whether source names a bundle service (an http or
// https URL) rather than a path or Builtin.
func IsBundleService(source string) bool {
	return strings.HasPrefix(source, "https://") || strings.HasPrefix(source, "http://")
}

// BundleSigning verifies a bundle service's bundles: the PEM public key that
// signed them and its algorithm (RS256 when empty, as `opa build` signs).
type BundleSigning struct {
	PublicKeyPEM []byte
	Algorithm    string
}

// WithBundleSigning sets how a bundle service's bundles are verified; a bundle
// service without it is refused (an unsigned policy could come from anyone who
// reaches the URL).
func WithBundleSigning(s BundleSigning) Option {
	return func(e *Engine) { e.signing = &s }
}

// remoteBundle is a bundle service's state: the downloader and the bundle
// that serves.
type remoteBundle struct {
	url        string
	downloader *download.Downloader

	mu       sync.Mutex
	latest   *bundle.Bundle // the bundle serving (data files merge onto it)
	sum      string         // bundleFingerprint of it
	revision string
	lastErr  string // the last refusal, logged once while it repeats
	status   BundleStatus
}

// newRemoteBundle prepares the downloader for e's source; e.activate runs for
// each new bundle.
func newRemoteBundle(e *Engine) (*remoteBundle, error) {
	if e.signing == nil || len(e.signing.PublicKeyPEM) == 0 {
		return nil, fmt.Errorf("bundle service %s: no public key to verify its bundles (refusing unsigned policy)", e.source)
	}
	u, err := url.Parse(e.source)
	if err != nil || u.Host == "" || !strings.HasSuffix(u.Path, ".tar.gz") {
		return nil, fmt.Errorf("bundle service %q: want an http(s) URL of a .tar.gz bundle", e.source)
	}
	if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
		return nil, fmt.Errorf("bundle service %s: plain http is accepted on loopback only; use https", e.source)
	}
	base := u.Scheme + "://" + u.Host
	resource := strings.TrimPrefix(u.RequestURI(), "/")
	restConfig, _ := json.Marshal(map[string]any{"url": base, "response_header_timeout_seconds": 10})
	// OPA's own logger is silenced: every outcome is logged once here (received).
	client, err := rest.New(restConfig, nil, rest.Logger(logging.NewNoOpLogger()))
	if err != nil {
		return nil, fmt.Errorf("bundle service %s: %w", e.source, err)
	}
	trigger := plugins.TriggerManual
	cfg := download.Config{Trigger: &trigger}
	if err := cfg.ValidateAndInjectDefaults(); err != nil {
		return nil, err
	}
	alg := e.signing.Algorithm
	if alg == "" {
		alg = "RS256"
	}
	// The key id of the signature is ignored: the one key configured must
	// verify it.
	verify := bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{
		"climesh": {Key: string(e.signing.PublicKeyPEM), Algorithm: alg},
	}, "climesh", "", nil)
	r := &remoteBundle{url: e.source}
	r.downloader = download.New(cfg, client, resource).
		WithBundleVerificationConfig(verify).
		WithSizeLimitBytes(64 << 20).
		WithCallback(func(ctx context.Context, u download.Update) error { return e.received(ctx, u) })
	return r, nil
}

func loopbackHost(h string) bool {
	return h == "localhost" || h == "127.0.0.1" || h == "::1" || strings.HasPrefix(h, "127.")
}

// fetch asks the service once: a new bundle is activated through the callback.
func (r *remoteBundle) fetch(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return r.downloader.Trigger(ctx)
}

// serving is the bundle that serves now, its hash and revision.
func (r *remoteBundle) serving() (*bundle.Bundle, string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.latest, r.sum, r.revision
}

// received handles one answer of the bundle service: an error (download or
// signature) is refused and counted; a 304 changes nothing; a new bundle is
// activated, or refused with the last good one kept.
func (e *Engine) received(ctx context.Context, u download.Update) error {
	r := e.remote
	now := time.Now().UTC()
	r.mu.Lock()
	r.status.LastRequest = now
	r.mu.Unlock()
	if u.Error != nil {
		err := fmt.Errorf("bundle service %s: %w", r.url, u.Error)
		r.mu.Lock()
		repeat := r.lastErr == err.Error()
		r.lastErr = err.Error()
		r.status.Code, r.status.Message = "bundle_error", err.Error()
		r.mu.Unlock()
		if repeat { // the same refusal every poll: counted, logged once
			e.metrics.reloads.WithLabelValues("error").Inc()
			return err
		}
		return e.failed(err)
	}
	r.mu.Lock()
	r.lastErr = ""
	r.status.LastSuccessfulRequest = now
	if u.Bundle == nil { // not modified: the serving bundle is still the service's
		r.status.Code, r.status.Message = "", ""
		r.mu.Unlock()
		return nil
	}
	r.status.LastSuccessfulDownload = now
	r.mu.Unlock()
	sum, err := bundleFingerprint(u.Bundle)
	if err != nil {
		return e.failed(fmt.Errorf("bundle service %s: %w", r.url, err))
	}
	r.mu.Lock()
	prev, prevSum, prevRev := r.latest, r.sum, r.revision
	r.latest, r.sum, r.revision = u.Bundle, sum, u.Bundle.Manifest.Revision
	r.mu.Unlock()
	if err := e.Reload(ctx); err != nil {
		r.mu.Lock()
		r.latest, r.sum, r.revision = prev, prevSum, prevRev
		r.status.Code, r.status.Message = "bundle_error", err.Error()
		r.mu.Unlock()
		return err
	}
	r.mu.Lock()
	r.status.Code, r.status.Message = "", ""
	r.status.LastSuccessfulActivation = time.Now().UTC()
	r.mu.Unlock()
	return nil
}

// bundleFingerprint hashes a bundle's content — each module's path and text,
// its data as canonical JSON, its revision — so that every process that
// activates the same bundle reports the same fingerprint, however it was
// compressed.
func bundleFingerprint(b *bundle.Bundle) (string, error) {
	h := sha256.New()
	mods := make([]bundle.ModuleFile, len(b.Modules))
	copy(mods, b.Modules)
	slices.SortFunc(mods, func(a, b bundle.ModuleFile) int { return strings.Compare(a.Path, b.Path) })
	for _, m := range mods {
		fmt.Fprintf(h, "%s\x00%d\x00", m.Path, len(m.Raw))
		h.Write(m.Raw)
	}
	data, err := json.Marshal(b.Data) // map keys sorted
	if err != nil {
		return "", err
	}
	h.Write(data)
	fmt.Fprintf(h, "\x00%s", b.Manifest.Revision)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// errNoBundle: nothing was activated from the bundle service yet.
var errNoBundle = errors.New("no bundle received yet")

// Revision is the manifest revision of the bundle deciding now ("" for a
// source that is not a bundle service).
func (e *Engine) Revision() string {
	if e.remote == nil {
		return ""
	}
	_, _, rev := e.remote.serving()
	return rev
}

// BundleStatus is a bundle service's state in the fields of OPA's status API
// (https://www.openpolicyagent.org/docs/management-status): the revision
// deciding, when the service last answered, sent a bundle and had one
// activated, and the last refusal (code "bundle_error") until a request
// succeeds again.
type BundleStatus struct {
	Name                     string    `json:"name"`
	ActiveRevision           string    `json:"active_revision"`
	LastRequest              time.Time `json:"last_request,omitzero"`
	LastSuccessfulRequest    time.Time `json:"last_successful_request,omitzero"`
	LastSuccessfulDownload   time.Time `json:"last_successful_download,omitzero"`
	LastSuccessfulActivation time.Time `json:"last_successful_activation,omitzero"`
	Code                     string    `json:"code,omitempty"`
	Message                  string    `json:"message,omitempty"`
}

// Status is what decides now: the source, the fingerprint of the policy
// serving and when it was loaded, and for a bundle service its bundle's
// status under the name "climesh" (the name decision logs give it).
type Status struct {
	Source      string                  `json:"source"`
	Fingerprint string                  `json:"fingerprint"`
	LoadedAt    time.Time               `json:"loaded_at"`
	Bundles     map[string]BundleStatus `json:"bundles,omitempty"`
}

// Status reports what decides now (the xds-server's and the sidecars' GET /status).
func (e *Engine) Status() Status {
	e.mu.RLock()
	st := Status{Source: e.source, Fingerprint: e.fingerprint, LoadedAt: e.loadedAt.UTC()}
	e.mu.RUnlock()
	if r := e.remote; r != nil {
		r.mu.Lock()
		b := r.status
		b.Name, b.ActiveRevision = "climesh", r.revision
		r.mu.Unlock()
		st.Bundles = map[string]BundleStatus{"climesh": b}
	}
	return st
}
