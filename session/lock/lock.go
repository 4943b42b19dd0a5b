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
		return nil, l.busy(id)
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

func (l *Locker) busy(id string) error {
	pair, _, err := l.Client.KV().Get(l.key(id), nil)
	h := Holder{User: "unknown"}
	if err == nil && pair != nil {
		json.Unmarshal(pair.Value, &h)
	}
	return &BusyError{Holder: h}
}

func (l *Locker) acquireConsul(ctx, waitCtx context.Context, id, user string, wait bool) (*Lock, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second+max(0, time.Until(deadline(waitCtx))))
	defer cancel()
	entry := &api.SessionEntry{Name: "climesh-turn:" + id, TTL: l.TTL.String(), LockDelay: l.LockDelay, Behavior: api.SessionBehaviorDelete}
	create := l.Client.Session().Create
	if l.Node != "" {
		entry.Node, create = l.Node, l.Client.Session().CreateNoChecks
	}
	sid, _, err := create(entry, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("session lock: create consul session: %w", err)
	}
	value, _ := json.Marshal(Holder{User: user, Instance: l.Instance, Since: time.Now().UTC()})
	for {
		ok, _, err := l.Client.KV().Acquire(&api.KVPair{Key: l.key(id), Value: value, Session: sid}, (&api.WriteOptions{}).WithContext(ctx))
		if err == nil && ok {
			lk := &Lock{l: l, key: l.key(id), session: sid, stop: make(chan struct{})}
			go l.Client.Session().RenewPeriodic(l.TTL.String(), sid, nil, lk.stop)
			return lk, nil
		}
		if err == nil && !wait {
			l.Client.Session().Destroy(sid, nil)
			return nil, l.busy(id)
		}
		select {
		case <-waitCtx.Done():
			l.Client.Session().Destroy(sid, nil)
			if err != nil {
				return nil, fmt.Errorf("session lock: %w", err)
			}
			return nil, l.busy(id)
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
		_, _, e1 := lk.l.Client.KV().Release(&api.KVPair{Key: lk.key, Session: lk.session}, nil)
		close(lk.stop)
		_, e2 := lk.l.Client.Session().Destroy(lk.session, nil)
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
