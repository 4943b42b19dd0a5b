package xds

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/model"
)

// benchInput is one ring-hash pool of n instances, every tenth draining.
func benchInput(b testing.TB, n int) (*config.Config, model.Fleet) {
	b.Helper()
	cfg, err := config.Load([]byte(`
listeners: [{name: edge, port: 10000, routes: [{pool: shared}]}]
pools: [{name: shared, consul_service: copilot, outlier_detection: {}}]
`))
	if err != nil {
		b.Fatal(err)
	}
	instances := make([]model.Instance, n)
	for i := range instances {
		h := model.Healthy
		if i%10 == 0 {
			h = model.Draining
		}
		instances[i] = model.Instance{
			ID: fmt.Sprintf("cli-%05d", i), Address: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), Port: 7000,
			Meta: map[string]string{"mode": "shared", "capacity": "50"}, Health: h,
		}
	}
	return cfg, model.NewFleet(model.NewPool("shared", instances))
}

// BenchmarkTranslate10k: Translate alone, 10,000 instances.
func BenchmarkTranslate10k(b *testing.B) {
	cfg, fleet := benchInput(b, 10000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Translate(cfg, fleet); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTranslateSnapshot10k: Translate, validate every resource, hash the
// versions and check the snapshot's consistency: what one fleet change costs
// before go-control-plane sends anything.
func BenchmarkTranslateSnapshot10k(b *testing.B) {
	cfg, fleet := benchInput(b, 10000)
	b.ReportAllocs()
	for b.Loop() {
		groups, err := Translate(cfg, fleet)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := buildSnapshot(groups["edge"]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublisherUpdate10k: Publisher.Update with a one-instance health flip
// each round, snapshot set in the cache (no Envoy attached).
func BenchmarkPublisherUpdate10k(b *testing.B) {
	cfg, fleet := benchInput(b, 10000)
	p := NewPublisher(zap.NewNop(), prometheus.NewRegistry())
	pool, _ := fleet.Pool("shared")
	instances := pool.Instances()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		instances[1].Health = model.Health(i % 2 * 2) // healthy <-> unhealthy
		i++
		if err := p.Update(b.Context(), cfg, model.NewFleet(model.NewPool("shared", instances))); err != nil {
			b.Fatal(err)
		}
	}
}
