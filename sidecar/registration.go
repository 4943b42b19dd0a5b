package sidecar

import (
	"maps"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
)

// Registration keeps this instance in Consul: service = pool, address and port =
// the sidecar's, meta = mode, capacity, version, and a check that passes only
// while Health says the CLI answers ping. Backend is how (--consul-registration):
// through the node's client agent (AgentBackend), or through the servers' catalog
// API with no agent at all (CatalogBackend), as consul-k8s runs by default since
// 1.0.
type Registration struct {
	Backend    Backend
	Log        *zap.Logger
	Pool       string
	InstanceID string
	Address    string
	Port       int
	Meta       map[string]string

	// ops keeps a health report (which may register the instance again) and
	// the deregistration apart: no report lands after the instance left.
	ops      sync.Mutex
	mu       sync.Mutex
	draining bool
	gone     bool // deregistered: never registered again
}

// Backend registers, updates and removes one service instance in Consul.
type Backend interface {
	// Register adds or replaces the instance, its check in status.
	Register(svc *api.AgentService, status, output string) error
	// Update sets the check's status and output.
	Update(status, output string) error
	// Deregister removes the instance and whatever keeps it alive.
	Deregister() error
}

// checkID names the instance's check in either backend.
func checkID(instance string) string { return "climesh-cli:" + instance }

// consulCheckName is the check as Consul's UI shows it.
const consulCheckName = "copilot CLI answers ping"

func (r *Registration) service() *api.AgentService {
	r.mu.Lock()
	defer r.mu.Unlock()
	meta := maps.Clone(r.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	if r.draining {
		meta[protocol.ConsulMetaDraining] = "true"
	}
	return &api.AgentService{ID: r.InstanceID, Service: r.Pool, Address: r.Address, Port: r.Port, Meta: meta, Tags: []string{"climesh"}}
}

// Register adds the service with its check, critical until the first ping answers.
func (r *Registration) Register() error {
	return r.Backend.Register(r.service(), api.HealthCritical, "waiting for the copilot CLI's first ping")
}

// Report turns a health result into the check's status (Health.Report).
func (r *Registration) Report(ok bool, output string) {
	status := api.HealthCritical
	if ok {
		status = api.HealthPassing
	}
	r.ops.Lock()
	defer r.ops.Unlock()
	r.mu.Lock()
	gone := r.gone
	r.mu.Unlock()
	if gone {
		return // a health result after the instance left (its drain) changes nothing
	}
	err := r.Backend.Update(status, output)
	if err == nil {
		return
	}
	// A Consul that lost its state (a new agent, a restored server) no longer
	// knows the check: register the instance again, as it is now (draining
	// included). The next ping tries again if this fails too.
	if rerr := r.Backend.Register(r.service(), status, output); rerr != nil {
		r.Log.Warn("cannot update the consul check, nor register again", zap.Error(err), zap.NamedError("register", rerr))
		return
	}
	r.Log.Info("registered again: consul did not know the check", zap.Error(err))
}

// SetDraining marks the instance draining in Consul (meta draining=true), which
// climesh's discovery turns into DRAINING in Envoy.
func (r *Registration) SetDraining() error {
	r.mu.Lock()
	r.draining = true
	r.mu.Unlock()
	return r.Backend.Register(r.service(), api.HealthPassing, "draining: running turns finish, no new users") // draining, not unhealthy
}

// Deregister removes the service.
func (r *Registration) Deregister() error {
	r.ops.Lock()
	defer r.ops.Unlock()
	r.mu.Lock()
	r.gone = true
	r.mu.Unlock()
	return r.Backend.Deregister()
}

// AgentBackend registers through the node's client agent with a TTL check: the
// agent turns it critical when the sidecar stops refreshing it (a dead sidecar
// leaves routing within TTL).
type AgentBackend struct {
	Agent *api.Agent
	TTL   time.Duration

	id string // the registered service's
}

func (b *AgentBackend) Register(svc *api.AgentService, status, output string) error {
	b.id = svc.ID
	return b.Agent.ServiceRegister(&api.AgentServiceRegistration{
		ID: svc.ID, Name: svc.Service, Address: svc.Address, Port: svc.Port, Meta: svc.Meta, Tags: svc.Tags,
		Check: &api.AgentServiceCheck{
			CheckID: checkID(svc.ID), Name: consulCheckName, TTL: b.TTL.String(), Notes: output,
			Status: status, DeregisterCriticalServiceAfter: "10m",
		},
	})
}

func (b *AgentBackend) Update(status, output string) error {
	return b.Agent.UpdateTTL(checkID(b.id), output, status)
}

func (b *AgentBackend) Deregister() error { return b.Agent.ServiceDeregister(b.id) }
