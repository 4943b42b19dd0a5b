package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// Consul is a `consul agent -dev` on free loopback ports (state in memory).
type Consul struct {
	Proc   *Proc
	Addr   string      // HTTP API host:port
	Client *api.Client // with the management token when ACLs are on
	// RootToken is the management token (ConsulOptions.ACL), else empty.
	RootToken string
	dir       string
	args      []string
	bin       string
}

// StartConsul starts a dev agent and waits until it has a leader.
func StartConsul(ctx context.Context, dir string) (*Consul, error) {
	return StartConsulWith(ctx, dir, ConsulOptions{})
}

// StartConsulOnPort is StartConsul with its HTTP API on httpPort (0: a free one).
func StartConsulOnPort(ctx context.Context, dir string, httpPort int) (*Consul, error) {
	return StartConsulWith(ctx, dir, ConsulOptions{HTTPPort: httpPort})
}

// ConsulOptions shape a dev agent.
type ConsulOptions struct {
	HTTPPort int // 0: a free one
	// ACL turns ACLs on, deny by default, with a management token (RootToken)
	// that the agent and Client use; PolicyToken makes the others.
	ACL bool
	// SessionTTLMin lowers the servers' session_ttl_min (default 10s), so that
	// tests can bound a dead holder's session in seconds.
	SessionTTLMin time.Duration
	// Persistent runs a single server with a data directory instead of a dev
	// agent: Restart keeps the KV store, the catalog and the agent's own
	// registrations, as a production server does.
	Persistent bool
}

// StartConsulWith starts a dev agent shaped by o and waits until it has a leader.
func StartConsulWith(ctx context.Context, dir string, o ConsulOptions) (*Consul, error) {
	httpPort := o.HTTPPort
	bin, err := Tool("consul")
	if err != nil {
		return nil, err
	}
	ports, err := FreePorts(4)
	if err != nil {
		return nil, err
	}
	if httpPort != 0 {
		ports[0] = httpPort
	}
	c := &Consul{dir: dir, bin: bin, Addr: "127.0.0.1:" + strconv.Itoa(ports[0])}
	mode := []string{"-dev"}
	if o.Persistent {
		mode = []string{"-server", "-bootstrap-expect", "1", "-data-dir", filepath.Join(dir, "consul-data"),
			"-hcl", "performance { raft_multiplier = 1 }"}
	}
	c.args = append([]string{"agent"}, mode...)
	c.args = append(c.args, "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]), "-server-port", strconv.Itoa(ports[1]),
		"-serf-lan-port", strconv.Itoa(ports[2]), "-serf-wan-port", strconv.Itoa(ports[3]),
		"-dns-port", "-1", "-grpc-port", "-1", "-hcl", "ports { grpc_tls = -1 }",
		"-node", "climesh-test", "-log-level", "warn")
	if o.ACL {
		c.RootToken = "root-token-for-tests-0000000000000"
		c.args = append(c.args, "-hcl", fmt.Sprintf(`acl { enabled = true, default_policy = "deny", tokens { initial_management = %q, agent = %q } }`, c.RootToken, c.RootToken))
	}
	if o.SessionTTLMin > 0 {
		c.args = append(c.args, "-hcl", fmt.Sprintf("session_ttl_min = %q", o.SessionTTLMin.String()))
	}
	if c.Client, err = api.NewClient(&api.Config{Address: c.Addr, Token: c.RootToken}); err != nil {
		return nil, err
	}
	return c, c.start(ctx)
}

func (c *Consul) start(ctx context.Context) error {
	p, err := Start(c.dir, "consul", c.bin, c.args)
	if err != nil {
		return err
	}
	c.Proc = p
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = Poll(ctx, 50*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("consul exited:\n%s", p.Tail(20))
		}
		leader, err := c.Client.Status().Leader()
		if err != nil {
			return err
		}
		if leader == "" {
			return fmt.Errorf("no leader yet")
		}
		if c.RootToken != "" { // the ACL system takes a moment after the leader
			_, _, err = c.Client.ACL().TokenReadSelf(nil)
		}
		return err
	})
	if err != nil {
		p.Stop(time.Second)
		return fmt.Errorf("consul did not become ready: %w", err)
	}
	return nil
}

// Restart stops the agent and starts it again on the same ports. A dev agent
// keeps nothing: every registration is gone afterwards, and the Raft index starts
// over (lower than before). A Persistent one keeps its state.
func (c *Consul) Restart(ctx context.Context) error {
	c.Proc.Stop(5 * time.Second)
	return c.start(ctx)
}

// Start starts a stopped agent again on the same ports (see Restart).
func (c *Consul) Start(ctx context.Context) error { return c.start(ctx) }

// Close stops the agent.
func (c *Consul) Close() { c.Proc.Stop(5 * time.Second) }

// Register adds a service instance with a TTL check, passing at once.
func (c *Consul) Register(service, id string, port int, meta map[string]string) error {
	reg := &api.AgentServiceRegistration{
		ID: id, Name: service, Address: "127.0.0.1", Port: port, Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: "ttl:" + id, TTL: "10m", Status: api.HealthPassing},
	}
	return c.Client.Agent().ServiceRegister(reg)
}

// SetCheck moves an instance's TTL check to passing, warning or critical.
func (c *Consul) SetCheck(id, status string) error {
	return c.Client.Agent().UpdateTTL("ttl:"+id, "set by test", status)
}

// PolicyToken makes an ACL policy named name from the rules in the HCL file
// rulesFile (a path under the repository root) and a token that holds only it.
func (c *Consul) PolicyToken(name, rulesFile string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	rules, err := os.ReadFile(filepath.Join(root, rulesFile))
	if err != nil {
		return "", err
	}
	p, _, err := c.Client.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: string(rules)}, nil)
	if err != nil {
		return "", fmt.Errorf("acl policy %s from %s: %w", name, rulesFile, err)
	}
	tok, _, err := c.Client.ACL().TokenCreate(&api.ACLToken{Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	if err != nil {
		return "", fmt.Errorf("acl token %s: %w", name, err)
	}
	return tok.SecretID, nil
}
