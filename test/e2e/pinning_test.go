package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/tunnel"
)

// pinnedSession opens a tunnel through the edge as user (asking for pin, when
// set), creates a session on it and returns the upgrade response's pin and the
// instance that created the session (from the registry).
func (env *meshEnv) pinnedSession(t *testing.T, user, pin string) (gotPin, instance string) {
	t.Helper()
	h := http.Header{protocol.HeaderAuthorization: {"Bearer " + env.Token(user, "acme")}}
	if pin != "" {
		h.Set(protocol.HeaderPin, pin)
	}
	c, err := tunnel.Dial(t.Context(), env.EdgeURL, h, 1<<20)
	if err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	defer c.Close("done")
	for i, req := range []string{`{"jsonrpc":"2.0","id":1,"method":"connect","params":{}}`,
		fmt.Sprintf(`{"jsonrpc":"2.0","id":2,"method":"session.create","params":{"model":"double-1","provider":{"type":"openai","baseUrl":%q,"apiKey":"k"}}}`, env.Model.URL)} {
		if err := c.Write(t.Context(), []byte(req)); err != nil {
			t.Fatal(err)
		}
		for {
			body, err := c.Read(t.Context())
			if err != nil {
				t.Fatalf("%s: %v", user, err)
			}
			m, _ := jsonrpc.ParseTrusted(body)
			if m.Kind != jsonrpc.Response {
				continue // events
			}
			if i == 1 {
				var r struct {
					Result struct{ SessionID string } `json:"result"`
				}
				if err := json.Unmarshal(body, &r); err != nil || r.Result.SessionID == "" {
					t.Fatalf("%s: session.create answered %s", user, body)
				}
				reg := &registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}
				rec, err := reg.Get(t.Context(), r.Result.SessionID)
				if err != nil || rec == nil {
					t.Fatalf("%s: no record (%v)", user, err)
				}
				instance = rec.Instance
			}
			break
		}
	}
	return c.Pin, instance
}

// TestReconnectPinnedToItsInstance: with identity.pin_header, Envoy names each
// tunnel's instance on the upgrade response, and a tunnel that sends it back
// reaches that instance even where the ring would send its user elsewhere —
// which is what lets climesh-connect's reconnect find sessions kept on one
// instance's disk. A pin to a draining instance is ignored, so a drain still
// moves its users.
func TestReconnectPinnedToItsInstance(t *testing.T) {
	env := startMesh(t)
	pinOf, ringOf := map[string]string{}, map[string]string{}
	for i := 0; len(pinOf) < 2 && i < 40; i++ {
		user := fmt.Sprintf("pin-%02d", i)
		pin, where := env.pinnedSession(t, user, "")
		if pin == "" {
			t.Fatal("the upgrade response names no instance: is the stateful_session filter on?")
		}
		if other, ok := pinOf[where]; ok && other != pin {
			t.Fatalf("%s was named %q and %q", where, other, pin)
		}
		pinOf[where], ringOf[user] = pin, where
	}
	if len(pinOf) < 2 {
		t.Fatalf("40 users all hashed to %v", pinOf)
	}
	// Each user, pinned to the instance the ring does not give them, lands there.
	moved := 0
	for user, home := range ringOf {
		for instance, pin := range pinOf {
			if instance == home {
				continue
			}
			if _, where := env.pinnedSession(t, user, pin); where != instance {
				t.Fatalf("%s pinned to %s (%s) reached %s", user, instance, pin, where)
			}
			moved++
		}
	}
	t.Logf("%d users reached the instance their pin named, not their ring's", moved)
	// A pin to a draining instance is not honoured: the drain still moves users.
	var drainedPin, drained string
	for instance, pin := range pinOf {
		drained, drainedPin = instance, pin
		break
	}
	if err := env.Consul.Client.Agent().EnableServiceMaintenance(drained, "pin test"); err != nil {
		t.Fatal(err)
	}
	defer env.Consul.Client.Agent().DisableServiceMaintenance(drained)
	err := harness.Poll(t.Context(), 20*time.Millisecond, func() error {
		hosts, err := env.Envoy.Hosts("pool/copilot")
		if err != nil {
			return err
		}
		for _, h := range hosts {
			if h.Hostname == drained && h.Health == "DRAINING" {
				return nil
			}
		}
		return fmt.Errorf("%s not draining in envoy: %v", drained, hosts)
	})
	if err != nil {
		t.Fatal(err)
	}
	for user := range ringOf {
		if _, where := env.pinnedSession(t, user, drainedPin); where == drained {
			t.Fatalf("%s reached %s, which is draining, by its pin", user, drained)
		}
	}
	if err := env.Consul.Client.Agent().DisableServiceMaintenance(drained); err != nil {
		t.Fatal(err)
	}
	err = harness.Poll(t.Context(), 20*time.Millisecond, func() error {
		hosts, err := env.Envoy.Hosts("pool/copilot")
		if err != nil {
			return err
		}
		for _, h := range hosts {
			if h.Hostname == drained && h.Health != "HEALTHY" {
				return fmt.Errorf("%s still %s", drained, h.Health)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
