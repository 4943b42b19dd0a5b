package e2e

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/tunnel"
)

// TestEdgeDecisionsLogged: every edge decision is in the xds-server's decision
// log (OPA's format), the refused and the allowed, with the client's bearer
// token masked out; the decision id the refused client is shown is the one in
// that log and in Envoy's access log line for the refused tunnel.
func TestEdgeDecisionsLogged(t *testing.T) {
	env := startChaosMesh(t, harness.MeshOptions{Instances: 1, DecisionLog: true})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// A tunnel of a tenant the mesh's pools do not admit: refused by the policy.
	_, err := tunnel.Dial(ctx, env.EdgeURL, http.Header{"Authorization": {"Bearer " + env.Token("mallory", "outsiders")}}, 1<<20)
	var refused *tunnel.RefusedError
	if !errors.As(err, &refused) || refused.Status != http.StatusForbidden {
		t.Fatalf("a tenant no pool admits: %v, want refused with 403", err)
	}
	if refused.DecisionID == "" {
		t.Fatalf("the refusal (%d %s) names no decision id", refused.Status, refused.Reason)
	}
	// An allowed tunnel and a turn.
	s := env.newSession(ctx, t, env.clientOf(ctx, t, "acme", "ann"))
	if _, err := ownTurn(ctx, s, "logged"); err != nil {
		t.Fatal(err)
	}
	var log string
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		b, err := os.ReadFile(env.DecisionLog)
		if err != nil {
			return err
		}
		log = string(b)
		if !strings.Contains(log, `"decision_id":"`+refused.DecisionID+`"`) {
			return errors.New("the refused decision is not in the decision log yet")
		}
		if !strings.Contains(log, `"result":{"allowed":true}`) {
			return errors.New("no allowed decision in the decision log yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, log)
	}
	if strings.Contains(log, env.Token("ann", "acme")[:40]) || strings.Contains(log, "Bearer ") {
		t.Fatalf("a bearer token reached the decision log:\n%s", log)
	}
	// Envoy's jwt_authn takes the Authorization header off once it verified the
	// token; its copy of the payload is what the mask erases.
	if !strings.Contains(log, `"erased":["/input/attributes/metadataContext"]`) {
		t.Fatalf("the payload's erasure is not recorded:\n%s", strings.ReplaceAll(log, "{", "<"))
	}
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		for _, line := range strings.Split(env.Envoy.Proc.Tail(200), "\n") {
			if strings.Contains(line, `"decision_id":"`+refused.DecisionID+`"`) && strings.Contains(line, `"response_code":`+itoa(refused.Status)) {
				return nil
			}
		}
		return errors.New("no access log line with the refused decision's id")
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, env.Envoy.Proc.Tail(20))
	}
	t.Logf("refused with %d, decision %s: in the decision log and Envoy's access log", refused.Status, refused.DecisionID)
}

func itoa(n int) string { return strconv.Itoa(n) }
