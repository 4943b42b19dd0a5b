package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// ErrUnavailable wraps every failure to reach the store: the call may be tried
// again; nothing it would have written was written, as far as the caller knows.
var ErrUnavailable = errors.New("session registry unavailable")

// Resilient bounds every call to a Registry and keeps what it last read, so
// that a stalled or unreachable store costs a caller at most Timeout and an
// answer that says so, never silence; and for a session whose record was read
// within StaleFor, nothing: Get answers the record last read. Records change
// rarely (members of a collab session), and a record answered from memory is
// at most StaleFor old; a session the sidecar never read is refused until the
// store answers (fail closed).
//
// Creates are never answered from memory: a claim the store did not confirm is
// reported unavailable, and the caller refuses the create.
type Resilient struct {
	Store    Registry
	Timeout  time.Duration // per call; 0: none
	StaleFor time.Duration // 0: never answer from memory
	// MaxRecords bounds the records kept (default 65536); past it the oldest
	// half is forgotten.
	MaxRecords int
	// OnStale, when set, is called each time Get answers from memory.
	OnStale func(id string, age time.Duration)

	mu   sync.Mutex
	read map[string]readRecord
	// quietUntil: after a failure, Get answers what it remembers without asking
	// the store until then, so that an outage costs each caller the time-out
	// once per quietFor, not on every call.
	quietUntil time.Time
}

// quietFor is how long after a failure Get answers from memory without asking
// the store; a call for a record it does not remember still asks.
const quietFor = 5 * time.Second

type readRecord struct {
	rec *Record
	at  time.Time
}

var _ Registry = (*Resilient)(nil)

func (r *Resilient) call(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.Timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, r.Timeout)
}

// unavailable wraps a store failure as ErrUnavailable, saying what timed out.
func (r *Resilient) unavailable(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && r.Timeout > 0 {
		return fmt.Errorf("%w: %s: no answer within %s", ErrUnavailable, op, r.Timeout)
	}
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err)
}

// Get reads a record from the store, or from memory when the store does not
// answer and the record was read within StaleFor.
func (r *Resilient) Get(ctx context.Context, id string) (*Record, error) {
	if rec, ok := r.quiet(id); ok {
		return rec, nil
	}
	cctx, cancel := r.call(ctx)
	rec, err := r.Store.Get(cctx, id)
	cancel()
	if err == nil {
		r.mu.Lock()
		r.quietUntil = time.Time{} // it answers again
		r.mu.Unlock()
		r.remember(id, rec)
		return rec, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err() // the caller went away: not the store's failure
	}
	if errors.Is(err, ErrCorrupt) {
		return nil, err
	}
	r.mu.Lock()
	r.quietUntil = time.Now().Add(quietFor)
	r.mu.Unlock()
	if rec, ok := r.stale(id); ok {
		return rec, nil
	}
	return nil, r.unavailable("get "+id, err)
}

// quiet answers a remembered record without asking the store, while a recent
// failure says it would not answer.
func (r *Resilient) quiet(id string) (*Record, bool) {
	r.mu.Lock()
	quiet := time.Now().Before(r.quietUntil)
	r.mu.Unlock()
	if !quiet {
		return nil, false
	}
	return r.stale(id)
}

// stale is the record read for id within StaleFor, if any.
func (r *Resilient) stale(id string) (*Record, bool) {
	r.mu.Lock()
	last, ok := r.read[id]
	r.mu.Unlock()
	age := time.Since(last.at)
	if !ok || last.rec == nil || age >= r.StaleFor {
		return nil, false
	}
	if r.OnStale != nil {
		r.OnStale(id, age)
	}
	return last.rec, true
}

// Create registers a record in the store; it is never confirmed from memory.
func (r *Resilient) Create(ctx context.Context, rec *Record) (*Record, error) {
	cctx, cancel := r.call(ctx)
	defer cancel()
	got, err := r.Store.Create(cctx, rec)
	switch {
	case err == nil:
		r.remember(rec.ID, got)
		return got, nil
	case errors.Is(err, ErrExists):
		return got, err
	case ctx.Err() != nil:
		return nil, ctx.Err()
	}
	return nil, r.unavailable("create "+rec.ID, err)
}

// Delete removes a record from the store and from memory.
func (r *Resilient) Delete(ctx context.Context, id string) error {
	r.forget(id)
	cctx, cancel := r.call(ctx)
	defer cancel()
	if err := r.Store.Delete(cctx, id); err != nil {
		return r.unavailable("delete "+id, err)
	}
	return nil
}

// Touch records activity, within the timeout.
func (r *Resilient) Touch(ctx context.Context, id string, at time.Time, instance string) error {
	cctx, cancel := r.call(ctx)
	defer cancel()
	if err := r.Store.Touch(cctx, id, at, instance); err != nil {
		return r.unavailable("touch "+id, err)
	}
	return nil
}

// List reads every record, within the timeout.
func (r *Resilient) List(ctx context.Context) ([]*Record, error) {
	cctx, cancel := r.call(ctx)
	defer cancel()
	recs, err := r.Store.List(cctx)
	if err != nil {
		return nil, r.unavailable("list", err)
	}
	return recs, nil
}

func (r *Resilient) remember(id string, rec *Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec == nil {
		delete(r.read, id) // gone from the store: never answer it from memory
		return
	}
	max := r.MaxRecords
	if max <= 0 {
		max = 65536
	}
	if r.read == nil {
		r.read = map[string]readRecord{}
	}
	if len(r.read) >= max {
		r.evictOldestHalf()
	}
	r.read[id] = readRecord{rec, time.Now()}
}

// evictOldestHalf forgets the records read longest ago. r.mu held.
func (r *Resilient) evictOldestHalf() {
	ages := make([]time.Time, 0, len(r.read))
	for _, e := range r.read {
		ages = append(ages, e.at)
	}
	cut := median(ages)
	for id, e := range r.read {
		if !e.at.After(cut) {
			delete(r.read, id)
		}
	}
}

func (r *Resilient) forget(id string) {
	r.mu.Lock()
	delete(r.read, id)
	r.mu.Unlock()
}

func median(ts []time.Time) time.Time {
	if len(ts) == 0 {
		return time.Time{}
	}
	slices.SortFunc(ts, time.Time.Compare)
	return ts[len(ts)/2]
}
