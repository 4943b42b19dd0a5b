package sidecar

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/sidecar/datapath"
)

// Registration keeps this instance in Consul: service = pool, address and port =
// the sidecar's, meta = mode, capacity, version; a TTL check that passes only while
// the CLI answers ping with the sidecar's token.
type Registration struct {
	Agent      *api.Agent
	Log        *zap.Logger
	Pool       string
	InstanceID string
	Address    string
	Port       int
	Meta       map[string]string
	TTL        time.Duration // the check turns critical if not refreshed within this
	Interval   time.Duration // how often the CLI is pinged
	CLI        datapath.CLIDialer
	// Probe, when set, replaces the CLI ping (isolated mode has no single CLI).
	Probe func(context.Context) error
	// Load, when set, is appended to the check's output: the instance's load as
	// Consul shows it (the agent syncs output-only changes every
	// check_update_interval, so /metrics is the exact figure).
	Load func() string

	mu      sync.Mutex
	changed bool // the CLI moved: drop the ping connection
}

// SetCLI points the health ping at a restarted CLI.
func (r *Registration) SetCLI(addr, token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.CLI.Addr, r.CLI.Token = addr, token
	r.changed = true
}

func (r *Registration) cli() (datapath.CLIDialer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := r.changed
	r.changed = false
	return r.CLI, changed
}

// Fail turns the check critical now, without waiting for the next ping.
func (r *Registration) Fail(reason string) {
	if err := r.Agent.UpdateTTL(r.checkID(), reason, api.HealthCritical); err != nil {
		r.Log.Warn("cannot update the consul check", zap.Error(err))
	}
}

func (r *Registration) checkID() string { return "climesh-cli:" + r.InstanceID }

// Register adds the service with its check, critical until the first ping answers.
func (r *Registration) Register() error { return r.register(api.HealthCritical) }

func (r *Registration) register(status string) error {
	return r.Agent.ServiceRegister(&api.AgentServiceRegistration{
		ID: r.InstanceID, Name: r.Pool, Address: r.Address, Port: r.Port, Meta: r.Meta,
		Tags: []string{"climesh"},
		Check: &api.AgentServiceCheck{
			CheckID: r.checkID(), Name: "copilot CLI answers ping", TTL: r.TTL.String(),
			Status: status, DeregisterCriticalServiceAfter: "10m",
		},
	})
}

// Deregister removes the service.
func (r *Registration) Deregister() error { return r.Agent.ServiceDeregister(r.InstanceID) }

// SetDraining marks the instance draining in Consul (meta draining=true), which
// climesh's discovery turns into DRAINING in Envoy.
func (r *Registration) SetDraining() error {
	meta := map[string]string{"draining": "true"}
	for k, v := range r.Meta {
		meta[k] = v
	}
	r.Meta = meta
	return r.register(api.HealthPassing) // draining, not unhealthy: its turns still run
}

// Run pings the CLI every Interval and reports the result to the TTL check,
// until ctx ends. The ping uses one long-lived authenticated connection, redialled
// when it breaks.
func (r *Registration) Run(ctx context.Context) {
	var conn *datapath.CLIConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	t := time.NewTicker(r.Interval)
	defer t.Stop()
	for {
		var err error
		if r.Probe != nil {
			err = r.Probe(ctx)
		} else {
			err = r.ping(ctx, &conn)
		}
		status, output := api.HealthPassing, "copilot CLI answered ping"
		if r.Load != nil {
			output += "; " + r.Load()
		}
		if err != nil {
			status, output = api.HealthCritical, err.Error()
			if conn != nil {
				conn.Close()
				conn = nil
			}
		}
		if uerr := r.Agent.UpdateTTL(r.checkID(), output, status); uerr != nil {
			r.Log.Warn("cannot update the consul check", zap.Error(uerr))
		} else if err != nil {
			r.Log.Warn("CLI health check failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Registration) ping(ctx context.Context, conn **datapath.CLIConn) error {
	dialer, changed := r.cli()
	if changed && *conn != nil {
		(*conn).Close()
		*conn = nil
	}
	if *conn == nil {
		c, err := dialer.Dial(ctx)
		if err != nil {
			return err
		}
		*conn = c
	}
	if _, err := (*conn).Call(protocol.MethodPing, map[string]string{"message": "climesh"}, min(r.Interval, 5*time.Second)); err != nil {
		return fmt.Errorf("ping the copilot CLI: %w", err)
	}
	return nil
}
