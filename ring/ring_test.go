package ring

import (
	"fmt"
	"testing"
)

func hostsN(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("cli-%d", i)
	}
	return out
}

// Every host gets exactly the configured entries for every healthy count, as
// Envoy's scale gives them on the sizes Size computes.
func TestEveryHostGetsItsEntries(t *testing.T) {
	const e, maxSize = 16, 1 << 23
	for n := 1; n <= 200; n++ {
		hosts := hostsN(n)
		r := New(hosts, Size(e, 0, maxSize, n), maxSize)
		for _, h := range hosts {
			if got := r.Entries(h); got != e {
				t.Fatalf("%d hosts: %s has %d entries, want %d", n, h, got, e)
			}
		}
	}
	// A configured minimum ring size (no entries per host): ceil(min/N) each.
	r := New(hostsN(3), 1024, maxSize)
	if got := r.Entries("cli-0"); got != 342 {
		t.Fatalf("min 1024 over 3 hosts: %d entries, want 342", got)
	}
	// The cap: a ring never grows past max_ring_size.
	r = New(hostsN(4), 1<<20, 100)
	if got := len(r.hashes); got != 100 {
		t.Fatalf("capped ring: %d entries, want 100", got)
	}
}

// A host that joins takes keys from the others and gives none away between
// them; one that leaves gives its keys away and takes none. About 1/N move.
func TestJoinMovesOnlyToTheNewHost(t *testing.T) {
	const e, maxSize = 256, 1 << 23
	before := New(hostsN(3), Size(e, 0, maxSize, 3), maxSize)
	after := New(hostsN(4), Size(e, 0, maxSize, 4), maxSize)
	moved := 0
	const users = 4000
	for i := range users {
		u := fmt.Sprintf("user-%d", i)
		b, a := before.Home(u), after.Home(u)
		if b != a {
			moved++
			if a != "cli-3" {
				t.Fatalf("%s moved %s -> %s, not to the new host", u, b, a)
			}
		}
		if left := New([]string{"cli-0", "cli-2"}, Size(e, 0, maxSize, 2), maxSize).Home(u); b != "cli-1" && left != b {
			t.Fatalf("%s moved %s -> %s when cli-1 left", u, b, left)
		}
	}
	if share := float64(moved) / users; share < 0.18 || share > 0.32 {
		t.Fatalf("%.1f%% of users moved to the fourth host, want about 25%%", 100*share)
	}
}

// The order hosts are given in does not change the ring.
func TestOrderDoesNotMatter(t *testing.T) {
	a := New([]string{"a", "b", "c"}, 768, 1<<23)
	b := New([]string{"c", "a", "b"}, 768, 1<<23)
	for i := range 1000 {
		u := fmt.Sprint(i)
		if a.Home(u) != b.Home(u) {
			t.Fatalf("%s: %s vs %s", u, a.Home(u), b.Home(u))
		}
	}
}

// The ketama search: a hash at or below an entry goes to it; above the last
// one wraps to the first; an empty ring has no home.
func TestHomeOfHash(t *testing.T) {
	r := &Ring{hashes: []uint64{10, 20, 30}, hosts: []string{"a", "b", "c"}}
	for h, want := range map[uint64]string{0: "a", 10: "a", 11: "b", 20: "b", 29: "c", 30: "c", 31: "a", 1<<64 - 1: "a"} {
		if got := r.HomeOfHash(h); got != want {
			t.Errorf("hash %d: %s, want %s", h, got, want)
		}
	}
	if (&Ring{}).Home("x") != "" {
		t.Error("an empty ring has a home")
	}
}

// Maglev: every slot taken, the hosts' shares within a few percent of equal,
// and a host that joins takes keys only for itself — from each host about
// equally (Maglev's minimal disruption is approximate, unlike the ring's).
func TestMaglevTable(t *testing.T) {
	const size = 65537
	three := NewMaglev([]string{"cli-0", "cli-1", "cli-2"}, size)
	counts := map[string]int{}
	for _, h := range three.table {
		if h == "" {
			t.Fatal("an empty slot")
		}
		counts[h]++
	}
	for h, n := range counts {
		if n < size/3-size/30 || n > size/3+size/30 {
			t.Fatalf("%s holds %d of %d slots", h, n, size)
		}
	}
	four := NewMaglev([]string{"cli-0", "cli-1", "cli-2", "cli-3"}, size)
	moved, elsewhere := 0, 0
	for i := range 4000 {
		u := fmt.Sprintf("user-%d", i)
		if b, a := three.Home(u), four.Home(u); b != a {
			moved++
			if a != "cli-3" {
				elsewhere++
			}
		}
	}
	if share := float64(moved) / 4000; share < 0.2 || share > 0.35 {
		t.Fatalf("%.1f%% moved when a fourth host joined, want about 25%%", 100*share)
	}
	if float64(elsewhere)/4000 > 0.02 {
		t.Fatalf("%d of 4000 keys moved between the old hosts", elsewhere)
	}
	if NewMaglev(nil, size).Home("x") != "" {
		t.Fatal("an empty table has a home")
	}
}
