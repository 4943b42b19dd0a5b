package sidecar

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/climesh/climesh/periodic"
	"github.com/climesh/climesh/protocol"
)

// CatalogBackend registers through the servers' catalog API, for clusters with
// no client agents (consul-k8s's default since 1.0). The instance is a catalog
// node of its own, marked external (no agent vouches for it), and the sidecar
// writes its check. No agent expires that check when the sidecar dies, so
// liveness is a KV key (protocol.ConsulLivePrefix + pool/instance, named in the
// service meta protocol.ConsulMetaLiveness) held by a Consul session the sidecar
// renews every SessionTTL/2: Consul deletes the key at most 2 × SessionTTL after
// the last renewal, and discovery routes only instances whose key exists. A
// deregistration destroys the session and removes the node; what a sidecar that
// died leaves behind, the pool's Reaper removes.
type CatalogBackend struct {
	Client     *api.Client
	Node       string
	SessionTTL time.Duration
	Log        *zap.Logger

	mu      sync.Mutex
	svc     *api.AgentService // as last registered
	status  string
	output  string
	written time.Time
	session string
	stop    context.CancelFunc
}

// outputEvery bounds how often a check whose status did not change is written
// again for a new output (each write is a Raft write and wakes every watcher):
// the agent backend's agent syncs output-only changes no more often either.
const outputEvery = time.Minute

// Node meta of an instance's catalog node.
const (
	nodeMetaExternal = "external-node"    // Consul's convention: no agent runs here
	nodeMetaInstance = "climesh-instance" // the instance whose node this is (the Reaper's mark)
)

func (b *CatalogBackend) Register(svc *api.AgentService, status, output string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	svc.Meta = maps.Clone(svc.Meta)
	svc.Meta[protocol.ConsulMetaLiveness] = protocol.ConsulLivePrefix + svc.Service + "/" + svc.ID
	b.svc = svc
	if b.session == "" {
		if err := b.establish(); err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(context.Background())
		b.stop = cancel
		go periodic.Every(ctx, b.SessionTTL/2, func() bool { b.renew(); return true })
	}
	return b.write(status, output)
}

func (b *CatalogBackend) Update(status, output string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.svc == nil {
		return errors.New("not registered")
	}
	if status == b.status && (output == b.output || time.Since(b.written) < outputEvery) {
		return nil
	}
	return b.write(status, output)
}

func (b *CatalogBackend) Deregister() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stop != nil {
		b.stop()
	}
	var errs []error
	if b.session != "" {
		// Behavior "delete": the liveness key goes with the session.
		if _, err := b.Client.Session().Destroy(b.session, nil); err != nil {
			errs = append(errs, fmt.Errorf("destroy the liveness session: %w", err))
		}
		b.session = ""
	}
	if _, err := b.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: b.Node}, nil); err != nil {
		errs = append(errs, fmt.Errorf("deregister node %s: %w", b.Node, err))
	}
	return errors.Join(errs...)
}

// write registers node, service and check as they are now. b.mu is held.
func (b *CatalogBackend) write(status, output string) error {
	_, err := b.Client.Catalog().Register(&api.CatalogRegistration{
		Node: b.Node, Address: b.svc.Address, NodeMeta: b.nodeMeta(), Service: b.svc,
		Check: &api.AgentCheck{Node: b.Node, CheckID: checkID(b.svc.ID), Name: consulCheckName, Status: status, Output: output,
			ServiceID: b.svc.ID, ServiceName: b.svc.Service},
	}, nil)
	if err != nil {
		return fmt.Errorf("register %s in the consul catalog: %w", b.svc.ID, err)
	}
	b.status, b.output, b.written = status, output, time.Now()
	return nil
}

func (b *CatalogBackend) nodeMeta() map[string]string {
	return map[string]string{nodeMetaExternal: "true", nodeMetaInstance: b.svc.ID}
}

// establish makes the node, a session on it and takes the liveness key. A key
// held by a session on this same node is this instance's from before a crash
// (its session has not expired yet): that session is destroyed and the key
// taken. b.mu is held.
func (b *CatalogBackend) establish() error {
	if _, err := b.Client.Catalog().Register(&api.CatalogRegistration{Node: b.Node, Address: b.svc.Address, NodeMeta: b.nodeMeta()}, nil); err != nil {
		return fmt.Errorf("register node %s in the consul catalog: %w", b.Node, err)
	}
	// The node has no agent and so no serfHealth: the session depends on no
	// check (NodeChecks empty, which api.Session.Create cannot send), only on
	// its TTL. No lock-delay: a restarted sidecar takes its key back at once.
	var created struct{ ID string }
	body := map[string]any{"Name": "climesh-live:" + b.svc.ID, "Node": b.Node, "NodeChecks": []string{},
		"TTL": b.SessionTTL.String(), "Behavior": api.SessionBehaviorDelete, "LockDelay": "0s"}
	if _, err := b.Client.Raw().Write("/v1/session/create", body, &created, nil); err != nil {
		return fmt.Errorf("create the liveness session (TTL %s): %w", b.SessionTTL, err)
	}
	key := b.svc.Meta[protocol.ConsulMetaLiveness]
	for attempt := 0; ; attempt++ {
		ok, _, err := b.Client.KV().Acquire(&api.KVPair{Key: key, Value: []byte(b.svc.Address), Session: created.ID}, nil)
		if err != nil {
			return fmt.Errorf("take the liveness key %s: %w", key, err)
		}
		if ok {
			break
		}
		pair, _, err := b.Client.KV().Get(key, nil)
		if err != nil || pair == nil || attempt > 0 {
			return fmt.Errorf("the liveness key %s is held by another session (is instance id %s in use twice?): %v", key, b.svc.ID, err)
		}
		old, _, err := b.Client.Session().Info(pair.Session, nil)
		if err != nil || old == nil || old.Node != b.Node {
			return fmt.Errorf("the liveness key %s is held by a session of another node (is instance id %s in use twice?)", key, b.svc.ID)
		}
		b.Log.Info("taking back the liveness key from this instance's previous session", zap.String("session", old.ID))
		if _, err := b.Client.Session().Destroy(old.ID, nil); err != nil {
			return fmt.Errorf("destroy this instance's previous session: %w", err)
		}
	}
	b.session = created.ID
	return nil
}

// renew keeps the session alive; a session Consul no longer knows (it expired
// while Consul was unreachable, or Consul lost its state) is made again, and the
// instance registered again as it was.
func (b *CatalogBackend) renew() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.session == "" {
		return // deregistered
	}
	entry, _, err := b.Client.Session().Renew(b.session, nil)
	if err != nil {
		b.Log.Warn("cannot renew the liveness session", zap.Error(err))
		return
	}
	if entry != nil {
		return
	}
	b.Log.Warn("the liveness session is gone; registering again", zap.String("session", b.session))
	b.session = ""
	if err := b.establish(); err != nil {
		b.Log.Warn("cannot take the liveness key again", zap.Error(err))
		return
	}
	if err := b.write(b.status, b.output); err != nil {
		b.Log.Warn("cannot register again", zap.Error(err))
	}
}
