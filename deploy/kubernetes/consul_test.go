package kubernetes_test

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/climesh/climesh/config"
)

// consulValues is what climesh relies on in consul-values.yaml (the values of
// consul-k8s's chart).
type consulValues struct {
	Global struct {
		Name  string `json:"name"`
		Image string `json:"image"`
		ACLs  struct {
			ManageSystemACLs bool `json:"manageSystemACLs"`
		} `json:"acls"`
	} `json:"global"`
	Client        struct{ Enabled *bool } `json:"client"`
	ConnectInject struct{ Enabled *bool } `json:"connectInject"`
}

// TestConsulValues: the Consul the manifests expect is the one consul-values.yaml
// installs — servers only (no client agents, consul-k8s's default since 1.0), ACLs
// on, no mesh injection, the Consul version the tests build, from a chart release
// of that version's line — and the climesh config reaches its servers' Service.
func TestConsulValues(t *testing.T) {
	raw, err := os.ReadFile("consul-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var v consulValues
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatalf("consul-values.yaml: %v", err)
	}
	if v.Client.Enabled == nil || *v.Client.Enabled {
		t.Error("consul-values.yaml: client.enabled must be false (the sidecars register through the servers' catalog)")
	}
	if !v.Global.ACLs.ManageSystemACLs {
		t.Error("consul-values.yaml: global.acls.manageSystemACLs must be true (deploy/consul/acl's tokens need ACLs on)")
	}
	if v.ConnectInject.Enabled == nil || *v.ConnectInject.Enabled {
		t.Error("consul-values.yaml: connectInject.enabled must be false (Envoy is climesh's)")
	}

	// The Consul version: the one tools/install.sh builds for the tests, from a
	// chart release whose line ships that minor version (consul-k8s 1.0.x: 1.14.x).
	install, _ := os.ReadFile(filepath.Join("..", "..", "tools", "install.sh"))
	pinned := regexp.MustCompile(`(?m)^CONSUL_VERSION=(\d+)\.(\d+)\.(\d+)`).FindSubmatch(install)
	if pinned == nil {
		t.Fatal("tools/install.sh pins no CONSUL_VERSION")
	}
	if want := "hashicorp/consul:" + string(pinned[1]) + "." + string(pinned[2]) + "." + string(pinned[3]); v.Global.Image != want {
		t.Errorf("consul-values.yaml: global.image %q, want %q (what the tests run)", v.Global.Image, want)
	}
	chart := map[string]string{"1.14": "1.0."} // Consul minor → consul-k8s chart line (HashiCorp's compatibility matrix)
	install1 := regexp.MustCompile(`helm install \S+ hashicorp/consul --version (\S+) -n (\S+)`).FindSubmatch(raw)
	if install1 == nil {
		t.Fatal("consul-values.yaml: no `helm install NAME hashicorp/consul --version V -n NAMESPACE` line to install it with")
	}
	line, ok := chart[string(pinned[1])+"."+string(pinned[2])]
	if !ok || !regexp.MustCompile(`^`+regexp.QuoteMeta(line)+`\d+$`).Match(install1[1]) {
		t.Errorf("consul-values.yaml installs chart %s; Consul %s.%s.x comes with chart %sx", install1[1], pinned[1], pinned[2], line)
	}

	// The servers' Service, as the chart names it: <global.name>-server in the
	// namespace it is installed into, HTTP on 8500 (no TLS in these values).
	want := net.JoinHostPort(v.Global.Name+"-server."+string(install1[2])+".svc", "8500")
	cfgRaw, err := os.ReadFile(filepath.Join("base", "climesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgRaw)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Consul.Address != want {
		t.Errorf("base/climesh.yaml consul.address %q; consul-values.yaml's servers are at %s", cfg.Consul.Address, want)
	}
}
