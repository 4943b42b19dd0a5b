package discovery

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/model"
)

func entry(id, addr string, port int, meta map[string]string, checks ...*api.HealthCheck) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node:    &api.Node{Node: "node-1", Address: "127.0.0.9"},
		Service: &api.AgentService{ID: id, Service: "cli", Address: addr, Port: port, Meta: meta},
		Checks:  checks,
	}
}

func check(id, status string) *api.HealthCheck { return &api.HealthCheck{CheckID: id, Status: status} }

func TestInstancesFromEntries(t *testing.T) {
	cases := map[string]struct {
		entry  *api.ServiceEntry
		health model.Health
		addr   string
		err    string
	}{
		"passing":             {entry: entry("a", "127.0.0.1", 1, nil, check("serfHealth", "passing"), check("service:a", "passing")), health: model.Healthy, addr: "127.0.0.1"},
		"warning is healthy":  {entry: entry("a", "127.0.0.1", 1, nil, check("service:a", "warning")), health: model.Healthy, addr: "127.0.0.1"},
		"critical check":      {entry: entry("a", "127.0.0.1", 1, nil, check("service:a", "critical")), health: model.Unhealthy, addr: "127.0.0.1"},
		"service maintenance": {entry: entry("a", "127.0.0.1", 1, nil, check("_service_maintenance:a", "critical"), check("service:a", "passing")), health: model.Draining, addr: "127.0.0.1"},
		"node maintenance":    {entry: entry("a", "127.0.0.1", 1, nil, check("_node_maintenance", "critical")), health: model.Draining, addr: "127.0.0.1"},
		"draining meta":       {entry: entry("a", "127.0.0.1", 1, map[string]string{"draining": "true"}), health: model.Draining, addr: "127.0.0.1"},
		"critical beats maintenance": {entry: entry("a", "127.0.0.1", 1, nil, check("_node_maintenance", "critical"), check("service:a", "critical")),
			health: model.Unhealthy, addr: "127.0.0.1"},
		"node address fallback": {entry: entry("a", "", 1, nil), health: model.Healthy, addr: "127.0.0.9"},
		"bad address":           {entry: entry("a", "cli.internal", 1, nil), err: `instance "a": address "cli.internal" is not an IP address`},
		"bad port":              {entry: entry("a", "127.0.0.1", 0, nil), err: `instance "a": port 0 out of range`},
		"no service":            {entry: &api.ServiceEntry{}, err: "entry without a service"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, errs := InstancesFromEntries("cli", []*api.ServiceEntry{tc.entry})
			if tc.err != "" {
				if len(got) != 0 || len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.err) {
					t.Fatalf("got %v, errors %v; want one error containing %q", got, errs, tc.err)
				}
				return
			}
			if len(errs) != 0 || len(got) != 1 {
				t.Fatalf("got %v, errors %v", got, errs)
			}
			if got[0].Health != tc.health || got[0].Address != tc.addr {
				t.Fatalf("got health %v address %s, want %v %s", got[0].Health, got[0].Address, tc.health, tc.addr)
			}
		})
	}
}

func TestInstancesFromEntriesQualifiesDuplicateIDs(t *testing.T) {
	a, b := entry("cli-1", "127.0.0.1", 1, nil), entry("cli-1", "127.0.0.2", 1, nil)
	b.Node = &api.Node{Node: "node-2"}
	got, errs := InstancesFromEntries("cli", []*api.ServiceEntry{a, b})
	if len(errs) != 0 || len(got) != 2 || got[0].ID != "node-1/cli-1" || got[1].ID != "node-2/cli-1" {
		t.Fatalf("got %+v, %v", got, errs)
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := 100*time.Millisecond, time.Second
	for attempt, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		if got := Backoff(attempt, lo, hi, func() float64 { return 1 }); got != want {
			t.Errorf("attempt %d: most %v, want %v", attempt, got, want)
		}
		if got := Backoff(attempt, lo, hi, func() float64 { return 0 }); got != want/2 {
			t.Errorf("attempt %d: least %v, want %v", attempt, got, want/2)
		}
	}
}

func TestCoalesce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		in := make(chan struct{})
		out := Coalesce(ctx, in, 10*time.Millisecond, 50*time.Millisecond)

		// A burst of 5 signals 2ms apart fires once, quiet after the last one.
		start := time.Now()
		for range 5 {
			in <- struct{}{}
			time.Sleep(2 * time.Millisecond)
		}
		<-out
		if got := time.Since(start); got != 18*time.Millisecond {
			t.Fatalf("burst fired after %v, want 18ms (last signal + quiet)", got)
		}
		synctest.Wait()
		if len(out) != 0 {
			t.Fatal("one burst fired twice")
		}

		// A signal every 5ms never goes quiet: max delay fires.
		start = time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 20 {
				in <- struct{}{}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		<-out
		if got := time.Since(start); got != 50*time.Millisecond {
			t.Fatalf("steady stream fired after %v, want the 50ms max delay", got)
		}
		<-done
	})
}

// fakeConsul is Consul for one service. Its catalog answers queued results in
// order, then blocks until the context ends; the health endpoint answers the
// entries of the catalog's last answer; the checks query answers each view sent
// on views, blocking until one comes or the context ends.
type fakeConsul struct {
	mu      sync.Mutex
	results []fakeResult
	current fakeResult
	indexes []uint64 // WaitIndex of each catalog call
	filters []string // Filter of each checks query
	views   chan fakeView
	next    chan fakeResult // once results are used up, a catalog answer each (nil: none)
}

type fakeView struct {
	checks api.HealthChecks
	index  uint64
}

func (f *fakeConsul) source() Source { return Source{Health: fakeHealth{f}, Catalog: fakeCatalog{f}} }

type fakeCatalog struct{ f *fakeConsul }
type fakeHealth struct{ f *fakeConsul }

type fakeResult struct {
	entries []*api.ServiceEntry
	index   uint64
	err     error
}

func (c fakeCatalog) Service(_, _ string, q *api.QueryOptions) ([]*api.CatalogService, *api.QueryMeta, error) {
	f := c.f
	f.mu.Lock()
	f.indexes = append(f.indexes, q.WaitIndex)
	var r fakeResult
	if len(f.results) == 0 {
		f.mu.Unlock()
		select {
		case r = <-f.next:
		case <-q.Context().Done():
			return nil, nil, q.Context().Err()
		}
		f.mu.Lock()
	} else {
		r = f.results[0]
		f.results = f.results[1:]
	}
	if r.err == nil {
		f.current = r
	}
	f.mu.Unlock()
	return nil, &api.QueryMeta{LastIndex: r.index}, r.err
}

func (h fakeHealth) Service(_, _ string, _ bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	if q.WaitIndex != 0 {
		return nil, nil, errors.New("the full read must not block")
	}
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return h.f.current.entries, &api.QueryMeta{LastIndex: h.f.current.index}, nil
}

func (h fakeHealth) State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
	if state != api.HealthAny {
		return nil, nil, errors.New("checks of every state are wanted")
	}
	h.f.mu.Lock()
	h.f.filters = append(h.f.filters, q.Filter)
	h.f.mu.Unlock()
	select {
	case v := <-h.f.views:
		return v.checks, &api.QueryMeta{LastIndex: v.index}, nil
	case <-q.Context().Done():
		return nil, nil, q.Context().Err()
	}
}

func testConfig(t *testing.T) *config.Config {
	t.Helper()
	c, err := config.Load([]byte(`
consul: {retry_min: 100ms, retry_max: 1s}
listeners: [{name: edge, port: 10000, routes: [{pool: cli}]}]
pools:
  - name: cli
    consul_service: cli
  - name: fixed
    static: [{id: s1, address: 127.0.0.1, port: 9000}]
`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestWatchKeepsLastFleetAndResetsIndex(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeConsul{results: []fakeResult{
			{err: errors.New("connection refused")},
			{entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 1, nil)}, index: 10},
			{err: errors.New("connection refused")},                                                                    // Consul restarts
			{entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 1, nil), entry("b", "127.0.0.1", 2, nil)}, index: 3}, // with a lower index
			{entries: []*api.ServiceEntry{entry("b", "127.0.0.1", 2, nil)}, index: 4},
			{entries: []*api.ServiceEntry{entry("b", "127.0.0.1", 2, nil)}, index: 2}, // a replaced server: backwards, no error
		}}
		d, err := New(testConfig(t), f.source(), model.Fleet{}, zap.NewNop(), NewMetrics(prometheus.NewRegistry()))
		if err != nil {
			t.Fatal(err)
		}
		if !errors.Is(d.Ready(), ErrNotSynced) || !strings.Contains(d.Ready().Error(), "cli") {
			t.Fatalf("ready before the first answer: %v", d.Ready())
		}
		if p, _ := d.Current().Pool("fixed"); p.Len() != 1 {
			t.Fatal("static pool missing before consul answered")
		}
		ctx, cancel := context.WithCancel(t.Context())
		go d.Run(ctx)
		time.Sleep(time.Minute) // fake time: lets both backoffs pass
		synctest.Wait()
		if err := d.Ready(); err != nil {
			t.Fatalf("not ready after consul answered: %v", err)
		}
		p, _ := d.Current().Pool("cli")
		if got := p.Instances(); len(got) != 1 || got[0].ID != "b" {
			t.Fatalf("final pool %+v, want only b", got)
		}
		cancel()
		f.mu.Lock()
		defer f.mu.Unlock()
		// 0 (fails), 0 -> 10, 10 (fails: reset), 0 -> 3, 3 -> 4, 4 -> 2 (backwards), then blocks at 2.
		want := []uint64{0, 0, 10, 0, 3, 4, 2}
		if len(f.indexes) != len(want) {
			t.Fatalf("wait indexes %v, want %v", f.indexes, want)
		}
		for i := range want {
			if f.indexes[i] != want[i] {
				t.Fatalf("wait indexes %v, want %v", f.indexes, want)
			}
		}
	})
}

func TestNewSeedsConsulPoolsFromTheLastFleet(t *testing.T) {
	seed := model.NewFleet(model.NewPool("cli", []model.Instance{{ID: "old", Address: "127.0.0.1", Port: 1}}))
	d, err := New(testConfig(t), (&fakeConsul{}).source(), seed, zap.NewNop(), NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := d.Current().Pool("cli"); p.Len() != 1 {
		t.Fatal("a reload dropped the last known instances")
	}
	if err := d.Ready(); err != nil {
		t.Fatalf("a seeded pool is not ready: %v", err)
	}
	if _, err := New(testConfig(t), Source{}, seed, zap.NewNop(), NewMetrics(prometheus.NewRegistry())); err == nil || !strings.Contains(err.Error(), `pool "cli"`) {
		t.Fatalf("no Consul client and a consul pool: %v", err)
	}
}

func TestApplyLiveness(t *testing.T) {
	in := []model.Instance{
		{ID: "agent", Health: model.Healthy},
		{ID: "alive", Health: model.Healthy, Meta: map[string]string{"climesh-liveness": "climesh/live/cli/alive"}},
		{ID: "dead", Health: model.Healthy, Meta: map[string]string{"climesh-liveness": "climesh/live/cli/dead"}},
		{ID: "draining", Health: model.Draining, Meta: map[string]string{"climesh-liveness": "climesh/live/cli/draining"}},
		{ID: "elsewhere", Health: model.Healthy, Meta: map[string]string{"climesh-liveness": "other/cli/elsewhere"}},
	}
	live := map[string]bool{"climesh/live/cli/alive": true, "climesh/live/cli/draining": true, "other/cli/elsewhere": true}
	got := ApplyLiveness(in, func(k string) bool { return live[k] })
	want := map[string]model.Health{"agent": model.Healthy, "alive": model.Healthy, "dead": model.Unhealthy,
		"draining": model.Draining, "elsewhere": model.Unhealthy}
	for _, g := range got {
		if g.Health != want[g.ID] {
			t.Errorf("%s: %v, want %v", g.ID, g.Health, want[g.ID])
		}
	}
	if in[2].Health != model.Healthy {
		t.Error("ApplyLiveness changed its input")
	}
}

// fakeKV answers each key list sent on next, blocking until one comes or the
// context ends.
type fakeKV struct {
	next  chan []string
	index uint64
}

func (f *fakeKV) Keys(prefix, _ string, q *api.QueryOptions) ([]string, *api.QueryMeta, error) {
	select {
	case keys := <-f.next:
		f.index++
		for _, k := range keys {
			if !strings.HasPrefix(k, prefix) {
				return nil, nil, errors.New("key outside the prefix asked for")
			}
		}
		return keys, &api.QueryMeta{LastIndex: f.index}, nil
	case <-q.Context().Done():
		return nil, nil, q.Context().Err()
	}
}

// A catalog-registered instance is routed only while its liveness key exists;
// discovery is not ready until it read the keys once.
func TestLivenessKeysGateCatalogInstances(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		meta := map[string]string{"climesh-liveness": "climesh/live/cli/a"}
		h := &fakeConsul{results: []fakeResult{{entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 1, meta)}, index: 5}}}
		kv := &fakeKV{next: make(chan []string)}
		src := h.source()
		src.KV = kv
		d := runDiscovery(t, src)
		if err := d.Ready(); !errors.Is(err, ErrNotSynced) || !strings.Contains(err.Error(), "liveness keys") {
			t.Fatalf("ready before the liveness keys were read: %v", err)
		}
		for _, step := range []struct {
			keys []string
			want model.Health
		}{
			{[]string{"climesh/live/cli/a"}, model.Healthy},
			{[]string{"climesh/live/cli/b"}, model.Unhealthy}, // its session expired
			{[]string{"climesh/live/cli/a", "climesh/live/cli/b"}, model.Healthy},
		} {
			kv.next <- step.keys
			synctest.Wait()
			if err := d.Ready(); err != nil {
				t.Fatalf("keys %v: not ready: %v", step.keys, err)
			}
			p, _ := d.Current().Pool("cli")
			if got := p.Instances()[0].Health; got != step.want {
				t.Fatalf("keys %v: %v, want %v", step.keys, got, step.want)
			}
		}
	})
}

// runDiscovery starts a Discovery of testConfig on src until the test ends, and
// waits (in a synctest bubble) until it blocks.
func runDiscovery(t *testing.T, src Source) *Discovery {
	t.Helper()
	d, err := New(testConfig(t), src, model.Fleet{}, zap.NewNop(), NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	go d.Run(ctx)
	synctest.Wait()
	return d
}

func TestWithChecks(t *testing.T) {
	a1 := entry("a", "127.0.0.1", 1, nil, check("stale", "critical"))
	a2 := entry("a", "127.0.0.2", 1, nil)
	a2.Node = &api.Node{Node: "node-2"}
	checks := api.HealthChecks{
		{Node: "node-1", CheckID: "serfHealth", Status: "passing"},
		{Node: "node-1", CheckID: "service:a", ServiceID: "a", ServiceName: "cli", Status: "passing"},
		{Node: "node-2", CheckID: "service:a", ServiceID: "a", ServiceName: "cli", Status: "critical"},
		{Node: "node-2", CheckID: "_node_maintenance", Status: "critical"},
		{Node: "node-3", CheckID: "serfHealth", Status: "critical"},
		nil,
	}
	got := WithChecks([]*api.ServiceEntry{a1, a2, {}}, checks)
	ids := func(e *api.ServiceEntry) []string {
		var out []string
		for _, c := range e.Checks {
			out = append(out, c.Node+"/"+c.CheckID+"="+c.Status)
		}
		return out
	}
	if want := []string{"node-1/serfHealth=passing", "node-1/service:a=passing"}; !slices.Equal(ids(got[0]), want) {
		t.Errorf("a on node-1: %v, want %v", ids(got[0]), want)
	}
	if want := []string{"node-2/_node_maintenance=critical", "node-2/service:a=critical"}; !slices.Equal(ids(got[1]), want) {
		t.Errorf("a on node-2: %v, want %v", ids(got[1]), want)
	}
	if got[2].Service != nil || len(got[2].Checks) != 0 {
		t.Errorf("an entry without a service: %+v", got[2])
	}
	if len(a1.Checks) != 1 || a1.Checks[0].CheckID != "stale" {
		t.Error("WithChecks changed its input")
	}
	instances, _ := InstancesFromEntries("cli", got[:2])
	if instances[0].Health != model.Healthy || instances[1].Health != model.Unhealthy {
		t.Errorf("health %v, %v; want healthy, unhealthy", instances[0].Health, instances[1].Health)
	}
}

// Health flips arrive through the checks loop between membership changes; an
// answer older than what was applied is not applied over it, whichever loop
// answers first.
func TestChecksLoopCarriesHealthBetweenMembershipChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		passing := func(index uint64, status string) fakeView {
			return fakeView{index: index, checks: api.HealthChecks{
				{Node: "node-1", CheckID: "service:a", ServiceID: "a", ServiceName: "cli", Status: status},
			}}
		}
		f := &fakeConsul{results: []fakeResult{{entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 1, nil, check("service:a", "passing"))}, index: 10}},
			views: make(chan fakeView), next: make(chan fakeResult)}
		d := runDiscovery(t, f.source())
		health := func() model.Health {
			p, _ := d.Current().Pool("cli")
			return p.Instances()[0].Health
		}
		if health() != model.Healthy {
			t.Fatal("not healthy after the first read")
		}
		for _, step := range []struct {
			view fakeView
			want model.Health
		}{
			{passing(12, "critical"), model.Unhealthy},
			{passing(9, "passing"), model.Unhealthy}, // older than the read: not applied
			{passing(13, "passing"), model.Healthy},
			{passing(20, "critical"), model.Unhealthy},
		} {
			f.views <- step.view
			synctest.Wait()
			if got := health(); got != step.want {
				t.Fatalf("view at %d (%s): %v, want %v", step.view.index, step.view.checks[0].Status, got, step.want)
			}
		}
		// A membership change read at 18, before the view at 20: the view's
		// critical stays; read at 25, after it: the read's passing applies.
		for _, step := range []struct {
			index uint64
			want  model.Health
		}{{18, model.Unhealthy}, {25, model.Healthy}} {
			f.next <- fakeResult{entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 1, nil, check("service:a", "passing"))}, index: step.index}
			synctest.Wait()
			if got := health(); got != step.want {
				t.Fatalf("full read at %d: %v, want %v", step.index, got, step.want)
			}
		}
		f.mu.Lock()
		if len(f.filters) == 0 || f.filters[0] != `ServiceName == "cli" or ServiceID == ""` {
			t.Errorf("checks query filter %q", f.filters)
		}
		f.mu.Unlock()
	})
}
