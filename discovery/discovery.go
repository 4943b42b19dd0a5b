// Package discovery learns CLI instances and emits them as immutable model.Fleet
// values: static pools straight from the config, Consul pools from two blocking
// query loops per pool — membership and health apart — and, for instances
// registered through the catalog, whose checks no agent expires, one blocking
// query on the liveness keys their sidecars' sessions hold. It never imports xds;
// the two meet only through model.Fleet.
//
// Why two loops: Consul's health endpoint for a service answers every instance
// with its node and every check on any change, 2.6 MB at 1,000 instances, and a
// health flip is by far the most frequent change. The catalog's answer for the
// service changes only with membership (registrations, meta, addresses); on such
// a change discovery reads the health endpoint once, in full, for a consistent
// view. Between them a blocking query on the checks alone (the service's checks
// and the nodes' own, 450 KB) carries health flips, applied to the members last
// read (WithChecks).
package discovery

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/model"
	"github.com/climesh/climesh/periodic"
	"github.com/climesh/climesh/protocol"
)

// HealthAPI is the part of Consul's health API discovery uses: *api.Health
// satisfies it.
type HealthAPI interface {
	Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
	State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error)
}

// CatalogAPI is the part of Consul's catalog API discovery uses: *api.Catalog
// satisfies it.
type CatalogAPI interface {
	Service(service, tag string, q *api.QueryOptions) ([]*api.CatalogService, *api.QueryMeta, error)
}

// KVAPI is the part of Consul's KV API discovery uses: *api.KV satisfies it.
type KVAPI interface {
	Keys(prefix, separator string, q *api.QueryOptions) ([]string, *api.QueryMeta, error)
}

// Source is where discovery reads Consul: client.Health(), client.Catalog() and
// client.KV(). Health and Catalog may be nil when no pool uses Consul; without KV
// no catalog-registered instance is vouched for (they are all unhealthy).
type Source struct {
	Health  HealthAPI
	Catalog CatalogAPI
	KV      KVAPI
}

// ConsulSource makes the Consul client discovery reads with (the CONSUL_*
// environment variables — token, TLS — apply; c.Address wins over
// CONSUL_HTTP_ADDR). A blocking query returns within c.WaitTime (plus
// Consul's jitter of up to WaitTime/16) when nothing changes; one that takes
// longer went to a server that stopped answering, or a connection that went
// dark. The client ends it, so that the watch starts over (and backs off)
// instead of waiting forever.
func ConsulSource(c config.Consul) (Source, error) {
	cc := api.DefaultConfig()
	cc.Address = c.Address
	if c.Datacenter != "" {
		cc.Datacenter = c.Datacenter
	}
	httpClient, err := api.NewHttpClient(cc.Transport, cc.TLSConfig)
	if err != nil {
		return Source{}, fmt.Errorf("consul client for %s: %w", c.Address, err)
	}
	httpClient.Timeout = c.WaitTime + c.WaitTime/16 + 10*time.Second
	cc.HttpClient = httpClient
	client, err := api.NewClient(cc)
	if err != nil {
		return Source{}, fmt.Errorf("consul client for %s: %w", c.Address, err)
	}
	return Source{Health: client.Health(), Catalog: client.Catalog(), KV: client.KV()}, nil
}

// Discovery holds the current Fleet and tells a consumer when it changed.
type Discovery struct {
	log     *zap.Logger
	src     Source
	consul  config.Consul
	watched []config.Pool
	metrics *Metrics

	mu      sync.Mutex
	fleet   model.Fleet
	members map[string]*members         // each Consul pool's last full read
	checks  map[string]*checksView      // each Consul pool's last view of the checks
	read    map[string][]model.Instance // each Consul pool as Consul last said, before liveness
	live    map[string]bool             // liveness keys that exist
	pending map[string]bool             // pools (and the liveness keys) not yet read once
	changed chan struct{}               // capacity 1: a pending change, never blocks a writer
}

// members is a pool's service entries as the health endpoint last answered in
// full, and that answer's index.
type members struct {
	entries []*api.ServiceEntry
	index   uint64
}

// checksView is the checks of a pool's service and of every node, and the
// index of the answer that listed them.
type checksView struct {
	checks api.HealthChecks
	index  uint64
}

// livenessPending is the name Ready gives the liveness keys until they were read.
const livenessPending = "liveness keys"

// Metrics are discovery's Prometheus metrics. Make them once per registry: a
// Discovery made after a config reload shares them.
type Metrics struct {
	errors    *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	instances *prometheus.GaugeVec
}

// NewMetrics registers discovery's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		errors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "climesh_discovery_errors_total", Help: "Failed Consul queries, by pool (\"liveness keys\": the query on the liveness keys).",
		}, []string{"pool"}),
		rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "climesh_discovery_rejected_instances_total", Help: "Consul instances left out because they cannot be routed to, by pool.",
		}, []string{"pool"}),
		instances: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "climesh_discovery_instances", Help: "Instances known, by pool and health.",
		}, []string{"pool", "health"}),
	}
}

// New builds a Discovery for cfg. health may be nil when no pool uses Consul. seed is
// the last fleet known (after a config reload): its pools keep serving, and count as
// read, until their first query answers.
func New(cfg *config.Config, src Source, seed model.Fleet, log *zap.Logger, m *Metrics) (*Discovery, error) {
	d := &Discovery{
		log:     log,
		src:     src,
		consul:  cfg.Consul,
		metrics: m,
		members: map[string]*members{},
		checks:  map[string]*checksView{},
		read:    map[string][]model.Instance{},
		live:    map[string]bool{},
		pending: map[string]bool{},
		changed: make(chan struct{}, 1),
	}
	var pools []model.Pool
	for _, p := range cfg.Pools {
		if p.ConsulService != "" {
			if src.Health == nil || src.Catalog == nil {
				return nil, fmt.Errorf("pool %q uses consul_service %q but no Consul client was given", p.Name, p.ConsulService)
			}
			d.watched = append(d.watched, p)
			if old, ok := seed.Pool(p.Name); ok {
				pools = append(pools, old)
			} else {
				d.pending[p.Name] = true
				pools = append(pools, model.NewPool(p.Name, nil))
			}
			continue
		}
		pools = append(pools, StaticPool(p))
	}
	if len(d.watched) > 0 && src.KV != nil {
		d.pending[livenessPending] = true
	}
	d.fleet = model.NewFleet(pools...)
	for _, p := range d.fleet.Pools() {
		d.observe(p)
	}
	d.changed <- struct{}{}
	return d, nil
}

// StaticPool turns a config pool's static instances into a model.Pool.
func StaticPool(p config.Pool) model.Pool {
	instances := make([]model.Instance, 0, len(p.Static))
	for _, s := range p.Static {
		h, _ := model.ParseHealth(s.Health) // config.Validate accepted it already
		instances = append(instances, model.Instance{
			ID: s.ID, Address: s.Address, Port: s.Port, Tags: s.Tags, Meta: s.Meta, Health: h,
		})
	}
	return model.NewPool(p.Name, instances)
}

// Changed receives a value whenever Current may have changed.
func (d *Discovery) Changed() <-chan struct{} { return d.changed }

// Current is the latest fleet.
func (d *Discovery) Current() model.Fleet {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fleet
}

// ErrNotSynced is returned by Ready until every Consul pool was read once.
var ErrNotSynced = errors.New("discovery has not read every pool yet")

// Ready reports nil once every pool was read at least once.
func (d *Discovery) Ready() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) == 0 {
		return nil
	}
	names := make([]string, 0, len(d.pending))
	for n := range d.pending {
		names = append(names, n)
	}
	slices.Sort(names)
	return fmt.Errorf("%w: waiting for %s", ErrNotSynced, strings.Join(names, ", "))
}

// Run watches every Consul pool, and the liveness keys, until ctx ends.
func (d *Discovery) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, p := range d.watched {
		wg.Go(func() { d.watch(ctx, p) })
	}
	if d.pending[livenessPending] {
		wg.Go(func() { d.watchLiveness(ctx) })
	}
	wg.Wait()
}

// setPool records what pool's health query said and publishes the pool with
// liveness applied.
func (d *Discovery) setPool(pool string, instances []model.Instance) {
	d.mu.Lock()
	d.read[pool] = instances
	delete(d.pending, pool)
	p := d.derive(pool)
	d.mu.Unlock()
	d.observe(p)
	d.notify()
}

// setLive records the liveness keys that exist and publishes every pool again.
func (d *Discovery) setLive(keys []string) {
	d.mu.Lock()
	d.live = make(map[string]bool, len(keys))
	for _, k := range keys {
		d.live[k] = true
	}
	delete(d.pending, livenessPending)
	var pools []model.Pool
	for name := range d.read {
		pools = append(pools, d.derive(name))
	}
	d.mu.Unlock()
	for _, p := range pools {
		d.observe(p)
	}
	d.notify()
}

// derive puts pool, as last read and with liveness applied, into the fleet.
// d.mu is held.
func (d *Discovery) derive(pool string) model.Pool {
	p := model.NewPool(pool, ApplyLiveness(d.read[pool], func(key string) bool { return d.live[key] }))
	d.fleet = d.fleet.WithPool(p)
	return p
}

func (d *Discovery) notify() {
	select {
	case d.changed <- struct{}{}:
	default: // a change is pending already; the reader will see this one too
	}
}

func (d *Discovery) observe(p model.Pool) {
	counts := map[model.Health]int{}
	p.Each(func(in model.Instance) { counts[in.Health]++ })
	for _, h := range []model.Health{model.Healthy, model.Draining, model.Unhealthy} {
		d.metrics.instances.WithLabelValues(p.Name, h.String()).Set(float64(counts[h]))
	}
}

// watch runs one pool's two loops: membership, and the checks between.
func (d *Discovery) watch(ctx context.Context, p config.Pool) {
	log := d.log.With(zap.String("pool", p.Name), zap.String("service", p.ConsulService))
	var wg sync.WaitGroup
	wg.Go(func() { d.watchMembers(ctx, log, p) })
	wg.Go(func() { d.watchChecks(ctx, log, p) })
	wg.Wait()
}

// watchMembers blocks on the catalog's answer for the pool's service and, each
// time it changes, reads the service's health in full.
func (d *Discovery) watchMembers(ctx context.Context, log *zap.Logger, p config.Pool) {
	d.block(ctx, log, p.Name, func(q *api.QueryOptions) (*api.QueryMeta, func(), error) {
		_, meta, err := d.src.Catalog.Service(p.ConsulService, "", q)
		if err != nil {
			return nil, nil, fmt.Errorf("catalog: %w", err)
		}
		read := (&api.QueryOptions{Datacenter: d.consul.Datacenter}).WithContext(q.Context())
		entries, full, err := d.src.Health.Service(p.ConsulService, "", false, read)
		if err != nil {
			return nil, nil, fmt.Errorf("health: %w", err)
		}
		return meta, func() { d.setMembers(log, p, entries, full.LastIndex) }, nil
	})
}

// watchChecks blocks on the checks of the pool's service and of every node, and
// applies them to the members last read.
func (d *Discovery) watchChecks(ctx context.Context, log *zap.Logger, p config.Pool) {
	filter := fmt.Sprintf("ServiceName == %s or ServiceID == \"\"", strconv.Quote(p.ConsulService))
	d.block(ctx, log, p.Name, func(q *api.QueryOptions) (*api.QueryMeta, func(), error) {
		q.Filter = filter
		checks, meta, err := d.src.Health.State(api.HealthAny, q)
		if err != nil {
			return nil, nil, fmt.Errorf("checks: %w", err)
		}
		return meta, func() { d.setChecks(log, p, checks, meta.LastIndex) }, nil
	})
}

// setMembers records a full read of a pool and publishes it, with the last
// view of the checks when that view is the newer (the two loops answer in
// either order).
//
// Indexes order the two answers: a view's index is the highest of any check in
// the datacenter, a full read's the highest of what the service's answer
// depends on. When the view's is higher, nothing the service depends on changed
// between the read and the view; when lower, the view cannot hold a change the
// read lacks. Either way the newer of the two is the one applied.
func (d *Discovery) setMembers(log *zap.Logger, p config.Pool, entries []*api.ServiceEntry, index uint64) {
	d.mu.Lock()
	d.members[p.Name] = &members{entries: entries, index: index}
	if v := d.checks[p.Name]; v != nil && v.index > index {
		entries = WithChecks(entries, v.checks)
	}
	d.mu.Unlock()
	d.setPool(p.Name, d.instances(log, p, entries))
}

// setChecks records a view of the checks and applies it to the members last
// read, unless that read is the newer or there is none yet.
func (d *Discovery) setChecks(log *zap.Logger, p config.Pool, checks api.HealthChecks, index uint64) {
	d.mu.Lock()
	d.checks[p.Name] = &checksView{checks: checks, index: index}
	m := d.members[p.Name]
	if m == nil || index < m.index {
		d.mu.Unlock()
		return
	}
	entries := WithChecks(m.entries, checks)
	d.mu.Unlock()
	d.setPool(p.Name, d.instances(log, p, entries))
}

// instances turns entries into instances, counting and logging those left out.
func (d *Discovery) instances(log *zap.Logger, p config.Pool, entries []*api.ServiceEntry) []model.Instance {
	instances, errs := InstancesFromEntries(p.ConsulService, entries)
	for _, e := range errs {
		d.metrics.rejected.WithLabelValues(p.Name).Inc()
		log.Warn("ignoring consul instance", zap.Error(e))
	}
	return instances
}

// watchLiveness runs blocking queries on the liveness keys.
func (d *Discovery) watchLiveness(ctx context.Context) {
	log := d.log.With(zap.String("prefix", protocol.ConsulLivePrefix))
	d.block(ctx, log, livenessPending, func(q *api.QueryOptions) (*api.QueryMeta, func(), error) {
		keys, meta, err := d.src.KV.Keys(protocol.ConsulLivePrefix, "", q)
		return meta, func() { d.setLive(keys) }, err
	})
}

// block runs one blocking query after another until ctx ends, and applies each
// answer that changed something. It resets its index after an error and when
// Consul's index goes backwards (a restarted or replaced server), and backs off
// with jitter on errors, keeping what it read last. what labels its metrics.
func (d *Discovery) block(ctx context.Context, log *zap.Logger, what string, query func(*api.QueryOptions) (*api.QueryMeta, func(), error)) {
	var index uint64
	failures := 0
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: d.consul.WaitTime, Datacenter: d.consul.Datacenter}).WithContext(ctx)
		meta, apply, err := query(q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.metrics.errors.WithLabelValues(what).Inc()
			// The server that answers next may be a restarted one whose index is
			// lower; a blocking query with our old index would hang there until
			// wait_time. Ask afresh.
			index = 0
			wait := Backoff(failures, d.consul.RetryMin, d.consul.RetryMax, rand.Float64)
			failures++
			log.Warn("consul query failed; keeping what was read last", zap.Error(err), zap.Int("failures", failures), zap.Duration("retry_in", wait))
			if !periodic.Sleep(ctx, wait) {
				return
			}
			continue
		}
		if failures > 0 {
			log.Info("consul query recovered", zap.Int("failures", failures))
		}
		failures = 0
		if meta.LastIndex == index && index != 0 {
			continue // the wait timed out with no change
		}
		if meta.LastIndex < index {
			log.Info("consul index went backwards; starting over", zap.Uint64("was", index), zap.Uint64("now", meta.LastIndex))
		}
		index = meta.LastIndex
		apply()
	}
}

// Backoff is the wait before retry number attempt (from 0): doubling from min up to
// max, with the upper half jittered so that many watchers do not retry in step.
func Backoff(attempt int, lo, hi time.Duration, random func() float64) time.Duration {
	d := lo
	for i := 0; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + time.Duration(random()*float64(d/2))
}
