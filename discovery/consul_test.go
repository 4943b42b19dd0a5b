package discovery_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/discovery"
	"github.com/climesh/climesh/model"
	"github.com/climesh/climesh/test/harness"
)

// Against a real Consul, the two loops (membership from the catalog, checks
// apart) end each change where Consul's own health answer for the service
// stands: check flips, service and node maintenance, the draining meta, a new
// instance, a deregistered one.
func TestDiscoveryAgreesWithConsulHealth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Consul")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	consul, err := harness.StartConsul(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(consul.Close)
	for i := range 3 {
		if err := consul.Register("cli", fmt.Sprintf("cli-%d", i), 7000+i, nil); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load([]byte(fmt.Sprintf(`
consul: {address: %s}
listeners: [{name: edge, port: 10000, routes: [{pool: cli}]}]
pools: [{name: cli, consul_service: cli}]
`, consul.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	c := consul.Client
	d, err := discovery.New(cfg, discovery.Source{Health: c.Health(), Catalog: c.Catalog(), KV: c.KV()}, model.Fleet{}, zap.NewNop(),
		discovery.NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	go d.Run(ctx)

	agree := func(step string) {
		t.Helper()
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		defer pcancel()
		err := harness.Poll(pctx, 10*time.Millisecond, func() error {
			entries, _, err := c.Health().Service("cli", "", false, nil)
			if err != nil {
				return err
			}
			want, _ := discovery.InstancesFromEntries("cli", entries)
			p, _ := d.Current().Pool("cli")
			got := p.Instances()
			if summary(got) != summary(want) {
				return fmt.Errorf("discovery has %s, Consul's health answer %s", summary(got), summary(want))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	agree("registered")
	agent := c.Agent()
	for _, step := range []struct {
		name string
		do   func() error
	}{
		{"check critical", func() error { return consul.SetCheck("cli-1", api.HealthCritical) }},
		{"check passing", func() error { return consul.SetCheck("cli-1", api.HealthPassing) }},
		{"service maintenance", func() error { return agent.EnableServiceMaintenance("cli-2", "test") }},
		{"service maintenance off", func() error { return agent.DisableServiceMaintenance("cli-2") }},
		{"node maintenance", func() error { return agent.EnableNodeMaintenance("test") }},
		{"node maintenance off", func() error { return agent.DisableNodeMaintenance() }},
		{"draining meta", func() error { return consul.Register("cli", "cli-0", 7000, map[string]string{"draining": "true"}) }},
		{"new instance", func() error { return consul.Register("cli", "cli-9", 7009, nil) }},
		{"deregistered", func() error { return agent.ServiceDeregister("cli-1") }},
		{"critical then passing at once", func() error {
			if err := consul.SetCheck("cli-2", api.HealthCritical); err != nil {
				return err
			}
			return consul.SetCheck("cli-2", api.HealthPassing)
		}},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		agree(step.name)
	}
}

func summary(instances []model.Instance) string {
	var out []string
	for _, in := range instances {
		out = append(out, fmt.Sprintf("%s:%d=%s", in.ID, in.Port, in.Health))
	}
	slices.Sort(out)
	return fmt.Sprint(out)
}
