package policy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/climesh/climesh/test/atomicwriter"
)

// A policy directory that is a ConfigMap volume, as the kubelet lays it out:
// each key a link into ..data, ..data a link to a timestamped directory.

// volumePolicy's decision reason reads the data of both a top-level and a
// nested data file, so a test sees where each landed in data.
const volumePolicy = `package climesh.session

default decision := {"allow": false, "reason": "data missing"}

decision := {"allow": true, "reason": sprintf("%s/%s", [data.climesh.reason, data.extra.k])} if {
	data.climesh.reason
	data.extra.k
}
`

func volumePayload(reason, k string) map[string]atomicwriter.File {
	return atomicwriter.Files(map[string]string{
		"session.rego":      volumePolicy,
		"session_test.rego": "package climesh.session_test\n\ntest_x if true\n", // tests are skipped, as in a plain directory
		"data.json":         `{"climesh": {"reason": "` + reason + `"}}`,
		"extra/data.json":   `{"k": "` + k + `"}`, // an item with a path: a directory link
	})
}

func reason(t *testing.T, e *Engine) string {
	t.Helper()
	return e.DecideMessage(t.Context(), MessageInput{User: "u", Method: "ping"}).Reason
}

func TestConfigMapVolumeLoadsEachKeyOnce(t *testing.T) {
	dir := t.TempDir()
	if _, err := atomicwriter.Write(dir, volumePayload("v1", "a")); err != nil {
		t.Fatal(err)
	}
	// Read through ..data and the timestamped directory too, the rules would be
	// defined three times ("multiple default rules") and data.json found under
	// data["..data"].
	e, err := NewEngine(t.Context(), dir, []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("a ConfigMap volume of a valid policy: %v", err)
	}
	if got := reason(t, e); got != "v1/a" {
		t.Fatalf("decision reason %q, want v1/a (data.json at the root, extra/data.json under data.extra)", got)
	}
	// The files are found by their keys, once each.
	files, err := sourceFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range files {
		files[i] = strings.TrimPrefix(files[i], dir+string(filepath.Separator))
	}
	if got, want := strings.Join(files, " "), "data.json extra/data.json session.rego session_test.rego"; got != want {
		t.Fatalf("policy files %q, want %q", got, want)
	}
	// The fingerprint names them by key, not by timestamped directory: the same
	// content again, in a new timestamped directory, is the same policy.
	fp1, err := Fingerprint(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []map[string]atomicwriter.File{volumePayload("v2", "a"), volumePayload("v1", "a")} {
		if _, err := atomicwriter.Write(dir, p); err != nil {
			t.Fatal(err)
		}
	}
	if fp2, err := Fingerprint(dir); err != nil || fp2 != fp1 {
		t.Fatalf("fingerprint after rewriting the same content: %s (%v), want %s", fp2, err, fp1)
	}
}

func TestConfigMapVolumeSwapWhileWatching(t *testing.T) {
	dir := t.TempDir()
	if _, err := atomicwriter.Write(dir, volumePayload("v1", "a")); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	e, err := NewEngine(t.Context(), dir, []string{MessageQuery}, zap.NewNop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go e.Watch(ctx, 10*time.Millisecond)

	// The kubelet swaps ..data: the new version is picked up whole.
	if _, err := atomicwriter.Write(dir, volumePayload("v2", "b")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return reason(t, e) == "v2/b" })

	// A broken version is refused and v2 keeps deciding; the next good one is
	// picked up.
	broken := volumePayload("v3", "c")
	broken["session.rego"] = atomicwriter.File{Data: []byte("package climesh.session\n\ndecision := {\n"), Mode: 0o644}
	if _, err := atomicwriter.Write(dir, broken); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return testutil.ToFloat64(e.metrics.reloads.WithLabelValues("error")) >= 1 })
	if got := reason(t, e); got != "v2/b" {
		t.Fatalf("after a broken version: %q, want v2/b still", got)
	}
	if _, err := atomicwriter.Write(dir, volumePayload("v4", "d")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return reason(t, e) == "v4/d" })
	if n := testutil.ToFloat64(e.metrics.reloads.WithLabelValues("error")); n != 1 {
		t.Errorf("%v failed loads, want 1 (the broken version, once)", n)
	}
}

// A bundle in a ConfigMap (binaryData) is a link to ..data/<key>: it loads
// through the link.
func TestConfigMapVolumeBundle(t *testing.T) {
	bundle := filepath.Join(t.TempDir(), "policy.tar.gz")
	writeBundle(bundle)
	b, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := atomicwriter.Write(dir, map[string]atomicwriter.File{"policy.tar.gz": {Data: b, Mode: 0o644}}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewEngine(t.Context(), filepath.Join(dir, "policy.tar.gz"), []string{MessageQuery}, zap.NewNop(), prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
}
