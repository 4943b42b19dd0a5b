// Package model holds the Fleet: the immutable view of every pool of Copilot CLI
// instances that discovery produced and that xds translation consumes.
//
// A Fleet is a value. Constructors copy and sort their input, and nothing in this
// package hands out a slice or map that is shared with the Fleet, so a Fleet can be
// passed between goroutines without locks. model imports nothing of climesh's.
package model

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Health is an instance's routing state.
type Health int

const (
	// Healthy instances take new connections.
	Healthy Health = iota
	// Draining instances keep what they have but take no new picks (Consul
	// maintenance mode or a "draining" meta value).
	Draining
	// Unhealthy instances take nothing (any critical Consul check).
	Unhealthy
)

var healthNames = [...]string{"healthy", "draining", "unhealthy"}

func (h Health) String() string {
	if h < 0 || int(h) >= len(healthNames) {
		return fmt.Sprintf("health(%d)", int(h))
	}
	return healthNames[h]
}

// ParseHealth reads the names String produces.
func ParseHealth(s string) (Health, error) {
	for i, n := range healthNames {
		if strings.EqualFold(s, n) {
			return Health(i), nil
		}
	}
	return 0, fmt.Errorf("unknown health %q (want healthy|draining|unhealthy)", s)
}

// Instance is one CLI instance (in practice: its sidecar's address).
type Instance struct {
	ID      string
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
	Health  Health
}

func (i Instance) clone() Instance {
	i.Tags = slices.Clone(i.Tags)
	i.Meta = maps.Clone(i.Meta)
	return i
}

// Pool is a named set of instances, sorted by ID.
type Pool struct {
	Name      string
	instances []Instance
}

// NewPool copies and sorts instances by ID.
func NewPool(name string, instances []Instance) Pool {
	out := make([]Instance, len(instances))
	for i, in := range instances {
		out[i] = in.clone()
		slices.Sort(out[i].Tags)
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return Pool{Name: name, instances: out}
}

// Instances returns a copy of the pool's instances, sorted by ID.
func (p Pool) Instances() []Instance {
	out := make([]Instance, len(p.instances))
	for i, in := range p.instances {
		out[i] = in.clone()
	}
	return out
}

// Len is the number of instances.
func (p Pool) Len() int { return len(p.instances) }

// Each calls fn for each instance in ID order without copying. fn must not keep or
// modify the Tags or Meta it is given.
func (p Pool) Each(fn func(Instance)) {
	for _, in := range p.instances {
		fn(in)
	}
}

// Fleet is every pool climesh knows of, sorted by name.
type Fleet struct {
	pools []Pool
}

// NewFleet sorts pools by name. Pools are values already; they are not copied again.
func NewFleet(pools ...Pool) Fleet {
	out := slices.Clone(pools)
	slices.SortFunc(out, func(a, b Pool) int { return strings.Compare(a.Name, b.Name) })
	return Fleet{pools: out}
}

// Pools returns the pools in name order.
func (f Fleet) Pools() []Pool { return slices.Clone(f.pools) }

// Pool finds a pool by name.
func (f Fleet) Pool(name string) (Pool, bool) {
	i, ok := slices.BinarySearchFunc(f.pools, name, func(p Pool, n string) int { return strings.Compare(p.Name, n) })
	if !ok {
		return Pool{}, false
	}
	return f.pools[i], true
}

// Size is the total number of instances.
func (f Fleet) Size() int {
	n := 0
	for _, p := range f.pools {
		n += len(p.instances)
	}
	return n
}

// WithPool returns a Fleet in which p replaces the pool of the same name (or is added).
func (f Fleet) WithPool(p Pool) Fleet {
	out := make([]Pool, 0, len(f.pools)+1)
	for _, q := range f.pools {
		if q.Name != p.Name {
			out = append(out, q)
		}
	}
	return NewFleet(append(out, p)...)
}
