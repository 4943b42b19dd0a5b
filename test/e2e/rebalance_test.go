package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/ring"
	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/tunnel"
)

// TestRingPredictsEnvoy: the ring a sidecar computes (package ring) sends
// every user where real Envoy sends a new tunnel of theirs — on three
// instances and after a fourth joins — so that a sidecar can tell which of
// its tunnels a fleet change gave another home.
func TestRingPredictsEnvoy(t *testing.T) {
	env := startChaosMesh(t, harness.MeshOptions{Instances: 4})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ids := []string{harness.InstanceID(0), harness.InstanceID(1), harness.InstanceID(2), harness.InstanceID(3)}
	predict := func(hosts []string, user string) string {
		return ring.New(hosts, ring.Size(config.DefaultRingEntries, 0, config.DefaultMaxRingSize, len(hosts)), config.DefaultMaxRingSize).Home(user)
	}
	// The pin Envoy answers is the upstream address, base64: which sidecar.
	byPin := map[string]string{}
	for _, id := range ids {
		byPin[base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "127.0.0.1:%d", env.Sidecars[id].Port))] = id
	}
	landing := func(user string) (string, error) {
		c, err := tunnel.Dial(ctx, env.EdgeURL, bearer(env.Token(user, "acme")), 1<<20)
		if err != nil {
			return "", err // e.g. 503 while Envoy still routes to an instance that left
		}
		defer c.Close("")
		if id, ok := byPin[c.Pin]; ok {
			return id, nil
		}
		return "", fmt.Errorf("%s: unknown pin %q", user, c.Pin)
	}
	// mismatch is the first user Envoy sends elsewhere than the ring does.
	mismatch := func(hosts []string) (map[string]int, error) {
		counts := map[string]int{}
		for i := range 40 {
			user := fmt.Sprintf("ringuser-%d", i)
			got, err := landing(user)
			if err != nil {
				return nil, err
			}
			if want := predict(hosts, user); got != want {
				return nil, fmt.Errorf("%d instances: %s landed on %s, the ring says %s", len(hosts), user, got, predict(hosts, user))
			}
			counts[got]++
		}
		return counts, nil
	}
	counts, err := mismatch(ids)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("4 instances: 40 users where the ring says: %v", counts)
	// One instance leaves: once Envoy has seen it go, the others have exactly
	// its users, as the ring of three says.
	env.Sidecars[ids[3]].Close()
	if err := harness.Poll(ctx, 100*time.Millisecond, func() (err error) {
		counts, err = mismatch(ids[:3])
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("3 instances: 40 users where the ring says: %v", counts)
}
