// Package decisionlog records policy decisions in OPA's decision log format —
// one JSON object per decision with its decision_id, path, input, result,
// timestamp, bundle revision and labels — so that the tools that read OPA's
// logs read climesh's. Secrets are masked before an event leaves the process,
// by the policy's own data.system.log.mask rule, as OPA does (see Masker).
//
// Logging never slows a decision down and never blocks it: events go into a
// bounded queue that one goroutine writes out; when the queue is full the event
// is dropped and counted (climesh_decision_logs_dropped_total), never silently.
package decisionlog

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Event is one decision, in OPA's decision log shape.
type Event struct {
	Labels     map[string]string         `json:"labels"`
	DecisionID string                    `json:"decision_id"`
	Bundles    map[string]BundleRevision `json:"bundles,omitempty"`
	Path       string                    `json:"path"`
	Input      any                       `json:"input,omitempty"`
	Result     any                       `json:"result,omitempty"`
	Error      string                    `json:"error,omitempty"`
	Timestamp  time.Time                 `json:"timestamp"`
	Erased     []string                  `json:"erased,omitempty"`
	Masked     []string                  `json:"masked,omitempty"`
	Metrics    map[string]int64          `json:"metrics,omitempty"`
}

// BundleRevision names the revision of the bundle a decision was made with.
type BundleRevision struct {
	Revision string `json:"revision"`
}

// NewID is a random decision id (a UUID, version 4), as OPA's.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Masker applies the policy's mask rule to an event's input and result (OPA's
// data.system.log.mask): it returns what to erase and what to replace, as JSON
// pointers into {"input": ..., "result": ...}. nil masks nothing.
type Masker func(ctx context.Context, event map[string]any) (erase []string, upsert map[string]any, err error)

// Logger queues events and writes them to a Sink.
type Logger struct {
	labels map[string]string
	sink   Sink
	mask   Masker
	queue  chan Event

	written, dropped, failed prometheus.Counter
	closeOnce                sync.Once
	done                     chan struct{}
}

// Sink writes batches of events; an error is counted and the batch dropped.
type Sink interface {
	Write(ctx context.Context, events []Event) error
}

// Options shape a Logger.
type Options struct {
	Labels    map[string]string // e.g. id (the instance), app (xds-server, sidecar)
	QueueSize int               // events waiting to be written (default 10000)
	BatchSize int               // most events per Write (default 100)
}

// New starts a Logger writing to sink until ctx ends.
func New(ctx context.Context, sink Sink, mask Masker, o Options, reg prometheus.Registerer) *Logger {
	if o.QueueSize <= 0 {
		o.QueueSize = 10000
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 100
	}
	f := promauto.With(reg)
	l := &Logger{
		labels: o.Labels, sink: sink, mask: mask, queue: make(chan Event, o.QueueSize), done: make(chan struct{}),
		written: f.NewCounter(prometheus.CounterOpts{Name: "climesh_decision_logs_written_total", Help: "Decision log events written."}),
		dropped: f.NewCounter(prometheus.CounterOpts{Name: "climesh_decision_logs_dropped_total", Help: "Decision log events dropped because the queue was full."}),
		failed:  f.NewCounter(prometheus.CounterOpts{Name: "climesh_decision_logs_failed_total", Help: "Decision log events whose write failed (the sink's error is logged by the caller's sink)."}),
	}
	go l.run(ctx, o.BatchSize)
	return l
}

// Log queues one decision; it never blocks. The event's labels, id and time
// are filled in when empty.
func (l *Logger) Log(e Event) {
	if l == nil {
		return
	}
	if e.Labels == nil {
		e.Labels = l.labels
	}
	if e.DecisionID == "" {
		e.DecisionID = NewID()
	}
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now().UTC()
	}
	select {
	case l.queue <- e:
	default:
		l.dropped.Inc()
	}
}

// Done is closed when the Logger has written what it had after ctx ended.
func (l *Logger) Done() <-chan struct{} { return l.done }

func (l *Logger) run(ctx context.Context, batch int) {
	defer close(l.done)
	buf := make([]Event, 0, batch)
	flush := func(wctx context.Context) {
		if len(buf) == 0 {
			return
		}
		for i := range buf {
			l.applyMask(wctx, &buf[i])
		}
		if err := l.sink.Write(wctx, buf); err != nil {
			l.failed.Add(float64(len(buf)))
		} else {
			l.written.Add(float64(len(buf)))
		}
		buf = buf[:0]
	}
	for {
		select {
		case e := <-l.queue:
			buf = append(buf, e)
			// Take what else is waiting, up to a batch, then write.
			for len(buf) < batch {
				select {
				case e := <-l.queue:
					buf = append(buf, e)
					continue
				default:
				}
				break
			}
			// Not ctx: an event taken just before ctx ends is still masked
			// and written, within a bound.
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			flush(wctx)
			cancel()
		case <-ctx.Done():
			// Write what is queued, within a bound.
			wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for {
				select {
				case e := <-l.queue:
					buf = append(buf, e)
					if len(buf) == batch {
						flush(wctx)
					}
					continue
				default:
				}
				break
			}
			flush(wctx)
			cancel()
			return
		}
	}
}

// applyMask erases and replaces what the mask rule names, recording the
// pointers in Erased and Masked as OPA does. A mask rule that fails erases the
// whole input, never logs it unmasked.
func (l *Logger) applyMask(ctx context.Context, e *Event) {
	if l.mask == nil {
		return
	}
	doc := map[string]any{"input": e.Input, "result": e.Result}
	var err error
	if !plainJSON(e.Input) || !plainJSON(e.Result) {
		// The rule sees the event as JSON, as OPA's does; values of other Go
		// types go through the text form once.
		var raw []byte
		if raw, err = json.Marshal(doc); err == nil {
			err = json.Unmarshal(raw, &doc)
		}
	}
	var erase []string
	var upsert map[string]any
	if err == nil {
		erase, upsert, err = l.mask(ctx, doc)
	}
	if err != nil {
		e.Input, e.Erased = nil, []string{"/input"}
		e.Error = "mask rule failed: the input is not logged"
		return
	}
	for _, p := range erase {
		if remove(doc, p) {
			e.Erased = append(e.Erased, p)
		}
	}
	for p, v := range upsert {
		if set(doc, p, v) {
			e.Masked = append(e.Masked, p)
		}
	}
	e.Input, e.Result = doc["input"], doc["result"]
}

// plainJSON reports whether v is made only of what encoding/json decodes into
// (maps, slices, strings, numbers, booleans, nil): an event's own, fresh
// values, which the mask may edit in place.
func plainJSON(v any) bool {
	switch x := v.(type) {
	case nil, string, bool, float64, json.Number, int, int64:
		return true
	case map[string]any:
		for _, e := range x {
			if !plainJSON(e) {
				return false
			}
		}
		return true
	case []any:
		for _, e := range x {
			if !plainJSON(e) {
				return false
			}
		}
		return true
	}
	return false
}

// WriterSink writes each event as one JSON line (stdout, a file).
type WriterSink struct {
	mu sync.Mutex
	W  io.Writer
}

func (s *WriterSink) Write(_ context.Context, events []Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	enc := json.NewEncoder(s.W)
	for _, e := range events {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
}

// HTTPSink posts each batch to a decision log service as OPA's logs plugin
// does: a gzipped JSON array of events, Content-Encoding gzip.
type HTTPSink struct {
	URL    string
	Client *http.Client // default: 10s timeout
}

func (s *HTTPSink) Write(ctx context.Context, events []Event) error {
	var body bytes.Buffer
	zw := gzip.NewWriter(&body)
	if err := json.NewEncoder(zw).Encode(events); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", "gzip")
	client := s.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("decision log service %s: %s", s.URL, resp.Status)
	}
	return nil
}
