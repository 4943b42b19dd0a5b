package e2e

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
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

// TestJWKSRotatesLive: the issuer's key set is replaced in its file (a
// rotated Secret); without a restart or SIGHUP the xds-server reads it again
// and Envoy verifies with the new keys — a token of the new key is admitted
// within the bound, one of the retired key refused.
func TestJWKSRotatesLive(t *testing.T) {
	env := startChaosMesh(t, harness.MeshOptions{Instances: 1})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	next, err := harness.NewIssuerAt(filepath.Join(t.TempDir(), "next-jwks.json"), env.Issuer.Issuer, env.Issuer.Audience)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(token string) error {
		c, err := tunnel.Dial(ctx, env.EdgeURL, http.Header{"Authorization": {"Bearer " + token}}, 1<<20)
		if err == nil {
			c.Close("")
		}
		return err
	}
	retired, fresh := env.Token("ann", "acme"), next.Token("ann", "acme", nil, time.Hour)
	if err := dial(fresh); err == nil {
		t.Fatal("a token of a key not yet in the key set was admitted")
	}
	if err := dial(retired); err != nil {
		t.Fatalf("the current key's token: %v", err)
	}
	jwks, err := os.ReadFile(next.JWKSPath)
	if err != nil {
		t.Fatal(err)
	}
	rotated := time.Now()
	if err := os.WriteFile(env.Issuer.JWKSPath, jwks, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(ctx, 50*time.Millisecond, func() error { return dial(fresh) }); err != nil {
		t.Fatalf("the new key's token was not admitted after the rotation: %v", err)
	}
	took := time.Since(rotated)
	var refused *tunnel.RefusedError
	if err := dial(retired); !errors.As(err, &refused) || refused.Status != http.StatusUnauthorized {
		t.Fatalf("the retired key's token after the rotation: %v, want 401", err)
	}
	t.Logf("JWKS rotated in its file: the new key admitted %v later (no restart, no SIGHUP)", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the rotation took %v, bound 5s", took)
	}
}
