package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"
)

// Engine holds the compiled policies and one prepared query per entry point.
type Engine struct {
	log     *zap.Logger
	source  string
	data    []string // WithData files
	queries []string
	metrics *engineMetrics
	signing *BundleSigning // WithBundleSigning
	remote  *remoteBundle  // when source is a bundle service

	reloadMu sync.Mutex // one load at a time (the watcher and the bundle service)

	mu          sync.RWMutex
	prepared    map[string]rego.PreparedEvalQuery
	fingerprint string
	loadedAt    time.Time
	generation  uint64 // bumped on every successful load
}

// Generation changes whenever a new policy starts serving; decisions cached
// under an older generation are stale.
func (e *Engine) Generation() uint64 {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.generation
}

type engineMetrics struct {
	evalErrors *prometheus.CounterVec
	reloads    *prometheus.CounterVec
	lastGood   prometheus.Gauge
	serving    *prometheus.GaugeVec
	revision   *prometheus.GaugeVec
}

// ErrUndefined is an evaluation that produced no result: a deny.
var ErrUndefined = errors.New("policy: decision undefined")

// NewEngine loads source (a directory of .rego and data .json/.yaml files, an OPA
// bundle .tar.gz, or Builtin) and prepares queries (e.g. "data.climesh.edge.allow").
// The first load must succeed; later ones (Reload, Watch) keep the last good policy
// on error.
func NewEngine(ctx context.Context, source string, queries []string, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Engine, error) {
	f := promauto.With(reg)
	e := &Engine{
		log: log, source: source, queries: queries,
		metrics: &engineMetrics{
			evalErrors: f.NewCounterVec(prometheus.CounterOpts{
				Name: "climesh_policy_eval_errors_total", Help: "Evaluations that failed or were undefined (each denied), by query.",
			}, []string{"query"}),
			reloads: f.NewCounterVec(prometheus.CounterOpts{
				Name: "climesh_policy_reloads_total", Help: "Policy loads, by result (ok, error).",
			}, []string{"result"}),
			lastGood: f.NewGauge(prometheus.GaugeOpts{
				Name: "climesh_policy_last_load_success_timestamp_seconds", Help: "When the serving policy was loaded.",
			}),
			serving: f.NewGaugeVec(prometheus.GaugeOpts{
				Name: "climesh_policy_serving_info", Help: "1 for the fingerprint (first 12 hex digits of Fingerprint) of the policy that decides now.",
			}, []string{"fingerprint"}),
			revision: f.NewGaugeVec(prometheus.GaugeOpts{
				Name: "climesh_policy_bundle_revision_info", Help: "1 for the manifest revision of the bundle that decides now (a bundle service source).",
			}, []string{"revision"}),
		},
	}
	for _, o := range opts {
		o(e)
	}
	if IsBundleService(source) {
		r, err := newRemoteBundle(e)
		if err != nil {
			return nil, err
		}
		e.remote = r
		// The first bundle must arrive, verify and compile, as any first load.
		if err := r.fetch(ctx, 30*time.Second); err != nil {
			return nil, err
		}
		if e.Generation() == 0 {
			return nil, fmt.Errorf("policy %s: %w", source, errNoBundle)
		}
		return e, nil
	}
	if err := e.Reload(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// Reload loads and compiles the source again. On error the serving policy stays,
// the error (with file:line for compile errors) is logged and counted.
func (e *Engine) Reload(ctx context.Context) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	fp, err := e.fingerprintSources()
	if err != nil {
		return e.failed(err)
	}
	compiler, store, err := e.loadSources()
	if err != nil {
		return e.failed(err)
	}
	prepared := make(map[string]rego.PreparedEvalQuery, len(e.queries)+1)
	for _, q := range append(slices.Clone(e.queries), MaskQuery) {
		pq, err := rego.New(rego.Query(q), rego.Compiler(compiler), rego.Store(store)).PrepareForEval(ctx)
		if err != nil {
			return e.failed(fmt.Errorf("prepare %s: %w", q, err))
		}
		prepared[q] = pq
	}
	e.mu.Lock()
	e.prepared, e.fingerprint, e.loadedAt = prepared, fp, time.Now()
	e.generation++
	e.mu.Unlock()
	e.metrics.reloads.WithLabelValues("ok").Inc()
	e.metrics.lastGood.SetToCurrentTime()
	e.metrics.serving.Reset()
	e.metrics.serving.WithLabelValues(fp[:12]).Set(1)
	fields := []zap.Field{zap.String("source", e.source), zap.Strings("data", e.data), zap.String("fingerprint", fp[:12])}
	if e.remote != nil {
		_, _, rev := e.remote.serving()
		e.metrics.revision.Reset()
		e.metrics.revision.WithLabelValues(rev).Set(1)
		fields = append(fields, zap.String("revision", rev))
	}
	e.log.Info("policy loaded", fields...)
	return nil
}

func (e *Engine) failed(err error) error {
	e.metrics.reloads.WithLabelValues("error").Inc()
	var astErrs ast.Errors
	if errors.As(err, &astErrs) {
		for _, ae := range astErrs {
			loc := "?"
			if ae.Location != nil {
				loc = fmt.Sprintf("%s:%d", ae.Location.File, ae.Location.Row)
			}
			e.log.Error("policy refused; the previous one keeps serving", zap.String("at", loc), zap.String("error", ae.Message))
		}
	} else {
		e.log.Error("policy refused; the previous one keeps serving", zap.Error(err))
	}
	return fmt.Errorf("policy %s: %w", e.source, err)
}

// Watch reloads whenever the source's files change, polling every interval; a
// bundle service is asked every interval (a 304 when nothing changed).
func (e *Engine) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failedAt := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if e.remote != nil {
			e.remote.fetch(ctx, max(interval, 10*time.Second)) // errors are logged and counted by received
		}
		fp, err := e.fingerprintSources()
		e.mu.RLock()
		same := fp == e.fingerprint
		e.mu.RUnlock()
		if err != nil || same || fp == failedAt {
			continue
		}
		if e.Reload(ctx) != nil {
			failedAt = fp // report a broken version once, not every tick
		}
	}
}

// EvalValue is Eval with an input already in OPA's AST form (no reflection).
func (e *Engine) EvalValue(ctx context.Context, query string, input ast.Value) (any, error) {
	return e.eval(ctx, query, rego.EvalParsedInput(input))
}

// Eval evaluates a prepared query. Any error, or an undefined result, is returned
// as an error and counted: callers deny on error.
func (e *Engine) Eval(ctx context.Context, query string, input any) (any, error) {
	return e.eval(ctx, query, rego.EvalInput(input))
}

func (e *Engine) eval(ctx context.Context, query string, input rego.EvalOption) (any, error) {
	e.mu.RLock()
	pq, ok := e.prepared[query]
	e.mu.RUnlock()
	if !ok {
		e.metrics.evalErrors.WithLabelValues(query).Inc()
		return nil, fmt.Errorf("policy: query %s was not prepared", query)
	}
	rs, err := pq.Eval(ctx, input)
	if err != nil {
		e.metrics.evalErrors.WithLabelValues(query).Inc()
		return nil, fmt.Errorf("policy: %s: %w", query, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		e.metrics.evalErrors.WithLabelValues(query).Inc()
		return nil, fmt.Errorf("%w: %s", ErrUndefined, query)
	}
	return rs[0].Expressions[0].Value, nil
}

// MaskQuery is OPA's decision log mask rule: what of a logged decision must
// not leave the process.
const MaskQuery = "data.system.log.mask"

// Mask evaluates the policy's mask rule on a decision log event ({"input":
// ..., "result": ...}) as OPA does: each string it yields is a JSON pointer to
// erase; each {"op": "upsert", "path": p, "value": v} replaces p with v ({"op":
// "remove", "path": p} erases). A policy without the rule masks nothing.
func (e *Engine) Mask(ctx context.Context, event map[string]any) ([]string, map[string]any, error) {
	e.mu.RLock()
	pq, ok := e.prepared[MaskQuery]
	e.mu.RUnlock()
	if !ok {
		return nil, nil, nil
	}
	rs, err := pq.Eval(ctx, rego.EvalInput(event))
	if err != nil {
		return nil, nil, fmt.Errorf("policy: %s: %w", MaskQuery, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, nil, nil
	}
	items, ok := rs[0].Expressions[0].Value.([]any)
	if !ok {
		return nil, nil, fmt.Errorf("policy: %s: want a set, got %T", MaskQuery, rs[0].Expressions[0].Value)
	}
	var erase []string
	upsert := map[string]any{}
	for _, it := range items {
		switch x := it.(type) {
		case string:
			erase = append(erase, x)
		case map[string]any:
			path, _ := x["path"].(string)
			switch x["op"] {
			case "upsert":
				upsert[path] = x["value"]
			case "remove", nil:
				erase = append(erase, path)
			default:
				return nil, nil, fmt.Errorf("policy: %s: unknown op %v", MaskQuery, x["op"])
			}
		default:
			return nil, nil, fmt.Errorf("policy: %s: want pointers or operations, got %T", MaskQuery, it)
		}
	}
	return erase, upsert, nil
}

// CountError records a decision the caller could not use (wrong shape).
func (e *Engine) CountError(query string) { e.metrics.evalErrors.WithLabelValues(query).Inc() }

// compileBundle compiles a bundle's modules and stores its data.
func compileBundle(b *bundle.Bundle) (*ast.Compiler, storage.Store, error) {
	modules := map[string]*ast.Module{}
	for _, m := range b.Modules {
		modules[m.Path] = m.Parsed
	}
	c := ast.NewCompiler()
	if c.Compile(modules); c.Failed() {
		return nil, nil, c.Errors
	}
	return c, inmem.NewFromObject(b.Data), nil
}

// load compiles a directory (tests excluded) or a bundle.
func load(source string) (*ast.Compiler, storage.Store, error) {
	if strings.HasSuffix(source, ".tar.gz") {
		b, err := loader.NewFileLoader().AsBundle(source)
		if err != nil {
			return nil, nil, err
		}
		return compileBundle(b)
	}
	// OPA's loader follows links (os.Stat) and names what it finds by the path it
	// followed: in a Kubernetes volume every key would be read three times — as
	// <key>, ..data/<key> and ..<timestamp>/<key> — so the names the kubelet
	// reserves are skipped, as in sourceFiles.
	res, err := loader.NewFileLoader().Filtered([]string{source}, func(_ string, info fs.FileInfo, depth int) bool {
		return depth > 0 && reserved(info.Name()) || !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
	})
	if err != nil {
		return nil, nil, err
	}
	return compile(res)
}

// Fingerprint hashes the names and contents of the policy files (policy trees are
// small; times alone miss two writes within one clock tick): what
// climesh_policy_serving_info reports, to tell which policy a process decides with.
// The files are those sourceFiles finds, by the names a reader opens them by: a
// Kubernetes volume's timestamped directory is not part of the fingerprint, so
// an update that swaps ..data changes it only when the content changed.
func Fingerprint(source string) (string, error) {
	files, err := sourceFiles(source)
	if err != nil {
		return "", err
	}
	return hashFiles(nil, files)
}

// hashFiles hashes lines and then each file's path and content: the same files
// with the same contents give the same hash.
func hashFiles(lines []string, files []string) (string, error) {
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(b)
		lines = append(lines, path+" "+hex.EncodeToString(sum[:]))
	}
	h := sha256.Sum256([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(h[:]), nil
}
