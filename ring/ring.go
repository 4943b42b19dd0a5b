// Package ring computes where Envoy's hashing load balancers — ring hash here,
// Maglev in maglev.go — send a key, so that a sidecar can tell which of its
// users' tunnels a fleet change has given another home. It follows Envoy's
// RingHashLoadBalancer with xxHash: each host
// is placed on the ring at the xxHash64 of "<hash key>_<i>" for i below its
// share of the ring size, the ring is sorted by hash, and a key goes to the
// first entry whose hash is at or above the key's hash (the first entry when
// none is). climesh gives every host its instance id as its hash key
// (envoy.lb/hash_key) and hashes a request on one identity header's value, so
// both sides are known to the sidecar.
//
// What it cannot see: Envoy's bounded load (hash_balance_factor), which sends
// a key past its home when the home is over its share, and panic mode (too few
// healthy hosts), where Envoy builds the ring from every host.
package ring

import (
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// Size is the minimum_ring_size climesh gives Envoy for a pool of healthy
// hosts with entries per host (0: minRingSize as configured), capped at
// maxRingSize. Every host then gets exactly entries places for any healthy
// count in a band (Bucket), so that a health flip inside the band leaves the
// cluster unchanged and a key moves only when its own host leaves or a new
// host's entry lands in front of it.
func Size(entries, minRingSize, maxRingSize uint64, healthy int) uint64 {
	if entries == 0 {
		return minRingSize
	}
	return min(entries*Bucket(uint64(max(healthy, 1)), entries), maxRingSize)
}

// Bucket is the b ≤ n of the sequence 1, 2, …, b' = ceil(b·e/(e−1)) whose
// successor is above n; every n in [b, b') has ceil(e·b/n) = e.
func Bucket(n, e uint64) uint64 {
	if e <= 1 {
		return n
	}
	b := uint64(1)
	for {
		next := (b*e + e - 2) / (e - 1)
		if next > n {
			return b
		}
		b = next
	}
}

// Ring is Envoy's ring for a set of equally weighted hosts.
type Ring struct {
	hashes []uint64
	hosts  []string // hosts[i] owns hashes[i]
}

type entry struct {
	hash uint64
	host string
}

// New builds the ring Envoy builds for hosts (their hash keys, in any order;
// each once) with minRingSize and maxRingSize. With equal weights every host
// gets ceil(minRingSize/N) entries, capped so the ring stays within
// maxRingSize, exactly as Envoy's scale computes them.
func New(hosts []string, minRingSize, maxRingSize uint64) *Ring {
	r := &Ring{}
	if len(hosts) == 0 {
		return r
	}
	// Envoy: scale = min(ceil(w_min * min_ring_size) / w_min, max_ring_size),
	// and each host gets scale * weight entries, counted with running sums.
	w := 1 / float64(len(hosts))
	scale := math.Min(math.Ceil(w*float64(minRingSize))/w, float64(maxRingSize))
	entries := make([]entry, 0, int(math.Ceil(scale)))
	current, target := 0.0, 0.0
	for _, h := range hosts {
		target += scale * w
		for i := 0; current < target; i++ {
			entries = append(entries, entry{xxhash.Sum64String(h + "_" + strconv.Itoa(i)), h})
			current++
		}
	}
	// Envoy sorts by hash alone; equal hashes (practically never) keep an
	// unspecified order there, a stable one here.
	slices.SortStableFunc(entries, func(a, b entry) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
	r.hashes, r.hosts = make([]uint64, len(entries)), make([]string, len(entries))
	for i, e := range entries {
		r.hashes[i], r.hosts[i] = e.hash, e.host
	}
	return r
}

// Home is the host Envoy sends a request whose hashed header has value key
// ("" for an empty ring).
func (r *Ring) Home(key string) string {
	return r.HomeOfHash(xxhash.Sum64String(key))
}

// HomeOfHash is Home for a hash already computed: the first entry whose hash
// is at or above h, wrapping to the first entry (Envoy's ketama search).
func (r *Ring) HomeOfHash(h uint64) string {
	if len(r.hashes) == 0 {
		return ""
	}
	i, _ := slices.BinarySearch(r.hashes, h)
	if i == len(r.hashes) {
		return r.hosts[0]
	}
	return r.hosts[i]
}

// Entries is how many places host has on the ring.
func (r *Ring) Entries(host string) int {
	n := 0
	for _, h := range r.hosts {
		if h == host {
			n++
		}
	}
	return n
}
