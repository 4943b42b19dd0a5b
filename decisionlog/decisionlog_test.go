package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// syncBuffer is a bytes.Buffer safe for the logger's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func events(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		out = append(out, e)
	}
	return out
}

// Events are written in OPA's shape, masked by the mask rule: erased pointers
// are gone and listed in "erased", upserted ones replaced and listed in
// "masked"; a mask rule that fails keeps the input out of the log.
func TestLoggerWritesMaskedEvents(t *testing.T) {
	buf := &syncBuffer{}
	mask := func(_ context.Context, ev map[string]any) ([]string, map[string]any, error) {
		in, _ := ev["input"].(map[string]any)
		if in["fail"] == true {
			return nil, nil, errors.New("mask rule error")
		}
		return []string{"/input/password", "/input/missing"}, map[string]any{"/input/headers/authorization": "**REDACTED**"}, nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	l := New(ctx, &WriterSink{W: buf}, mask, Options{Labels: map[string]string{"id": "xds-1", "app": "xds-server"}}, prometheus.NewRegistry())
	l.Log(Event{DecisionID: "d-1", Path: "climesh/edge/allow", Result: false,
		Input: map[string]any{"user": "ann", "password": "hunter2", "headers": map[string]any{"authorization": "Bearer secret-token"}}})
	l.Log(Event{Path: "climesh/edge/allow", Input: map[string]any{"fail": true, "password": "hunter2"}, Result: true})
	cancel()
	<-l.Done()
	out := buf.String()
	if strings.Contains(out, "hunter2") || strings.Contains(out, "secret-token") {
		t.Fatalf("a secret reached the log:\n%s", out)
	}
	evs := events(t, out)
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2:\n%s", len(evs), out)
	}
	first := evs[0]
	if first["decision_id"] != "d-1" || first["path"] != "climesh/edge/allow" || first["result"] != false || first["timestamp"] == "" {
		t.Fatalf("event %v", first)
	}
	if labels := first["labels"].(map[string]any); labels["id"] != "xds-1" {
		t.Fatalf("labels %v", labels)
	}
	if er := first["erased"].([]any); len(er) != 1 || er[0] != "/input/password" {
		t.Fatalf("erased %v (a pointer to nothing is not listed)", er)
	}
	if m := first["masked"].([]any); len(m) != 1 || m[0] != "/input/headers/authorization" {
		t.Fatalf("masked %v", m)
	}
	if h := first["input"].(map[string]any)["headers"].(map[string]any); h["authorization"] != "**REDACTED**" {
		t.Fatalf("upsert not applied: %v", h)
	}
	second := evs[1]
	if second["input"] != nil || second["decision_id"] == "" || !strings.Contains(second["error"].(string), "mask rule failed") {
		t.Fatalf("an event whose mask failed: %v", second)
	}
}

// blockingSink holds every write until released.
type blockingSink struct{ release chan struct{} }

func (b blockingSink) Write(ctx context.Context, _ []Event) error {
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return nil
}

// A full queue drops and counts: Log never blocks a decision.
func TestLoggerNeverBlocks(t *testing.T) {
	sink := blockingSink{release: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	l := New(ctx, sink, nil, Options{QueueSize: 4, BatchSize: 1}, prometheus.NewRegistry())
	start := time.Now()
	for range 100 {
		l.Log(Event{Path: "p"})
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("100 logs took %v with the sink stuck", took)
	}
	if d := testutil.ToFloat64(l.dropped); d < 90 {
		t.Fatalf("%v events counted dropped, want at least 90 of 100 with a queue of 4", d)
	}
	close(sink.release)
}
