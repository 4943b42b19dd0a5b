package registry

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// stallable is a Memory store that, while stalled, answers nothing until the
// caller's context ends (a SIGSTOPped Consul), or fails at once while down.
type stallable struct {
	Memory
	stalled, down atomic.Bool
}

func (s *stallable) wait(ctx context.Context) error {
	if s.down.Load() {
		return errors.New("connection refused")
	}
	if s.stalled.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (s *stallable) Get(ctx context.Context, id string) (*Record, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.Memory.Get(ctx, id)
}

func (s *stallable) Create(ctx context.Context, r *Record) (*Record, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.Memory.Create(ctx, r)
}

func (s *stallable) Delete(ctx context.Context, id string) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.Memory.Delete(ctx, id)
}

func (s *stallable) Touch(ctx context.Context, id string, at time.Time, instance string) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.Memory.Touch(ctx, id, at, instance)
}

func (s *stallable) List(ctx context.Context) ([]*Record, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.Memory.List(ctx)
}

func TestResilientBoundsEveryCallAndAnswersKnownRecords(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &stallable{}
		var stale []string
		r := &Resilient{Store: store, Timeout: 2 * time.Second, StaleFor: time.Minute,
			OnStale: func(id string, _ time.Duration) { stale = append(stale, id) }}
		ctx := t.Context()
		if _, err := r.Create(ctx, &Record{ID: "seen", Owner: "alice"}); err != nil {
			t.Fatal(err)
		}
		store.Memory.Create(ctx, &Record{ID: "unseen", Owner: "bob"})
		store.Memory.Create(ctx, &Record{ID: "gone", Owner: "carol"})
		if rec, _ := r.Get(ctx, "gone"); rec == nil {
			t.Fatal("setup: gone not read")
		}
		store.Memory.Delete(ctx, "gone")
		if rec, err := r.Get(ctx, "gone"); rec != nil || err != nil {
			t.Fatalf("a deleted record: %v %v", rec, err)
		}

		store.stalled.Store(true)
		timed := func(name string, call func() error) error {
			t.Helper()
			start := time.Now()
			err := call()
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("%s took %v past the 2s timeout", name, took)
			}
			return err
		}
		var rec *Record
		if err := timed("get seen", func() (err error) { rec, err = r.Get(ctx, "seen"); return }); err != nil || rec.Owner != "alice" {
			t.Fatalf("a record read before, store stalled: %v %v", rec, err)
		}
		if len(stale) != 1 || stale[0] != "seen" {
			t.Fatalf("answers from memory reported %v", stale)
		}
		// Right after a failure, a remembered record is answered without
		// waiting for the store again.
		start := time.Now()
		if rec, err := r.Get(ctx, "seen"); err != nil || rec.Owner != "alice" || time.Since(start) != 0 {
			t.Fatalf("a remembered record right after a failure: %v %v after %v", rec, err, time.Since(start))
		}
		for name, call := range map[string]func() error{
			"get unseen": func() error { _, err := r.Get(ctx, "unseen"); return err },
			"get gone":   func() error { _, err := r.Get(ctx, "gone"); return err },
			"create":     func() error { _, err := r.Create(ctx, &Record{ID: "new"}); return err },
			"touch":      func() error { return r.Touch(ctx, "seen", time.Now(), "i") },
			"delete":     func() error { return r.Delete(ctx, "unseen") },
			"list":       func() error { _, err := r.List(ctx); return err },
		} {
			err := timed(name, call)
			if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no answer within 2s") {
				t.Errorf("%s while the store stalls: %v", name, err)
			}
		}
		time.Sleep(time.Minute)
		if _, err := r.Get(ctx, "seen"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("a record read a minute ago answered from memory: %v", err)
		}

		store.stalled.Store(false)
		store.down.Store(true)
		if _, err := r.Get(ctx, "unseen"); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("store down: %v", err)
		}
		store.down.Store(false)
		if rec, err := r.Get(ctx, "new"); rec != nil || err != nil {
			t.Fatalf("a create the store never confirmed exists: %v %v", rec, err)
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		store.stalled.Store(true)
		if _, err := r.Get(cancelled, "unseen"); !errors.Is(err, context.Canceled) {
			t.Fatalf("the caller's own cancellation: %v", err)
		}
	})
}

// A record the store holds but cannot be read is refused, never answered from
// memory, and not reported as an outage.
func TestResilientCorruptRecord(t *testing.T) {
	r := &Resilient{Store: &corrupt{}, Timeout: time.Second, StaleFor: time.Hour}
	r.remember("s", &Record{ID: "s", Owner: "alice"})
	if rec, err := r.Get(t.Context(), "s"); !errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnavailable) || rec != nil {
		t.Fatalf("corrupt record: %v %v", rec, err)
	}
}

type corrupt struct{ Memory }

func (*corrupt) Get(context.Context, string) (*Record, error) { return nil, ErrCorrupt }
