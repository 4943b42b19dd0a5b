package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// TestDecisionsLogged: every edge decision is in the xds-server's decision
// log (OPA's format), the refused and the allowed, with the client's bearer
// token masked out; the decision id the refused client is shown is the one in
// that log and in Envoy's access log line for the refused tunnel. Every
// per-message decision is in the instance's sidecar's log the same way: a
// session.create allowed without its provider key, another user's resume
// refused under the id the refusal names.
func TestDecisionsLogged(t *testing.T) {
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

	// Per message: bob (ann's tenant) resumes ann's session on the instance
	// that holds it; the sidecar refuses and names the decision.
	_, send, recv := rawTunnel(t, env.EdgeURL, bearer(env.Token("bob", "acme")))
	call(t, send, recv, 1, "connect", map[string]string{})
	answer := call(t, send, recv, 2, "session.resume", map[string]any{"sessionId": s.SessionID,
		"provider": map[string]string{"type": "openai", "baseUrl": env.Model.URL, "apiKey": "bobs-own-secret-key"}})
	code, _ := errorOf(answer)
	data, _ := answer["error"].(map[string]any)["data"].(map[string]any)
	messageID, _ := data["decision_id"].(string)
	if code != -32012 || messageID == "" {
		t.Fatalf("bob's resume of ann's session: %v, want -32012 naming its decision", answer)
	}
	sidecarLog := env.SidecarDecisionLogs[harness.InstanceID(0)]
	var events []map[string]any
	err = harness.Poll(ctx, 50*time.Millisecond, func() error {
		b, err := os.ReadFile(sidecarLog)
		if err != nil {
			return err
		}
		log, events = string(b), nil
		for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
			var ev map[string]any
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				return fmt.Errorf("a decision log line is not JSON: %q", line)
			}
			events = append(events, ev)
		}
		if !strings.Contains(log, `"decision_id":"`+messageID+`"`) {
			return errors.New("bob's refused decision is not in the sidecar's log yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, log)
	}
	var createAllowed, resumeRefused bool
	for _, ev := range events {
		input, _ := ev["input"].(map[string]any)
		result, _ := ev["result"].(map[string]any)
		if ev["path"] != "climesh/session/decision" || ev["decision_id"] == "" || ev["timestamp"] == nil {
			t.Fatalf("not a decision in OPA's format: %v", ev)
		}
		switch {
		case input["method"] == "session.create" && input["user"] == "ann" && result["allow"] == true:
			createAllowed = true
		case ev["decision_id"] == messageID:
			resumeRefused = input["method"] == "session.resume" && input["user"] == "bob" && input["session_id"] == s.SessionID && result["allow"] == false
		}
	}
	if !createAllowed || !resumeRefused {
		t.Fatalf("want ann's create allowed (%v) and bob's resume refused under %s (%v) in:\n%s", createAllowed, messageID, resumeRefused, log)
	}
	// Both provider keys (the env's and bob's) are masked, and the erasure said.
	if strings.Contains(log, env.provider().APIKey) || strings.Contains(log, "bobs-own-secret-key") || !strings.Contains(log, `"/input/params/provider/apiKey"`) {
		t.Fatalf("a provider key reached the sidecar's decision log, or its erasure is not recorded:\n%s", log)
	}
	t.Logf("per message: bob refused under decision %s, in the sidecar's log with %d decisions, keys masked", messageID, len(events))
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
