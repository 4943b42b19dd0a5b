package model

import "testing"

func TestPoolCopiesAndSorts(t *testing.T) {
	in := []Instance{{ID: "b", Meta: map[string]string{"k": "v"}}, {ID: "a", Tags: []string{"z", "y"}}}
	p := NewPool("p", in)
	in[0].Meta["k"] = "changed"
	got := p.Instances()
	if got[0].ID != "a" || got[1].ID != "b" {
		t.Fatalf("not sorted by id: %v", got)
	}
	if got[1].Meta["k"] != "v" {
		t.Fatalf("pool shares the caller's map: meta k = %q", got[1].Meta["k"])
	}
	if got[0].Tags[0] != "y" {
		t.Fatalf("tags not sorted: %v", got[0].Tags)
	}
	got[1].Meta["k"] = "mutated"
	if p.Instances()[1].Meta["k"] != "v" {
		t.Fatal("Instances hands out the pool's own map")
	}
}

func TestFleetWithPool(t *testing.T) {
	f := NewFleet(NewPool("b", nil), NewPool("a", []Instance{{ID: "x"}}))
	g := f.WithPool(NewPool("a", []Instance{{ID: "x"}, {ID: "y"}}))
	if p, _ := f.Pool("a"); p.Len() != 1 {
		t.Fatalf("WithPool changed the original fleet: %d instances", p.Len())
	}
	if p, _ := g.Pool("a"); p.Len() != 2 {
		t.Fatalf("WithPool did not replace pool a: %d instances", p.Len())
	}
	if _, ok := g.Pool("c"); ok {
		t.Fatal("found a pool that does not exist")
	}
	if g.Size() != 2 || len(g.Pools()) != 2 {
		t.Fatalf("size %d pools %d", g.Size(), len(g.Pools()))
	}
}

func TestParseHealth(t *testing.T) {
	for _, h := range []Health{Healthy, Draining, Unhealthy} {
		got, err := ParseHealth(h.String())
		if err != nil || got != h {
			t.Fatalf("round trip %v: %v %v", h, got, err)
		}
	}
	if _, err := ParseHealth("sick"); err == nil {
		t.Fatal("accepted unknown health")
	}
}
