// Package registry is the fleet-wide session registry: one Consul KV key per
// session (owner, tenant, mode, members, instance, created, last active), written
// with check-and-set so that two creators of one session id never both win.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Record is one session's entry.
type Record struct {
	ID         string    `json:"id"`
	Owner      string    `json:"owner"`
	Tenant     string    `json:"tenant"`
	Mode       string    `json:"mode"` // shared, collab, isolated
	Members    []string  `json:"members"`
	Instance   string    `json:"instance"` // where the session was last active (created, or resumed and sent to)
	Pool       string    `json:"pool,omitempty"`
	Created    time.Time `json:"created"`
	LastActive time.Time `json:"last_active"`
}

// PolicyValue is the record as policy input (input.record).
func (r *Record) PolicyValue() map[string]any {
	if r == nil {
		return nil
	}
	members := make([]any, len(r.Members))
	for i, m := range r.Members {
		members[i] = m
	}
	return map[string]any{"id": r.ID, "owner": r.Owner, "tenant": r.Tenant, "mode": r.Mode, "members": members, "instance": r.Instance}
}

// ErrExists is returned by Create when the id is taken.
var ErrExists = errors.New("session id already registered")

// ErrCorrupt wraps a record the store holds that cannot be read: not an
// outage, and never answered from memory.
var ErrCorrupt = errors.New("session record unreadable")

// Registry stores records.
type Registry interface {
	// Get returns nil, nil for an unknown session.
	Get(ctx context.Context, id string) (*Record, error)
	// Create registers a new record; ErrExists (with the existing record) if taken.
	Create(ctx context.Context, r *Record) (*Record, error)
	Delete(ctx context.Context, id string) error
	// Touch records activity at instance (best effort): LastActive, and
	// Instance, which moves with the session when it is resumed elsewhere.
	Touch(ctx context.Context, id string, at time.Time, instance string) error
	// List returns every record.
	List(ctx context.Context) ([]*Record, error)
}

// Consul keeps records under Prefix in Consul KV.
type Consul struct {
	KV     *api.KV
	Prefix string // e.g. "climesh/sessions/"
}

func (c *Consul) key(id string) string { return c.Prefix + id }

// Get reads a record.
func (c *Consul) Get(ctx context.Context, id string) (*Record, error) {
	pair, _, err := c.KV.Get(c.key(id), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("session registry: get %s: %w", id, err)
	}
	if pair == nil {
		return nil, nil
	}
	var r Record
	if err := json.Unmarshal(pair.Value, &r); err != nil {
		return nil, fmt.Errorf("%w: %s is not valid JSON: %v", ErrCorrupt, c.key(id), err)
	}
	return &r, nil
}

// Create writes a record only if the key does not exist (CAS index 0).
func (c *Consul) Create(ctx context.Context, r *Record) (*Record, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	ok, _, err := c.KV.CAS(&api.KVPair{Key: c.key(r.ID), Value: b, ModifyIndex: 0}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("session registry: create %s: %w", r.ID, err)
	}
	if !ok {
		existing, err := c.Get(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		return existing, ErrExists
	}
	return r, nil
}

// Delete removes a record.
func (c *Consul) Delete(ctx context.Context, id string) error {
	if _, err := c.KV.Delete(c.key(id), (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("session registry: delete %s: %w", id, err)
	}
	return nil
}

// Touch sets LastActive with check-and-set; a lost race is ignored (another
// writer touched it at the same time).
func (c *Consul) Touch(ctx context.Context, id string, at time.Time, instance string) error {
	pair, _, err := c.KV.Get(c.key(id), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || pair == nil {
		return err
	}
	var r Record
	if err := json.Unmarshal(pair.Value, &r); err != nil {
		return err
	}
	r.LastActive = at.UTC()
	if instance != "" {
		r.Instance = instance
	}
	b, _ := json.Marshal(&r)
	_, _, err = c.KV.CAS(&api.KVPair{Key: pair.Key, Value: b, ModifyIndex: pair.ModifyIndex}, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// List reads every record under the prefix.
func (c *Consul) List(ctx context.Context) ([]*Record, error) {
	pairs, _, err := c.KV.List(c.Prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("session registry: list: %w", err)
	}
	out := make([]*Record, 0, len(pairs))
	for _, p := range pairs {
		var r Record
		if json.Unmarshal(p.Value, &r) == nil {
			out = append(out, &r)
		}
	}
	return out, nil
}

// Memory is a Registry for one process (tests, and sidecars without Consul).
type Memory struct {
	mu      sync.Mutex
	records map[string]Record
}

// Get reads a record.
func (m *Memory) Get(_ context.Context, id string) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.records[id]
	if !ok {
		return nil, nil
	}
	return &r, nil
}

// Create registers a record unless the id is taken.
func (m *Memory) Create(_ context.Context, r *Record) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.records == nil {
		m.records = map[string]Record{}
	}
	if existing, ok := m.records[r.ID]; ok {
		return &existing, ErrExists
	}
	m.records[r.ID] = *r
	return r, nil
}

// Delete removes a record.
func (m *Memory) Delete(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.records, id)
	return nil
}

// Touch sets LastActive and Instance.
func (m *Memory) Touch(_ context.Context, id string, at time.Time, instance string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.records[id]; ok {
		r.LastActive = at
		if instance != "" {
			r.Instance = instance
		}
		m.records[id] = r
	}
	return nil
}

// List returns copies of every record.
func (m *Memory) List(_ context.Context) ([]*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Record, 0, len(m.records))
	for _, r := range m.records {
		out = append(out, &r)
	}
	return out, nil
}
