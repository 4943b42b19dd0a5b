package datapath

import (
	"crypto/subtle"
	"sync/atomic"
)

// Credentials are the edge credentials a sidecar accepts (x-climesh-edge-
// credential): usually one; two while it rotates, so that Envoy may switch from
// the old to the new one without a tunnel refused in between. Set replaces them
// under running tunnels (the sidecar watches --edge-credential-file).
type Credentials struct{ values atomic.Pointer[[]string] }

// NewCredentials accepts values.
func NewCredentials(values ...string) *Credentials {
	c := &Credentials{}
	c.Set(values)
	return c
}

// Set replaces the accepted values.
func (c *Credentials) Set(values []string) { c.values.Store(&values) }

// Accepts reports whether got is one of the values, comparing each in
// constant time (a wrong guess learns nothing from the timing).
func (c *Credentials) Accepts(got string) bool {
	ok := 0
	for _, v := range *c.values.Load() {
		ok |= subtle.ConstantTimeCompare([]byte(got), []byte(v))
	}
	return ok == 1
}
