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
	in[1].Health = model.Healthy
	endpointsOnly := versions(t, cfg, model.NewFleet(model.NewPool("shared", in)))
	if endpointsOnly.Endpoints == base.Endpoints {
		t.Error("a health change did not change the endpoints version")
	}
	if endpointsOnly.Clusters != base.Clusters || endpointsOnly.Listeners != base.Listeners || endpointsOnly.Routes != base.Routes {
		t.Errorf("a health change touched other types: %+v -> %+v", base, endpointsOnly)
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
