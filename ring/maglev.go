package ring

import "github.com/cespare/xxhash/v2"

// Placement is where Envoy sends a request whose hashed header has a value:
// a Ring (ring_hash) or a Maglev table.
type Placement interface {
	Home(key string) string
}

// Maglev is Envoy's Maglev lookup table for a set of equally weighted hosts.
// Each host has a permutation of the table's slots (an offset, the xxHash64
// of its hash key, and a skip, the xxHash64 seeded 1, both modulo the size);
// the hosts take turns, in the order given, claiming their next free slot
// until every slot is taken. A request goes to the slot of its hash modulo the
// size. The order is Envoy's host order — the endpoints as the load assignment
// lists them, which climesh sorts by instance id — so give the hosts sorted.
type Maglev struct {
	table []string
}

// NewMaglev builds the table Envoy builds for hosts (their hash keys, sorted
// by id, each once) with tableSize slots (a prime, as the config requires).
func NewMaglev(hosts []string, tableSize uint64) *Maglev {
	m := &Maglev{}
	if len(hosts) == 0 || tableSize < 2 {
		return m
	}
	type perm struct{ offset, skip, next uint64 }
	perms := make([]perm, len(hosts))
	for i, h := range hosts {
		seeded := xxhash.NewWithSeed(1)
		seeded.WriteString(h)
		perms[i] = perm{offset: xxhash.Sum64String(h) % tableSize, skip: seeded.Sum64()%(tableSize-1) + 1}
	}
	m.table = make([]string, tableSize)
	filled := uint64(0)
	for filled < tableSize {
		for i := range perms {
			if filled == tableSize {
				break
			}
			p := &perms[i]
			c := (p.offset + p.skip*p.next) % tableSize
			for m.table[c] != "" {
				p.next++
				c = (p.offset + p.skip*p.next) % tableSize
			}
			m.table[c] = hosts[i]
			p.next++
			filled++
		}
	}
	return m
}

// Home is the host Envoy sends key to ("" for an empty table).
func (m *Maglev) Home(key string) string {
	if len(m.table) == 0 {
		return ""
	}
	return m.table[xxhash.Sum64String(key)%uint64(len(m.table))]
}
