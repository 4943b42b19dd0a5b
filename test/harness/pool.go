package harness

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"
)

// Pool is a pool of sidecars a test started on its own (StartPool), so that it
// can drain, kill or grow instances without changing what other tests see.
// Its name is also its tenant: tokens of tenant Name are routed to it.
type Pool struct {
	Name string
	Home string // the shared COPILOT_HOME ("" with PoolOptions.Attach)

	mesh *Mesh
	opts PoolOptions
	mu   sync.Mutex
	next int
	// Sidecars by instance id ("<name>-0", "<name>-1", ...), and the CLIs the
	// instances attach to (with Attach).
	Sidecars map[string]*Sidecar
	CLIs     map[string]*CLI
}

// PoolOptions shape a Pool.
type PoolOptions struct {
	Instances int
	// Attach gives each instance a CLI of its own, started beside the sidecar
	// with a home of its own (no shared session storage); otherwise each sidecar
	// runs its CLI as a child and all share Pool.Home.
	Attach bool
	Extra  []string // flags for every sidecar, after the mesh's SidecarArgs
}

// StartPool starts a pool named in MeshOptions.Scratch and waits until Envoy
// routes to every instance. Close stops it; a pool is started once per name.
func (m *Mesh) StartPool(ctx context.Context, name string, o PoolOptions) (*Pool, error) {
	known := false
	for _, s := range m.scratch {
		known = known || s.Name == name
	}
	if !known {
		return nil, fmt.Errorf("pool %q is not in MeshOptions.Scratch %v: Envoy has no route to it", name, m.scratch)
	}
	p := &Pool{Name: name, mesh: m, opts: o, Sidecars: map[string]*Sidecar{}, CLIs: map[string]*CLI{}}
	if !o.Attach {
		p.Home = filepath.Join(m.Dir, name+"-home")
	}
	errs := make([]error, o.Instances)
	var wg sync.WaitGroup
	for i := range o.Instances {
		wg.Go(func() { _, errs[i] = p.add(ctx, false) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.WaitRouted(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Add starts one more instance and waits until Envoy routes to it.
func (p *Pool) Add(ctx context.Context) (*Sidecar, error) {
	return p.add(ctx, true)
}

func (p *Pool) add(ctx context.Context, wait bool) (*Sidecar, error) {
	p.mu.Lock()
	id := fmt.Sprintf("%s-%d", p.Name, p.next)
	p.next++
	p.mu.Unlock()
	so := SidecarOptions{ID: id, Pool: p.Name, ConsulAddr: p.mesh.Consul.Addr, Extra: append(append([]string{}, p.mesh.SidecarArgs...), p.opts.Extra...)}
	if p.opts.Attach {
		cli, err := StartCLI(ctx, p.mesh.Dir, id, id+"-secret-token-0123456789")
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		p.CLIs[id] = cli
		p.mu.Unlock()
		so.CLIAddr, so.CLIToken = cli.Addr, cli.Token
	} else {
		copilotBin, err := Tool("copilot")
		if err != nil {
			return nil, err
		}
		so.CLICommand, so.CLIHome = copilotBin, p.Home
	}
	so.Env = p.mesh.SidecarEnv
	sc, err := StartSidecar(ctx, p.mesh.Dir, so)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.Sidecars[id] = sc
	p.mu.Unlock()
	if wait {
		return sc, p.WaitRouted(ctx, id)
	}
	return sc, nil
}

// Homes maps each instance to its CLI's COPILOT_HOME.
func (p *Pool) Homes() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	homes := map[string]string{}
	for id := range p.Sidecars {
		if cli := p.CLIs[id]; cli != nil {
			homes[id] = cli.Home
		} else {
			homes[id] = p.Home
		}
	}
	return homes
}

// WaitRouted waits until Envoy sees each of ids (every instance if none) healthy.
func (p *Pool) WaitRouted(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		p.mu.Lock()
		for id := range p.Sidecars {
			ids = append(ids, id)
		}
		p.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return Poll(ctx, 50*time.Millisecond, func() error {
		hosts, err := p.mesh.Envoy.Hosts("pool/" + p.Name)
		if err != nil {
			return err
		}
		healthy := map[string]bool{}
		for _, h := range hosts {
			healthy[h.Hostname] = h.Health == "HEALTHY"
		}
		for _, id := range ids {
			if !healthy[id] {
				return fmt.Errorf("envoy does not route to %s yet: %v", id, hosts)
			}
		}
		return nil
	})
}

// Close stops every instance of the pool and the CLIs they attach to.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	var wg sync.WaitGroup
	for _, sc := range p.Sidecars {
		wg.Go(sc.Close)
	}
	wg.Wait()
	for _, cli := range p.CLIs {
		cli.Close()
	}
}
