package registry

import (
	"errors"
	"testing"
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
