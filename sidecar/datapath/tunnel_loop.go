package datapath

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/periodic"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/tunnel"
)

// pongWait is how long a client has to answer a keepalive ping before its tunnel
// is failed. The ping frame itself is what keeps idle timers quiet, so the answer
// may take longer than the interval: a busy client (or a busy machine) is not a
// dead one.
func pongWait(keepalive time.Duration) time.Duration { return max(3*keepalive, 10*time.Second) }

// answerAll answers the first request a client sends with an error and closes.
func (rl *Relay) answerAll(ctx context.Context, c *tunnel.Conn, code int, msg string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		body, err := c.Read(ctx)
		if err != nil {
			c.Fail(msg)
			return
		}
		m, err := jsonrpc.Parse(body)
		if err != nil || m.Kind != jsonrpc.Request {
			continue
		}
		c.Write(ctx, jsonrpc.ErrorResponse(m.ID, code, msg, nil))
		c.Fail(msg)
		return
	}
}

// relay runs one tunnel: each frame read once (strictly from the client, as
// the CLI wrote it from the CLI) and taken through the pipeline's stages.
func (rl *Relay) relay(ctx context.Context, log *zap.Logger, c *tunnel.Conn, cli *CLIConn, guard *Guard) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var closeOnce sync.Once
	finish := func(reason string, fail bool) {
		closeOnce.Do(func() {
			cancel()
			cli.Close()
			if fail {
				c.Fail(reason)
			} else {
				c.Close(reason)
			}
			log.Debug("tunnel closed", zap.String("reason", reason))
		})
	}
	p := rl.newPipeline(log, c, cli, guard)
	defer p.close()
	p.onError = func(err error) { finish(err.Error(), errors.Is(err, errCLIWrite)) }
	if rl.Keepalive > 0 {
		go rl.keepalive(ctx, c, finish)
	}
	go func() { // CLI -> client
		for {
			body, err := cli.Reader.Read()
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
					finish("copilot CLI closed the connection", true)
				} else {
					finish("copilot CLI sent a bad frame: "+err.Error(), true)
				}
				return
			}
			m, err := jsonrpc.ParseTrusted(body)
			if err != nil {
				finish("copilot CLI sent a message that is not JSON-RPC: "+err.Error(), true)
				return
			}
			if err := p.fromCLI(ctx, m); err != nil {
				p.onError(err)
				return
			}
		}
	}()
	for { // client -> CLI: what the CLI gets is what was decided on
		body, err := c.Read(ctx)
		if err != nil {
			finish("client closed", false)
			return
		}
		m, err := jsonrpc.Parse(body)
		if err != nil {
			rl.metrics.refused.WithLabelValues("not_jsonrpc").Inc()
			c.Write(ctx, jsonrpc.ErrorResponse(nil, jsonrpc.CodeParseError, err.Error(), nil))
			finish("not a JSON-RPC message", true)
			return
		}
		if err := p.fromClient(ctx, m); err != nil {
			p.onError(err)
			return
		}
	}
}

// newPipeline builds a tunnel's stages, in their order (see pipeline.go).
func (rl *Relay) newPipeline(log *zap.Logger, c *tunnel.Conn, cli *CLIConn, guard *Guard) *pipeline {
	calls := &callTable{max: rl.Bounds.Pending}
	if calls.max <= 0 {
		calls.max = DefaultBounds.Pending
	}
	tt := newTunnelTurns(&rl.turns, calls)
	tt.observe = rl.metrics.turn.Observe
	inbound := []stage{localStage{hello: cli.Hello}}
	outbound := []stage{}
	var policy, lock stage
	if guard != nil {
		policy, lock = policyStage{g: guard, log: log, metrics: rl.metrics}, lockStage{g: guard, metrics: rl.metrics}
		inbound = append(inbound, policy)
	}
	if rl.Capacity != nil && rl.Users == nil {
		capacity := capacityStage{ts: newTunnelSessions(rl.Capacity, log, func(b []byte) error { _, err := cli.Write(b); return err }, tt.busy), log: log}
		inbound, outbound = append(inbound, capacity), append(outbound, capacity)
	}
	if lock != nil {
		inbound = append(inbound, lock)
	}
	metrics := metricsStage{rl.metrics}
	outbound = append(outbound, calls, tt)
	stages := append(slices.Clone(inbound), calls, tt, metrics) // each once: those that also go out are inbound
	var deadline *turnDeadline
	if rl.TurnTimeout > 0 {
		deadline = newTurnDeadline(rl.TurnTimeout, log, func(b []byte) error { _, err := cli.Write(b); return err }, rl.metrics.turnTimeouts.Inc)
		outbound, stages = append(outbound, deadline), append(stages, deadline)
	}
	outbound = append(outbound, metrics)
	if policy != nil {
		outbound = append(outbound, policy)
	}
	toCLICount, toClientCount := rl.metrics.messages.WithLabelValues("to_cli"), rl.metrics.messages.WithLabelValues("to_client")
	p := &pipeline{inbound: inbound, outbound: outbound, stages: stages, calls: calls,
		toCLIw: func(b []byte) error { _, err := cli.Write(b); return err },
		toClient: func(ctx context.Context, b []byte) error {
			if err := c.Write(ctx, b); err != nil {
				return errClientGone
			}
			toClientCount.Inc()
			return nil
		},
		sent: func(m jsonrpc.Message) {
			toCLICount.Inc()
			if m.Kind == jsonrpc.Request && log.Core().Enabled(zap.DebugLevel) {
				log.Debug("forwarded", zap.String("method", m.Method), zap.String("session_id", m.SessionID), zap.String("id", m.IDKey()))
			}
		},
	}
	if deadline != nil {
		deadline.inject = func(m jsonrpc.Message) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := p.fromCLI(ctx, m)
			if err != nil && p.onError != nil {
				p.onError(err)
			}
			return err
		}
	}
	return p
}

// keepalive pings the client every rl.Keepalive until ctx ends; a client that
// does not answer within pongWait fails the tunnel.
func (rl *Relay) keepalive(ctx context.Context, c *tunnel.Conn, finish func(string, bool)) {
	periodic.Every(ctx, rl.Keepalive, func() bool {
		pctx, cancel := context.WithTimeout(ctx, pongWait(rl.Keepalive))
		err := c.Ping(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			finish("client did not answer a keepalive ping", true)
			return false
		}
		return true
	})
}
