package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Envoy is a real Envoy bootstrapped with nothing but the ADS server's address.
type Envoy struct {
	Proc      *Proc
	AdminAddr string
	NodeID    string
	// what it was started with, for Start
	dir, xdsAddr string
	opts         EnvoyOptions
}

// Start starts a stopped or killed Envoy again with the same bootstrap (a new
// admin port; its listeners come back from the xds-server on their ports).
func (e *Envoy) Start(ctx context.Context) error {
	next, err := StartEnvoy(ctx, e.dir, e.xdsAddr, e.opts)
	if err != nil {
		return err
	}
	e.Proc, e.AdminAddr = next.Proc, next.AdminAddr
	return nil
}

// bootstrap: a node, the ADS cluster, and an admin listener. Everything else comes
// from the xds-server.
const bootstrap = `node:
  id: %[1]s
  cluster: %[2]s
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: %[3]d}}
dynamic_resources:
  ads_config:
    api_type: %[5]s
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: xds}}]
    set_node_on_first_message_only: true
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %[4]d}}}
%[6]s`

// bootstrapTLS is the xds cluster's TLS, shaped like Envoy Gateway's bootstrap:
// verify the xds-server against a CA (and that it is 127.0.0.1), and present a
// client certificate when one is given.
const bootstrapTLS = `    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {tls_maximum_protocol_version: TLSv1_3}
          validation_context:
            trusted_ca: {filename: %[1]s}
            match_typed_subject_alt_names: [{san_type: IP_ADDRESS, matcher: {exact: 127.0.0.1}}]
%[2]s`

const bootstrapClientCert = `          tls_certificates:
          - certificate_chain: {filename: %[1]s}
            private_key: {filename: %[2]s}
`

// EnvoyOptions choose the node and protocol.
type EnvoyOptions struct {
	NodeID    string // default "envoy-1"
	NodeGroup string // --service-cluster; default "edge"
	Delta     bool   // DELTA_GRPC instead of GRPC (state of the world)
	// TLS, when set, reaches the xds-server over TLS.
	TLS *EnvoyTLS
	// Unready: StartEnvoy waits for the admin to answer, not for Envoy to be
	// ready (for an Envoy its control plane is meant to refuse).
	Unready bool
}

// EnvoyTLS is the xds cluster's TLS: the CA that signed the xds-server's
// certificate, and Envoy's client certificate (empty: none).
type EnvoyTLS struct {
	TrustedCAFile, CertFile, KeyFile string
}

// StartEnvoy starts Envoy against the ADS server at xdsAddr and waits for its admin.
func StartEnvoy(ctx context.Context, dir, xdsAddr string, o EnvoyOptions) (*Envoy, error) {
	bin, err := Tool("envoy")
	if err != nil {
		return nil, err
	}
	if o.NodeID == "" {
		o.NodeID = "envoy-1"
	}
	if o.NodeGroup == "" {
		o.NodeGroup = "edge"
	}
	apiType := "GRPC"
	if o.Delta {
		apiType = "DELTA_GRPC"
	}
	_, xdsPortStr, _ := strings.Cut(xdsAddr, ":")
	xdsPort, err := strconv.Atoi(xdsPortStr)
	if err != nil {
		return nil, fmt.Errorf("xds address %q: %w", xdsAddr, err)
	}
	adminPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, o.NodeID+".bootstrap.yaml")
	socket := ""
	if t := o.TLS; t != nil {
		client := ""
		if t.CertFile != "" {
			client = fmt.Sprintf(bootstrapClientCert, t.CertFile, t.KeyFile)
		}
		socket = fmt.Sprintf(bootstrapTLS, t.TrustedCAFile, client)
	}
	if err := os.WriteFile(path, fmt.Appendf(nil, bootstrap, o.NodeID, o.NodeGroup, adminPort, xdsPort, apiType, socket), 0o644); err != nil {
		return nil, err
	}
	p, err := Start(dir, o.NodeID, bin, []string{"-c", path, "--use-dynamic-base-id", "--log-level", "warn",
		"--drain-time-s", "1", "--parent-shutdown-time-s", "2"})
	if err != nil {
		return nil, err
	}
	e := &Envoy{Proc: p, AdminAddr: "127.0.0.1:" + strconv.Itoa(adminPort), NodeID: o.NodeID, dir: dir, xdsAddr: xdsAddr, opts: o}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = Poll(ctx, 50*time.Millisecond, func() error {
		if p.Exited() {
			return fmt.Errorf("envoy exited:\n%s", p.Tail(30))
		}
		path := "/ready"
		if o.Unready {
			path = "/server_info" // 200 while initializing too
		}
		_, err := e.Admin(path)
		return err
	})
	if err != nil {
		p.Stop(time.Second)
		return nil, fmt.Errorf("envoy admin did not answer: %w", err)
	}
	return e, nil
}

// Close stops Envoy.
func (e *Envoy) Close() { e.Proc.Stop(5 * time.Second) }

var adminClient = &http.Client{Timeout: 5 * time.Second}

// Admin GETs an admin path and returns the body of a 200.
func (e *Envoy) Admin(path string) (string, error) {
	resp, err := adminClient.Get("http://" + e.AdminAddr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

// Stat reads one counter or gauge; missing stats read as -1.
func (e *Envoy) Stat(name string) (int64, error) {
	body, err := e.Admin("/stats?usedonly&filter=^" + strings.ReplaceAll(name, ".", "\\.") + "$")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(body, "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if ok && k == name {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return -1, nil
}

// HostStatus is one endpoint as Envoy's /clusters sees it.
type HostStatus struct {
	Hostname string
	Port     int
	Health   string // Envoy's eds_health_status: HEALTHY, DRAINING, UNHEALTHY, ...
}

// Hosts lists a cluster's hosts from the admin /clusters?format=json view.
func (e *Envoy) Hosts(cluster string) ([]HostStatus, error) {
	body, err := e.Admin("/clusters?format=json")
	if err != nil {
		return nil, err
	}
	var doc struct {
		ClusterStatuses []struct {
			Name         string `json:"name"`
			HostStatuses []struct {
				Hostname string `json:"hostname"`
				Address  struct {
					SocketAddress struct {
						PortValue int `json:"port_value"`
					} `json:"socket_address"`
				} `json:"address"`
				HealthStatus struct {
					EDSHealthStatus string `json:"eds_health_status"`
				} `json:"health_status"`
			} `json:"host_statuses"`
		} `json:"cluster_statuses"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		return nil, fmt.Errorf("admin /clusters: %w", err)
	}
	for _, c := range doc.ClusterStatuses {
		if c.Name != cluster {
			continue
		}
		out := make([]HostStatus, 0, len(c.HostStatuses))
		for _, h := range c.HostStatuses {
			health := h.HealthStatus.EDSHealthStatus
			if health == "" {
				health = "UNKNOWN" // proto3 JSON leaves the zero value out
			}
			out = append(out, HostStatus{Hostname: h.Hostname, Port: h.Address.SocketAddress.PortValue, Health: health})
		}
		return out, nil
	}
	return nil, fmt.Errorf("envoy has no cluster %q", cluster)
}
