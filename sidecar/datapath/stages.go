package datapath

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
)

// The stages of a tunnel, in the order newPipeline runs them (see pipeline.go).

// localStage answers the requests an SDK sends because it believes it owns the
// CLI, which a shared CLI must never see:
//   - connect: the sidecar authenticated already, with the CLI's token; the client's
//     token (its identity, not the CLI's secret) never reaches the CLI. The client
//     gets the CLI's own answer (protocol version).
//   - runtime.shutdown: a stdio SDK sends it on Stop to end "its" CLI; for a shared
//     CLI that means ending this connection only, which the SDK does next.
type localStage struct{ hello json.RawMessage }

func (s localStage) toCLI(_ context.Context, f *flow) {
	if f.msg.Kind != jsonrpc.Request {
		return
	}
	switch f.msg.Method {
	case protocol.MethodConnect:
		f.answer, _ = jsonrpc.ResultResponse(f.msg.ID, s.hello)
	case protocol.MethodRuntimeShutdown:
		f.answer, _ = jsonrpc.ResultResponse(f.msg.ID, struct{}{})
	}
}
func (localStage) toClient(context.Context, *flow) {}
func (localStage) refused(context.Context, *flow)  {}
func (localStage) close()                          {}

// policyStage is the Guard: every client message decided, CLI messages filtered
// to what the caller may see.
type policyStage struct {
	g       *Guard
	log     *zap.Logger
	metrics *relayMetrics
}

func (s policyStage) toCLI(ctx context.Context, f *flow) {
	start := time.Now()
	fwd, answer := s.g.inbound(ctx, f.msg)
	s.metrics.decision.Observe(time.Since(start).Seconds())
	if fwd == nil {
		s.metrics.refused.WithLabelValues("policy").Inc()
		s.log.Info("refused", zap.String("kind", f.msg.Kind.String()), zap.String("method", f.msg.Method), zap.String("session_id", f.msg.SessionID))
		f.answer, f.drop = answer, answer == nil
		return
	}
	f.msg = *fwd
}

func (s policyStage) toClient(ctx context.Context, f *flow) {
	body, send := s.g.outbound(ctx, f.msg, f.call)
	if !send {
		s.metrics.refused.WithLabelValues("event_filtered").Inc()
		f.drop = true
		return
	}
	f.msg.Raw = body // the same bytes, or a filtered answer (session lists)
}

func (s policyStage) refused(ctx context.Context, f *flow) { s.g.refused(ctx, f.msg) }
func (s policyStage) close()                               { s.g.Close() }

// lockStage serialises turns on a collab session: a session.send waits for the
// session's turn lock (off the tunnel's loop) or is answered busy.
type lockStage struct {
	g       *Guard
	metrics *relayMetrics
}

func (s lockStage) toCLI(_ context.Context, f *flow) {
	if !s.g.NeedsTurn(f.msg) {
		return
	}
	m := f.msg
	f.wait = func(ctx context.Context) []byte {
		start := time.Now()
		busy := s.g.TakeTurn(ctx, m)
		s.metrics.lockWait.Observe(time.Since(start).Seconds())
		if busy != nil {
			s.metrics.refused.WithLabelValues("session_busy").Inc()
		}
		return busy
	}
}
func (lockStage) toClient(context.Context, *flow) {}
func (lockStage) refused(context.Context, *flow)  {}
func (lockStage) close()                          {} // the policy stage releases the locks

// capacityStage resumes a session the sidecar released before a request that
// names it, and takes the answers to the sidecar's own requests (release, resume).
type capacityStage struct {
	ts  *tunnelSessions
	log *zap.Logger
}

func (s capacityStage) toCLI(ctx context.Context, f *flow) {
	answer, err := s.ts.fromClient(ctx, f.msg)
	if err != nil {
		s.log.Warn("forwarding to a session that could not be resumed", zap.Error(err))
	}
	f.answer = answer
}
func (s capacityStage) toClient(_ context.Context, f *flow) { f.drop = s.ts.fromCLI(f.msg) }
func (capacityStage) refused(context.Context, *flow)        {}
func (s capacityStage) close()                              { s.ts.close() }

// metricsStage counts the CLI's JSON-RPC errors by code.
type metricsStage struct{ metrics *relayMetrics }

func (metricsStage) toCLI(context.Context, *flow) {}
func (s metricsStage) toClient(_ context.Context, f *flow) {
	if f.msg.Kind != jsonrpc.Response || !f.msg.Failed() {
		return
	}
	var e struct {
		Code int `json:"code"`
	}
	if json.Unmarshal(f.msg.Error, &e) == nil {
		s.metrics.errors.WithLabelValues(strconv.Itoa(e.Code)).Inc()
	}
}
func (metricsStage) refused(context.Context, *flow) {}
func (metricsStage) close()                         {}
