// Package lock serialises turns on a shared session fleet-wide: a Consul KV key per
// session, acquired with a Consul session that has a TTL and a lock delay and is
// renewed while the turn runs. A holder that crashes stops renewing, and Consul frees
// the lock within the TTL. Waiters on one process queue in arrival order.
package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// ErrUnavailable wraps a failure to reach Consul: the lock was not taken.
var ErrUnavailable = errors.New("session lock unavailable")

// Holder says who holds a lock and since when.
type Holder struct {
	User     string    `json:"user"`
	Instance string    `json:"instance"`
	Since    time.Time `json:"since"`
}

// BusyError is returned when the lock is held and the caller would not (or could
// no longer) wait.
type BusyError struct{ Holder Holder }

func (e *BusyError) Error() string {
	return fmt.Sprintf("session is in use by another user: %s since %s", e.Holder.User, e.Holder.Since.UTC().Format(time.RFC3339))
}

// Locker hands out locks.
type Locker struct {
	Client    *api.Client
	Prefix    string        // e.g. "climesh/locks/"
	TTL       time.Duration // Consul session TTL (10s minimum)
	LockDelay time.Duration // Consul lock-delay after an invalidated session
	Instance  string
	// Node, when set, is the catalog node the lock sessions are made on, with no
	// health check of its own (a catalog-registered instance's node has no agent,
	// so no serfHealth): the TTL alone bounds a dead holder. Empty: the node of
	// the agent the client talks to, and its serfHealth.
	Node string
	// Timeout bounds each Consul call (default 10s): a stalled Consul costs a
	// caller this much and an ErrUnavailable, and a release that cannot reach
	// Consul leaves the lock to the session's TTL.
	Timeout time.Duration

	mu     sync.Mutex
	queues map[string]chan struct{} // per session: a 1-token channel, FIFO among local waiters
}

// Lock is a held lock.
type Lock struct {
	l        *Locker
	key      string
	session  string
	stop     chan struct{}
	released sync.Once
	token    chan struct{}
}

func (l *Locker) queue(id string) chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.queues == nil {
		l.queues = map[string]chan struct{}{}
	}
	q, ok := l.queues[id]
	if !ok {
		q = make(chan struct{}, 1)
		q <- struct{}{}
		l.queues[id] = q
	}
	return q
}

// Acquire takes the lock of session id for user, waiting up to wait (0: not at
// all). Local waiters are served in arrival order; across instances Consul decides.
func (l *Locker) Acquire(ctx context.Context, id, user string, wait time.Duration) (*Lock, error) {
	// wait bounds the waiting only; each Consul call has its own time-out.
	waitCtx, cancel := context.WithTimeout(ctx, max(wait, time.Millisecond))
	defer cancel()
	q := l.queue(id)
	select {
	case <-q: // our turn among this process's waiters
	case <-waitCtx.Done():
		return nil, l.busy(ctx, id)
	}
	lk, err := l.acquireConsul(ctx, waitCtx, id, user, wait > 0)
	if err != nil {
		q <- struct{}{}
		return nil, err
	}
	lk.token = q
	return lk, nil
}

func (l *Locker) key(id string) string { return l.Prefix + id }

func (l *Locker) timeout() time.Duration {
	if l.Timeout > 0 {
		return l.Timeout
	}
	return 10 * time.Second
}

// bounded is ctx cut to one Consul call's time-out.
func (l *Locker) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, l.timeout())
}

// busy says who holds the lock, as far as Consul answers in time.
func (l *Locker) busy(ctx context.Context, id string) error {
	ctx, cancel := l.bounded(context.WithoutCancel(ctx))
	defer cancel()
	pair, _, err := l.Client.KV().Get(l.key(id), (&api.QueryOptions{}).WithContext(ctx))
	h := Holder{User: "unknown"}
	if err == nil && pair != nil {
		json.Unmarshal(pair.Value, &h)
	}
	return &BusyError{Holder: h}
}

func (l *Locker) acquireConsul(ctx, waitCtx context.Context, id, user string, wait bool) (*Lock, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout()+max(0, time.Until(deadline(waitCtx))))
	defer cancel()
	destroy := func(sid string) {
		dctx, cancel := l.bounded(context.WithoutCancel(ctx))
		defer cancel()
		l.Client.Session().Destroy(sid, (&api.WriteOptions{}).WithContext(dctx))
	}
	entry := &api.SessionEntry{Name: "climesh-turn:" + id, TTL: l.TTL.String(), LockDelay: l.LockDelay, Behavior: api.SessionBehaviorDelete}
	create := l.Client.Session().Create
	if l.Node != "" {
		entry.Node, create = l.Node, l.Client.Session().CreateNoChecks
	}
	cctx, ccancel := l.bounded(ctx)
	sid, _, err := create(entry, (&api.WriteOptions{}).WithContext(cctx))
	ccancel()
	if err != nil {
		return nil, fmt.Errorf("%w: create consul session: %v", ErrUnavailable, err)
	}
	value, _ := json.Marshal(Holder{User: user, Instance: l.Instance, Since: time.Now().UTC()})
	for {
		actx, acancel := l.bounded(ctx)
		ok, _, err := l.Client.KV().Acquire(&api.KVPair{Key: l.key(id), Value: value, Session: sid}, (&api.WriteOptions{}).WithContext(actx))
		acancel()
		if err == nil && ok {
			lk := &Lock{l: l, key: l.key(id), session: sid, stop: make(chan struct{})}
			go l.Client.Session().RenewPeriodic(l.TTL.String(), sid, nil, lk.stop)
			return lk, nil
		}
		if err == nil && !wait {
			destroy(sid)
			return nil, l.busy(ctx, id)
		}
		if err != nil && !wait {
			destroy(sid)
			return nil, fmt.Errorf("%w: acquire: %v", ErrUnavailable, err)
		}
		select {
		case <-waitCtx.Done():
			destroy(sid)
			if err != nil {
				return nil, fmt.Errorf("%w: acquire: %v", ErrUnavailable, err)
			}
			return nil, l.busy(ctx, id)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Release frees the lock (once) and lets the next local waiter go.
func (lk *Lock) Release() error {
	var err error
	lk.released.Do(func() {
		// Release the key before the session ends: RenewPeriodic destroys the
		// session when stopped, and a session destroyed while it holds the key
		// is an invalidation, which would start Consul's lock-delay for the next
		// holder.
		// Each call is bounded: when Consul does not answer, the session's TTL
		// frees the lock (renewal stops here either way).
		ctx, cancel := lk.l.bounded(context.Background())
		defer cancel()
		_, _, e1 := lk.l.Client.KV().Release(&api.KVPair{Key: lk.key, Session: lk.session}, (&api.WriteOptions{}).WithContext(ctx))
		close(lk.stop)
		_, e2 := lk.l.Client.Session().Destroy(lk.session, (&api.WriteOptions{}).WithContext(ctx))
		err = errors.Join(e1, e2)
		if lk.token != nil {
			lk.token <- struct{}{}
		}
	})
	return err
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}
