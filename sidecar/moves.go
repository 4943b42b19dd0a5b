package sidecar

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/discovery"
	"github.com/climesh/climesh/model"
	"github.com/climesh/climesh/sidecar/rebalance"
)

// poolWatchWait bounds each of the sidecar's blocking queries on its pool.
const poolWatchWait = time.Minute

// moves wires --rebalance: the pool's health read from Consul exactly as the
// xds-server reads it (package discovery, on this one pool), the ring it
// gives, and the mover that asks misplaced tunnels to go home.
type moves struct {
	disc  *discovery.Discovery
	mover *rebalance.Mover
	pool  string
	log   *zap.Logger
}

func (s *Server) newMoves(reg prometheus.Registerer) (*moves, error) {
	cfg, rl := s.cfg, s.Relay
	watch := &config.Config{
		Consul: config.Consul{Address: cfg.Consul, WaitTime: poolWatchWait, RetryMin: config.DefaultConsulRetryMin, RetryMax: config.DefaultConsulRetryMax},
		Pools:  []config.Pool{{Name: cfg.Pool, ConsulService: cfg.Pool}},
	}
	// Blocking queries: this client waits up to poolWatchWait (plus Consul's
	// jitter) by design; past that the answer is not coming.
	src, err := discovery.ConsulSource(watch.Consul)
	if err != nil {
		return nil, fmt.Errorf("--consul: %w", err)
	}
	log := s.log.Named("rebalance")
	disc, err := discovery.New(watch, src, model.Fleet{}, log, discovery.NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		return nil, err
	}
	mover := rebalance.NewMover(reg)
	mover.Self, mover.Rate, mover.Settle, mover.Log = cfg.Instance(), cfg.RebalanceRate, cfg.RebalanceSettle, log
	mover.Ring = rebalance.RingConfig{Maglev: cfg.LBPolicy == string(config.Maglev), TableSize: cfg.MaglevTableSize,
		EntriesPerHost: cfg.RingEntriesPerHost, MinSize: cfg.RingMinSize, MaxSize: cfg.RingMaxSize}
	mover.Tunnels, mover.Ask, mover.Paused = rl.Tunnels, rl.AskToMove, s.draining.Load
	rl.HashKey, rl.TunnelOpened, rl.TunnelClosed = cfg.HashKey, mover.Opened, mover.Closed
	return &moves{disc: disc, mover: mover, pool: cfg.Pool, log: log}, nil
}

// run follows the pool and moves tunnels until ctx ends.
func (m *moves) run(ctx context.Context) {
	go m.disc.Run(ctx)
	go m.mover.Run(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.disc.Changed():
			if m.disc.Ready() != nil {
				continue // the pool not read yet: no ring, no moves
			}
			p, _ := m.disc.Current().Pool(m.pool)
			var healthy []string
			p.Each(func(in model.Instance) {
				if in.Health == model.Healthy {
					healthy = append(healthy, in.ID)
				}
			})
			m.mover.SetFleet(healthy, time.Now())
		}
	}
}
