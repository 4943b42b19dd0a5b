package sidecar

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/climesh/climesh/periodic"
	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/lock"
	"github.com/climesh/climesh/session/registry"

	"github.com/climesh/climesh/sidecar/datapath"
)

// Sweeper deletes sessions idle longer than a TTL, once, fleet-wide: only the
// sidecar holding the pool's sweeper lock in Consul sweeps, and it deletes each
// stale session through its own CLI (the pool shares session storage), then its
// registry record.
type Sweeper struct {
	Registry registry.Registry
	Locker   *lock.Locker
	Relay    *datapath.Relay // its CLI does the deleting
	Pool     string
	Instance string
	Log      *zap.Logger
	OnSwept  func(n int)
}

// Sweep runs once with ttl; it returns how many sessions it deleted (0 when
// another sidecar holds the sweeper lock).
func (s *Sweeper) Sweep(ctx context.Context, ttl time.Duration) (int, error) {
	lk, err := s.Locker.Acquire(ctx, "sweeper-"+s.Pool, s.Instance, 0)
	var busy *lock.BusyError
	if errors.As(err, &busy) {
		return 0, nil // another sidecar of the pool sweeps
	}
	if err != nil {
		return 0, err
	}
	defer lk.Release()
	records, err := s.Registry.List(ctx)
	if err != nil {
		return 0, err
	}
	var cli *datapath.CLIConn
	defer func() {
		if cli != nil {
			cli.Close()
		}
	}()
	n := 0
	for _, r := range records {
		if r.Pool != s.Pool || time.Since(r.LastActive) < ttl {
			continue
		}
		if cli == nil {
			if cli, err = s.Relay.Dialer().Dial(ctx); err != nil {
				return n, err
			}
		}
		if err := deleteSession(cli, r.ID); err != nil {
			s.Log.Warn("sweeper: delete", zap.String("session_id", r.ID), zap.Error(err))
			continue
		}
		if err := s.Registry.Delete(ctx, r.ID); err != nil {
			return n, err
		}
		n++
		s.Log.Info("swept an idle session", zap.String("session_id", r.ID), zap.Time("last_active", r.LastActive))
	}
	if s.OnSwept != nil && n > 0 {
		s.OnSwept(n)
	}
	return n, nil
}

// deleteSession sends session.delete on a CLI connection; a session the CLI does
// not know is gone already.
func deleteSession(cli *datapath.CLIConn, id string) error {
	_, err := cli.Call(protocol.MethodSessionDelete, map[string]string{"sessionId": id}, 10*time.Second)
	var ce *datapath.CallError
	if errors.As(err, &ce) && strings.Contains(strings.ToLower(ce.Message), "not found") {
		return nil
	}
	return err
}

// Run sweeps every interval with ttl until ctx ends.
func (s *Sweeper) Run(ctx context.Context, interval, ttl time.Duration) {
	periodic.Every(ctx, interval, func() bool {
		if _, err := s.Sweep(ctx, ttl); err != nil {
			s.Log.Warn("sweeper", zap.Error(err))
		}
		return true
	})
}
