package sidecar

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/sidecar/datapath"
)

// Health pings the CLI every Interval over one long-lived authenticated
// connection (redialled when it breaks) and keeps the last answer. It is what the
// admin listener's /readyz serves and what the Consul registration reports: a
// readiness probe and a Consul check that cannot disagree. It runs with or
// without Consul.
type Health struct {
	Log      *zap.Logger
	Interval time.Duration // how often the CLI is pinged; each ping may take as long (at most 5s)
	// Failures is how many pings in a row must fail before a passing CLI is
	// reported failing (Envoy's unhealthy_threshold, a probe's
	// failureThreshold): one slow answer under load does not take the
	// instance out of routing. 0 or 1: the first. A CLI that exits fails at
	// once (Fail).
	Failures int
	CLI      datapath.CLIDialer
	// Probe, when set, replaces the CLI ping (isolated mode has no single CLI).
	Probe func(context.Context) error
	// Load, when set, is appended to a passing result's output: the instance's
	// load as Consul shows it.
	Load func() string
	// Report, when set, hears every result (the Consul registration).
	Report func(ok bool, output string)

	mu      sync.Mutex
	ok      bool
	output  string
	changed bool // the CLI moved: drop the ping connection
}

// Current is the last result: ok, and what the ping said.
func (h *Health) Current() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.ok && h.output == "" {
		return false, "the copilot CLI has not answered a ping yet"
	}
	return h.ok, h.output
}

// SetCLI points the ping at a restarted CLI.
func (h *Health) SetCLI(addr, token string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.CLI.Addr, h.CLI.Token = addr, token
	h.changed = true
}

// Fail records a failure now, without waiting for the next ping (the CLI
// exited), and reports it.
func (h *Health) Fail(reason string) { h.record(false, reason) }

func (h *Health) record(ok bool, output string) {
	h.mu.Lock()
	h.ok, h.output = ok, output
	report := h.Report
	h.mu.Unlock()
	if report != nil {
		report(ok, output)
	}
}

func (h *Health) cli() (datapath.CLIDialer, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed := h.changed
	h.changed = false
	return h.CLI, changed
}

// Run pings until ctx ends, the first time at once.
func (h *Health) Run(ctx context.Context) {
	var conn *datapath.CLIConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	t := time.NewTicker(h.Interval)
	defer t.Stop()
	missed := 0 // pings failed in a row
	for {
		var err error
		if h.Probe != nil {
			err = h.Probe(ctx)
		} else {
			err = h.ping(ctx, &conn)
		}
		if err != nil {
			if conn != nil {
				conn.Close()
				conn = nil
			}
			missed++
			if ok, _ := h.Current(); ok && missed < h.Failures {
				h.Log.Warn("CLI ping failed; still passing", zap.Error(err), zap.Int("failed_in_a_row", missed), zap.Int("fails_after", h.Failures))
			} else {
				h.Log.Warn("CLI health check failed", zap.Error(err), zap.Int("failed_in_a_row", missed))
				h.record(false, err.Error())
			}
		} else {
			missed = 0
			output := "copilot CLI answered ping"
			if h.Load != nil {
				output += "; " + h.Load()
			}
			h.record(true, output)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (h *Health) ping(ctx context.Context, conn **datapath.CLIConn) error {
	dialer, changed := h.cli()
	if changed && *conn != nil {
		(*conn).Close()
		*conn = nil
	}
	// Each ping — a new connection's handshake included — gets the interval
	// (at most 5s): a hung CLI fails Failures pings within (Failures+1) ×
	// Interval, whatever the dialer's own time-out.
	limit := min(h.Interval, 5*time.Second)
	if *conn == nil {
		dctx, cancel := context.WithTimeout(ctx, limit)
		c, err := dialer.Dial(dctx)
		cancel()
		if err != nil {
			return fmt.Errorf("ping the copilot CLI: %w", err)
		}
		*conn = c
	}
	if _, err := (*conn).Call(protocol.MethodPing, map[string]string{"message": "climesh"}, limit); err != nil {
		return fmt.Errorf("ping the copilot CLI: %w", err)
	}
	return nil
}
