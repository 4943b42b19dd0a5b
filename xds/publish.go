package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/model"
)

// Publisher turns Translate results into go-control-plane snapshots, one per node
// group, and watches what Envoy does with them: ACKs, NACKs and push latency.
type Publisher struct {
	log     *zap.Logger
	cache   cachev3.SnapshotCache
	metrics *publishMetrics
	pacer   *pacer // nil: large responses are not paced

	// routing is read by go-control-plane's node hash, which may run while the
	// cache holds its own lock: it never waits on mu.
	routing atomic.Pointer[groupRouting]

	mu      sync.Mutex
	current map[string]*published // by node group
	streams map[streamKey]*streamState
	nodes   map[string]*NodeStatus // by node id
	// live is each node's newest stream: an Envoy that reconnects opens its new
	// stream before the server sees the old one close, and only the close of
	// the newest stream disconnects the node.
	live map[string]streamKey
}

type groupRouting struct {
	defaultGroup string
	groups       map[string]bool
}

// published is the snapshot a group has now, and when each type last changed.
type published struct {
	resources *Resources
	versions  Versions
	setAt     map[string]time.Time // by type URL
}

// streamKey: go-control-plane numbers state-of-the-world and delta streams apart,
// both from 1.
type streamKey struct {
	delta bool
	id    int64
}

type streamState struct {
	node, group string
	sent        map[string]sentResponse // by nonce
	grant       *grant                  // the pacer's room this stream holds
}

type sentResponse struct {
	typeURL, version string
	setAt            time.Time
}

// NodeStatus is what one Envoy last did with each type.
type NodeStatus struct {
	NodeID    string            `json:"node_id"`
	Group     string            `json:"node_group"`
	Acked     map[string]string `json:"acked_versions"` // type URL -> version
	LastNACK  string            `json:"last_nack,omitempty"`
	NACKType  string            `json:"last_nack_type,omitempty"`
	NACKAt    time.Time         `json:"last_nack_at,omitzero"`
	Connected bool              `json:"connected"`
}

type publishMetrics struct {
	pushes, acks   *prometheus.CounterVec
	nacks          *prometheus.CounterVec
	rejected       prometheus.Counter
	unchanged      prometheus.Counter
	latency        *prometheus.HistogramVec
	translateTime  prometheus.Histogram
	connectedNodes prometheus.Gauge
	pacedBytes     prometheus.Gauge
	paceWait       prometheus.Histogram
}

func newPublishMetrics(reg prometheus.Registerer) *publishMetrics {
	f := promauto.With(reg)
	return &publishMetrics{
		pushes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "climesh_xds_pushes_total", Help: "New versions set in the snapshot cache, by node group and type.",
		}, []string{"node_group", "type"}),
		acks: f.NewCounterVec(prometheus.CounterOpts{
			Name: "climesh_xds_acks_total", Help: "Responses Envoy accepted, by type.",
		}, []string{"type"}),
		nacks: f.NewCounterVec(prometheus.CounterOpts{
			Name: "climesh_xds_nacks_total", Help: "Responses Envoy rejected, by node and type (the error is logged and shown on /debug/xds).",
		}, []string{"node_id", "type"}),
		rejected: f.NewCounter(prometheus.CounterOpts{
			Name: "climesh_xds_rejected_snapshots_total", Help: "Translations that failed validation or consistency; the last good snapshot kept serving.",
		}),
		unchanged: f.NewCounter(prometheus.CounterOpts{
			Name: "climesh_xds_unchanged_total", Help: "Updates whose content equalled what was published: nothing pushed.",
		}),
		latency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "climesh_xds_push_latency_seconds", Help: "From setting a snapshot to Envoy's ACK of that version, by type.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"type"}),
		translateTime: f.NewHistogram(prometheus.HistogramOpts{
			Name: "climesh_xds_translate_seconds", Help: "Translate, validate and snapshot time per update.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		connectedNodes: f.NewGauge(prometheus.GaugeOpts{
			Name: "climesh_xds_connected_streams", Help: "Open xDS streams.",
		}),
		pacedBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "climesh_xds_unanswered_bytes", Help: "Bytes of large responses sent and not yet ACKed or NACKed (bounded by server.push_window_bytes).",
		}),
		paceWait: f.NewHistogram(prometheus.HistogramOpts{
			Name: "climesh_xds_push_wait_seconds", Help: "How long a large response waited for room in server.push_window_bytes.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
}

// NewPublisher makes a Publisher with its own ADS snapshot cache.
func NewPublisher(log *zap.Logger, reg prometheus.Registerer) *Publisher {
	p := &Publisher{
		log:     log,
		metrics: newPublishMetrics(reg),
		current: map[string]*published{},
		streams: map[streamKey]*streamState{},
		nodes:   map[string]*NodeStatus{},
		live:    map[string]streamKey{},
	}
	p.cache = cachev3.NewSnapshotCache(true, nodeHash{p}, quietLogger{log.Sugar()})
	return p
}

// Server returns the go-control-plane server (ADS, state of the world and delta)
// over this publisher's cache, with its callbacks wired in. pushWindow bounds
// the bytes of large responses sent and not yet answered across all streams
// (pacer); 0 leaves them unbounded.
func (p *Publisher) Server(ctx context.Context, pushWindow int64) serverv3.Server {
	p.pacer = newPacer(ctx, pushWindow)
	return serverv3.NewServer(ctx, p.cache, p.callbacks())
}

// ErrRejected wraps a translation the publisher refused to set.
var ErrRejected = errors.New("snapshot rejected; the last good one keeps serving")

// Update translates cfg and fleet and sets a snapshot for every node group whose
// content changed. On any error nothing is set and the previous snapshots stay.
func (p *Publisher) Update(ctx context.Context, cfg *config.Config, fleet model.Fleet) error {
	start := time.Now()
	groups, err := Translate(cfg, fleet)
	if err != nil {
		p.metrics.rejected.Inc()
		return fmt.Errorf("%w: translate: %v", ErrRejected, err)
	}
	type pending struct {
		group    string
		snap     *encodedSnapshot
		versions Versions
		res      *Resources
	}
	var todo []pending
	for _, group := range slices.Sorted(maps.Keys(groups)) {
		res := groups[group]
		snap, versions, err := buildSnapshot(res)
		if err != nil {
			p.metrics.rejected.Inc()
			return fmt.Errorf("%w: node group %q: %v", ErrRejected, group, err)
		}
		todo = append(todo, pending{group, snap, versions, res})
	}
	p.metrics.translateTime.Observe(time.Since(start).Seconds())

	routing := &groupRouting{defaultGroup: cfg.Server.DefaultNodeGroup, groups: map[string]bool{}}
	for _, t := range todo {
		routing.groups[t.group] = true
	}
	p.routing.Store(routing)
	for _, t := range todo {
		p.mu.Lock()
		old := p.current[t.group]
		p.mu.Unlock()
		if old != nil && old.versions == t.versions {
			p.metrics.unchanged.Inc()
			continue
		}
		now := time.Now()
		next := &published{resources: t.res, versions: t.versions, setAt: map[string]time.Time{}}
		for typeURL, v := range versionsByType(t.versions) {
			if old != nil && versionsByType(old.versions)[typeURL] == v {
				next.setAt[typeURL] = old.setAt[typeURL]
				continue
			}
			next.setAt[typeURL] = now
			p.metrics.pushes.WithLabelValues(t.group, shortType(typeURL)).Inc()
		}
		// Recorded before SetSnapshot, which may send at once: the response
		// callback looks up when its version was set.
		p.mu.Lock()
		p.current[t.group] = next
		p.mu.Unlock()
		if err := p.cache.SetSnapshot(ctx, t.group, t.snap); err != nil {
			return fmt.Errorf("set snapshot for node group %q: %w", t.group, err)
		}
		p.log.Info("published", zap.String("node_group", t.group), zap.String("version", t.versions.Endpoints+"/"+t.versions.Routes),
			zap.Int("clusters", len(t.res.Clusters)), zap.Int("listeners", len(t.res.Listeners)))
	}
	return nil
}

// buildSnapshot validates every resource and the snapshot's consistency, and
// encodes each resource once for every stream that will receive it.
func buildSnapshot(r *Resources) (*encodedSnapshot, Versions, error) {
	wire, err := r.wireForm()
	if err != nil {
		return nil, Versions{}, err
	}
	versions := wire.versions()
	var errs []error
	clusters := validated(r.Clusters, (*clusterv3.Cluster).GetName, &errs)
	endpoints := validated(r.Endpoints, (*endpointv3.ClusterLoadAssignment).GetClusterName, &errs)
	listeners := validated(r.Listeners, (*listenerv3.Listener).GetName, &errs)
	routes := validated(r.Routes, (*routev3.RouteConfiguration).GetName, &errs)
	secrets := validated(r.Secrets, (*tlsv3.Secret).GetName, &errs)
	if len(errs) > 0 {
		return nil, versions, errors.Join(errs...)
	}
	snap := &cachev3.Snapshot{}
	snap.Resources[types.Cluster] = cachev3.NewResources(versions.Clusters, clusters)
	snap.Resources[types.Endpoint] = cachev3.NewResources(versions.Endpoints, endpoints)
	snap.Resources[types.Listener] = cachev3.NewResources(versions.Listeners, listeners)
	snap.Resources[types.Route] = cachev3.NewResources(versions.Routes, routes)
	snap.Resources[types.Secret] = cachev3.NewResources(versions.Secrets, secrets)
	if err := snap.Consistent(); err != nil {
		return nil, versions, fmt.Errorf("inconsistent snapshot: %w", err)
	}
	return encodeSnapshot(r, wire, versions), versions, nil
}

// validated checks every resource against Envoy's validation rules (the one
// place climesh validates) and returns them as cache resources.
func validated[T interface {
	types.Resource
	ValidateAll() error
}](items []T, name func(T) string, errs *[]error) []types.Resource {
	out := make([]types.Resource, 0, len(items))
	for _, it := range items {
		if err := it.ValidateAll(); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", name(it), err))
		}
		out = append(out, it)
	}
	return out
}

func versionsByType(v Versions) map[string]string {
	return map[string]string{
		resourcev3.ClusterType:  v.Clusters,
		resourcev3.EndpointType: v.Endpoints,
		resourcev3.ListenerType: v.Listeners,
		resourcev3.RouteType:    v.Routes,
		resourcev3.SecretType:   v.Secrets,
	}
}

// shortType is a type URL's last element, for metric labels.
func shortType(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoint"
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route"
	case resourcev3.SecretType:
		return "secret"
	}
	return "other"
}

// Ready reports whether any snapshot was set.
func (p *Publisher) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.current) > 0
}

// Snapshot returns what a node group receives now, and its versions.
func (p *Publisher) Snapshot(group string) (*Resources, Versions, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur, ok := p.current[group]
	if !ok {
		return nil, Versions{}, false
	}
	return cur.resources, cur.versions, true
}

// Groups lists the node groups published to.
func (p *Publisher) Groups() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.current))
}

// Nodes returns a copy of every Envoy's status, sorted by node id.
func (p *Publisher) Nodes() []NodeStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]NodeStatus, 0, len(p.nodes))
	for _, id := range slices.Sorted(maps.Keys(p.nodes)) {
		n := *p.nodes[id]
		n.Acked = maps.Clone(n.Acked)
		out = append(out, n)
	}
	return out
}

// groupOf maps an Envoy node to its node group: its --service-cluster when that
// names a group, else the default group.
func (p *Publisher) groupOf(node *corev3.Node) string {
	r := p.routing.Load()
	if r == nil {
		return node.GetCluster()
	}
	if c := node.GetCluster(); r.groups[c] {
		return c
	}
	return r.defaultGroup
}

type nodeHash struct{ p *Publisher }

func (h nodeHash) ID(node *corev3.Node) string { return h.p.groupOf(node) }

// callbacks see every request and response on every stream. A request that carries
// the nonce of a response we sent is that response's ACK, or its NACK when it has
// error_detail; both protocols are handled alike.
func (p *Publisher) callbacks() serverv3.CallbackFuncs {
	open := func(delta bool) func(context.Context, int64, string) error {
		return func(_ context.Context, id int64, _ string) error {
			p.mu.Lock()
			p.streams[streamKey{delta, id}] = &streamState{sent: map[string]sentResponse{}}
			p.mu.Unlock()
			p.metrics.connectedNodes.Inc()
			return nil
		}
	}
	closed := func(delta bool) func(int64, *corev3.Node) {
		return func(id int64, _ *corev3.Node) {
			p.mu.Lock()
			key := streamKey{delta, id}
			if s := p.streams[key]; s != nil {
				p.dropGrant(s)
			}
			if s := p.streams[key]; s != nil && p.live[s.node] == key {
				if n := p.nodes[s.node]; n != nil {
					n.Connected = false
				}
				delete(p.live, s.node)
			}
			delete(p.streams, streamKey{delta, id})
			p.mu.Unlock()
			p.metrics.connectedNodes.Dec()
		}
	}
	return serverv3.CallbackFuncs{
		StreamOpenFunc:        open(false),
		DeltaStreamOpenFunc:   open(true),
		StreamClosedFunc:      closed(false),
		DeltaStreamClosedFunc: closed(true),
		StreamRequestFunc: func(id int64, req *discoveryv3.DiscoveryRequest) error {
			rejected := p.onRequest(streamKey{false, id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail())
			if rejected != "" {
				// Envoy NACKs with the version it still runs; the cache would answer
				// at once with the version it just rejected, and Envoy would reject
				// it again, in a tight loop. Mark the rejected version as the one the
				// client has: the cache then waits for a new snapshot.
				req.VersionInfo = rejected
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			p.onRequest(streamKey{true, id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail())
			return nil
		},
		// go-control-plane calls these just before it sends, in the stream's
		// goroutine: pace holds the send there until the response has room.
		StreamResponseFunc: func(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			key := streamKey{false, id}
			p.onResponse(key, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
			p.pace(key, resp.GetNonce(), proto.Size(resp))
		},
		StreamDeltaResponseFunc: func(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			key := streamKey{true, id}
			p.onResponse(key, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
			p.pace(key, resp.GetNonce(), proto.Size(resp))
		},
	}
}

// onRequest records an ACK or NACK; for a NACK it returns the rejected version.
func (p *Publisher) onRequest(key streamKey, node *corev3.Node, typeURL, nonce string, errDetail *status.Status) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.streams[key]
	if s == nil {
		return ""
	}
	if node.GetId() != "" && s.node == "" {
		// Envoy may send its node only on a stream's first request.
		s.node, s.group = node.GetId(), p.groupOf(node)
		n := p.nodes[s.node]
		if n == nil {
			n = &NodeStatus{NodeID: s.node, Acked: map[string]string{}}
			p.nodes[s.node] = n
		}
		n.Group, n.Connected = s.group, true
		p.live[s.node] = key
	}
	if nonce == "" {
		return "" // a subscription, not an answer
	}
	p.answered(s, nonce)
	sent, ok := s.sent[nonce]
	if !ok {
		return "" // a response from before this process, or already answered
	}
	delete(s.sent, nonce)
	n := p.nodes[s.node]
	if errDetail != nil {
		errMsg := errDetail.GetMessage()
		p.metrics.nacks.WithLabelValues(s.node, shortType(typeURL)).Inc()
		level := zap.ErrorLevel
		if n != nil && n.LastNACK == errMsg && n.NACKType == typeURL {
			level = zap.DebugLevel // the same rejection again
		}
		p.log.Log(level, "envoy rejected config (NACK); it keeps its previous config",
			zap.String("node_id", s.node), zap.String("node_group", s.group), zap.String("type_url", typeURL),
			zap.String("version", sent.version), zap.String("error", errMsg))
		if n != nil {
			n.LastNACK, n.NACKType, n.NACKAt = errMsg, typeURL, time.Now()
		}
		return sent.version
	}
	p.metrics.acks.WithLabelValues(shortType(typeURL)).Inc()
	if !sent.setAt.IsZero() {
		p.metrics.latency.WithLabelValues(shortType(typeURL)).Observe(time.Since(sent.setAt).Seconds())
	}
	if n != nil {
		n.Acked[typeURL] = sent.version
	}
	return ""
}

func (p *Publisher) onResponse(key streamKey, typeURL, nonce, version string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.streams[key]
	if s == nil {
		return
	}
	var setAt time.Time
	if cur := p.current[s.group]; cur != nil {
		setAt = cur.setAt[typeURL]
	}
	s.sent[nonce] = sentResponse{typeURL: typeURL, version: version, setAt: setAt}
}

// quietLogger hands go-control-plane's chatty Info lines to Debug.
type quietLogger struct{ s *zap.SugaredLogger }

func (l quietLogger) Debugf(f string, a ...any) { l.s.Debugf(f, a...) }
func (l quietLogger) Infof(f string, a ...any)  { l.s.Debugf(f, a...) }
func (l quietLogger) Warnf(f string, a ...any)  { l.s.Warnf(f, a...) }
func (l quietLogger) Errorf(f string, a ...any) { l.s.Errorf(f, a...) }
