package registry

import (
	"errors"
	"testing"
	"time"
)

func TestMemoryCreateOnce(t *testing.T) {
	m := &Memory{}
	if _, err := m.Create(t.Context(), &Record{ID: "s", Owner: "alice"}); err != nil {
		t.Fatal(err)
	}
	existing, err := m.Create(t.Context(), &Record{ID: "s", Owner: "bob"})
	if !errors.Is(err, ErrExists) || existing.Owner != "alice" {
		t.Fatalf("second create: %+v %v", existing, err)
	}
	if r, _ := m.Get(t.Context(), "s"); r.Owner != "alice" {
		t.Fatalf("record %+v", r)
	}
	m.Delete(t.Context(), "s")
	if r, _ := m.Get(t.Context(), "s"); r != nil {
		t.Fatalf("deleted record %+v", r)
	}
	if v := (&Record{ID: "s", Owner: "a", Members: []string{"b"}}).PolicyValue(); v["owner"] != "a" || len(v["members"].([]any)) != 1 {
		t.Fatalf("policy value %v", v)
	}
	if (*Record)(nil).PolicyValue() != nil {
		t.Fatal("nil record has a policy value")
	}
}

// A session resumed elsewhere moves: Touch records where it is now active.
func TestMemoryTouchMovesInstance(t *testing.T) {
	m := &Memory{}
	m.Create(t.Context(), &Record{ID: "s", Owner: "alice", Instance: "a"})
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	m.Touch(t.Context(), "s", at, "b")
	if r, _ := m.Get(t.Context(), "s"); r.Instance != "b" || !r.LastActive.Equal(at) {
		t.Fatalf("after a touch on b: %+v", r)
	}
	m.Touch(t.Context(), "s", at.Add(time.Second), "")
	if r, _ := m.Get(t.Context(), "s"); r.Instance != "b" {
		t.Fatalf("a touch without an instance moved it: %+v", r)
	}
}
