package xds

import (
	"testing"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/model"
)

func TestTranslateIsDeterministic(t *testing.T) {
	cfg, fleet := loadGoldenInput(t, "testdata/in/ring_hash_user.yaml")
	a, err := Translate(cfg, fleet)
	if err != nil {
		t.Fatal(err)
	}
	// Same fleet, instances listed in another order.
	p, _ := fleet.Pool("shared")
	in := p.Instances()
	in[0], in[2] = in[2], in[0]
	b, err := Translate(cfg, model.NewFleet(model.NewPool("shared", in)))
	if err != nil {
		t.Fatal(err)
	}
	va, _ := a["edge"].Versions()
	vb, _ := b["edge"].Versions()
	if va != vb {
		t.Fatalf("same input, different versions: %+v vs %+v", va, vb)
	}
}

func TestVersionsFollowWhatChanged(t *testing.T) {
	cfg, fleet := loadGoldenInput(t, "testdata/in/ring_hash_user.yaml")
	base := versions(t, cfg, fleet)

	p, _ := fleet.Pool("shared")
	in := p.Instances()
	in[1].Health = model.Unhealthy // draining -> unhealthy: the ring's host count stays
	endpointsOnly := versions(t, cfg, model.NewFleet(model.NewPool("shared", in)))
	if endpointsOnly.Endpoints == base.Endpoints {
		t.Error("a health change did not change the endpoints version")
	}
	if endpointsOnly.Clusters != base.Clusters || endpointsOnly.Listeners != base.Listeners || endpointsOnly.Routes != base.Routes {
		t.Errorf("a health change touched other types: %+v -> %+v", base, endpointsOnly)
	}

	in[1].Health = model.Healthy // one more healthy host: a bigger ring
	ringChange := versions(t, cfg, model.NewFleet(model.NewPool("shared", in)))
	if ringChange.Clusters == base.Clusters {
		t.Error("a new healthy host did not resize the ring")
	}

	cfg.Pools[0].CircuitBreakers.MaxConnections = 7
	clusterChange := versions(t, cfg, fleet)
	if clusterChange.Clusters == base.Clusters || clusterChange.Endpoints == base.Endpoints {
		t.Errorf("a cluster change must bump clusters and endpoints (or the cluster stays warming): %+v -> %+v", base, clusterChange)
	}
}

func versions(t *testing.T, cfg *config.Config, fleet model.Fleet) Versions {
	t.Helper()
	groups, err := Translate(cfg, fleet)
	if err != nil {
		t.Fatal(err)
	}
	v, err := groups["edge"].Versions()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRingSizeKeepsEntriesPerHost(t *testing.T) {
	lb := config.LB{RingEntriesPerHost: 256, MaxRingSize: 8 << 20}
	for n, want := range map[int]uint64{0: 256, 1: 256, 3: 768, 4: 1024, 100000: 8 << 20} {
		if got := ringSize(lb, n); got != want {
			t.Errorf("%d healthy hosts: ring %d, want %d", n, got, want)
		}
	}
	// Envoy's rule: each of n equal hosts gets ceil(min_ring_size / n) entries.
	for _, e := range []uint64{2, 16, 256, 1000} {
		lb := config.LB{RingEntriesPerHost: e, MaxRingSize: 1 << 62}
		changes := map[int]int{} // by decade of n: health flips that change the cluster
		for n := 1; n <= 20000; n++ {
			size := ringSize(lb, n)
			if per := (size + uint64(n) - 1) / uint64(n); per != e {
				t.Fatalf("%d entries per host, %d hosts: ring %d gives %d entries each", e, n, size, per)
			}
			if n > 1 && ringSize(lb, n-1) != size {
				changes[n/1000]++
			}
		}
		if e == 256 && changes[1] > 300 || e == 256 && changes[10] > 30 {
			t.Errorf("256 entries: of 1,000 flips near 1,000 hosts %d change the ring size, near 10,000 %d; the bucket is too narrow", changes[1], changes[10])
		}
	}
	fixed := config.LB{MinRingSize: 1024, MaxRingSize: 8 << 20}
	if got := ringSize(fixed, 7); got != 1024 {
		t.Errorf("a fixed min_ring_size became %d", got)
	}
}
