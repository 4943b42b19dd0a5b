package sidecar

import (
	"context"
	"errors"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/lock"
)

// Reaper removes what a sidecar that died leaves in the catalog (catalog
// registration, CatalogBackend): an instance node whose liveness key was gone on
// two passes in a row — its session expired, and no restart took the key back.
// Discovery stopped routing to it when the key went; the reaper only tidies the
// catalog. Only the sidecar holding the pool's reaper lock reaps, and only nodes
// a sidecar made (node meta climesh-instance naming the service instance).
type Reaper struct {
	Client   *api.Client
	Locker   *lock.Locker
	Pool     string
	Instance string
	Log      *zap.Logger

	missing map[string]bool // nodes whose key was missing on this reaper's last pass
}

// Reap runs one pass and returns how many nodes it removed (0 when another
// sidecar holds the reaper lock).
func (r *Reaper) Reap(ctx context.Context) (int, error) {
	lk, err := r.Locker.Acquire(ctx, "reaper-"+r.Pool, r.Instance, 0)
	var busy *lock.BusyError
	if errors.As(err, &busy) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer lk.Release()
	q := (&api.QueryOptions{}).WithContext(ctx)
	entries, _, err := r.Client.Catalog().Service(r.Pool, "", q)
	if err != nil {
		return 0, err
	}
	// One listing of the live keys, not a read per instance.
	keys, _, err := r.Client.KV().Keys(protocol.ConsulLivePrefix, "", q)
	if err != nil {
		return 0, err
	}
	live := map[string]bool{}
	for _, k := range keys {
		live[k] = true
	}
	missing, n := map[string]bool{}, 0
	for _, e := range entries {
		key := e.ServiceMeta[protocol.ConsulMetaLiveness]
		if key == "" || e.NodeMeta[nodeMetaInstance] != e.ServiceID {
			continue // an agent's registration, or not a sidecar's node
		}
		if live[key] {
			continue
		}
		if !r.missing[e.Node] {
			missing[e.Node] = true // once may be a restart taking its key back
			continue
		}
		if _, err := r.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: e.Node}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			return n, err
		}
		r.Log.Info("removed the registration of a dead instance", zap.String("node", e.Node), zap.String("instance", e.ServiceID))
		n++
	}
	r.missing = missing
	return n, nil
}
