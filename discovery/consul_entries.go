package discovery

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/climesh/climesh/model"
	"github.com/climesh/climesh/protocol"
)

// MetaDraining is the service meta key a sidecar sets to "true" while it drains.
const MetaDraining = protocol.ConsulMetaDraining

// Consul's maintenance checks: node-wide, and per service instance.
const (
	nodeMaintenanceCheck     = "_node_maintenance"
	serviceMaintenancePrefix = "_service_maintenance:"
)

// InstancesFromEntries turns one Consul health query result into instances. It is
// pure. Entries that cannot be routed to (no usable address or port) are left out and
// reported, one error each naming the service instance and the field.
func InstancesFromEntries(service string, entries []*api.ServiceEntry) ([]model.Instance, []error) {
	var errs []error
	seen := map[string]int{}
	for _, e := range entries {
		if e.Service != nil {
			seen[e.Service.ID]++
		}
	}
	out := make([]model.Instance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			errs = append(errs, fmt.Errorf("consul service %q: entry without a service", service))
			continue
		}
		s := e.Service
		id := s.ID
		nodeName := ""
		if e.Node != nil {
			nodeName = e.Node.Node
		}
		if seen[s.ID] > 1 {
			// Service IDs are unique per agent only.
			id = nodeName + "/" + s.ID
		}
		addr := s.Address
		if addr == "" && e.Node != nil {
			addr = e.Node.Address
		}
		if _, err := netip.ParseAddr(addr); err != nil {
			errs = append(errs, fmt.Errorf("consul service %q instance %q: address %q is not an IP address", service, id, addr))
			continue
		}
		if s.Port < 1 || s.Port > 65535 {
			errs = append(errs, fmt.Errorf("consul service %q instance %q: port %d out of range 1-65535", service, id, s.Port))
			continue
		}
		out = append(out, model.Instance{
			ID:      id,
			Address: addr,
			Port:    s.Port,
			Tags:    s.Tags,
			Meta:    s.Meta,
			Health:  healthOf(e),
		})
	}
	return out, errs
}

// healthOf: any critical check makes an instance unhealthy; maintenance mode (whose
// own check is critical) or the draining meta make it draining.
func healthOf(e *api.ServiceEntry) model.Health {
	draining := isTrue(e.Service.Meta[MetaDraining])
	critical := false
	for _, c := range e.Checks {
		maintenance := c.CheckID == nodeMaintenanceCheck || strings.HasPrefix(c.CheckID, serviceMaintenancePrefix)
		switch {
		case maintenance && c.Status == api.HealthCritical:
			draining = true
		case c.Status == api.HealthCritical:
			critical = true
		}
	}
	switch {
	case critical:
		return model.Unhealthy
	case draining:
		return model.Draining
	default:
		return model.Healthy
	}
}

func isTrue(s string) bool {
	switch strings.ToLower(s) {
	case "true", "1", "yes":
		return true
	}
	return false
}

// ApplyLiveness marks unhealthy each instance that names a liveness key
// (protocol.ConsulMetaLiveness: it was registered through the catalog, with no
// agent to expire its check) when that key is not live, or is not under
// protocol.ConsulLivePrefix. It is pure: instances is not changed.
func ApplyLiveness(instances []model.Instance, live func(key string) bool) []model.Instance {
	out := slices.Clone(instances)
	for i, in := range out {
		key, ok := in.Meta[protocol.ConsulMetaLiveness]
		if ok && (!strings.HasPrefix(key, protocol.ConsulLivePrefix) || !live(key)) {
			out[i].Health = model.Unhealthy
		}
	}
	return out
}

// WithChecks is entries with each entry's checks replaced by those of checks
// that belong to it: its node's own checks (no service ID) and its service's on
// that node. It is pure: entries is not changed. checks holds every check of
// the service and every node check, as a health state query with the filter
// `ServiceName == "<service>" or ServiceID == ""` answers; the result is what
// the health endpoint for the service would have answered with those checks.
func WithChecks(entries []*api.ServiceEntry, checks api.HealthChecks) []*api.ServiceEntry {
	type key struct{ node, service string }
	byOwner := map[key][]*api.HealthCheck{}
	for _, c := range checks {
		if c == nil {
			continue
		}
		k := key{c.Node, c.ServiceID}
		byOwner[k] = append(byOwner[k], c)
	}
	out := make([]*api.ServiceEntry, len(entries))
	for i, e := range entries {
		if e == nil || e.Service == nil {
			out[i] = e
			continue
		}
		node := ""
		if e.Node != nil {
			node = e.Node.Node
		}
		next := *e
		next.Checks = slices.Concat(byOwner[key{node, ""}], byOwner[key{node, e.Service.ID}])
		out[i] = &next
	}
	return out
}
