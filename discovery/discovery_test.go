package discovery

import (
	"context"
	"errors"
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

// fakeHealth answers queued results in order, then blocks until the context ends.
type fakeHealth struct {
	mu      sync.Mutex
	results []fakeResult
	indexes []uint64 // WaitIndex of each call
}

type fakeResult struct {
	entries []*api.ServiceEntry
	index   uint64
	err     error
}

func (f *fakeHealth) Service(_, _ string, _ bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	f.mu.Lock()
	f.indexes = append(f.indexes, q.WaitIndex)
	if len(f.results) == 0 {
		f.mu.Unlock()
		<-q.Context().Done()
		return nil, nil, q.Context().Err()
	}
	r := f.results[0]
	f.results = f.results[1:]
	f.mu.Unlock()
	return r.entries, &api.QueryMeta{LastIndex: r.index}, r.err
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
		f := &fakeHealth{results: []fakeResult{
			{err: errors.New("connection refused")},
			{entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 1, nil)}, index: 10},
			{err: errors.New("connection refused")},                                                                    // Consul restarts
			{entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 1, nil), entry("b", "127.0.0.1", 2, nil)}, index: 3}, // with a lower index
			{entries: []*api.ServiceEntry{entry("b", "127.0.0.1", 2, nil)}, index: 4},
			{entries: []*api.ServiceEntry{entry("b", "127.0.0.1", 2, nil)}, index: 2}, // a replaced server: backwards, no error
		}}
		d, err := New(testConfig(t), Source{Health: f}, model.Fleet{}, zap.NewNop(), NewMetrics(prometheus.NewRegistry()))
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
	d, err := New(testConfig(t), Source{Health: &fakeHealth{}}, seed, zap.NewNop(), NewMetrics(prometheus.NewRegistry()))
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
		h := &fakeHealth{results: []fakeResult{{entries: []*api.ServiceEntry{entry("a", "127.0.0.1", 1, meta)}, index: 5}}}
		kv := &fakeKV{next: make(chan []string)}
		d, err := New(testConfig(t), Source{Health: h, KV: kv}, model.Fleet{}, zap.NewNop(), NewMetrics(prometheus.NewRegistry()))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go d.Run(ctx)
		synctest.Wait()
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
