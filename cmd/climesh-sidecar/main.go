// Command climesh-sidecar runs beside one Copilot CLI: it terminates climesh tunnels
// on --listen, relays them to the CLI with the CLI's own token, and keeps the
// instance registered in Consul with a check that follows the CLI's ping.
//
//	climesh-sidecar --listen 127.0.0.1:7001 --pool copilot --consul 127.0.0.1:8500 \
//	    --cli-command copilot --cli-home /var/lib/climesh/cli-1
//	climesh-sidecar ... --cli-address 127.0.0.1:4321   # token from $COPILOT_CONNECTION_TOKEN
//
// Its settings are sidecar.Config. A flag or variable that does not parse, or a
// combination that does not validate (collab without --consul and --policy, a
// lock TTL Consul would refuse, ...), is printed with the reason and the process
// exits 2 before anything starts; a failure while starting or running exits 1.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/climesh/climesh/config/field"
	"github.com/climesh/climesh/sidecar"
)

func main() {
	field.Main("climesh-sidecar", "The token of the CLI that --cli-address names is read from $"+sidecar.TokenEnv+".",
		func() *flag.FlagSet { c := sidecar.DefaultConfig(); return c.FlagSet() },
		func() (sidecar.Config, error) { return sidecar.Load(os.Args[1:], os.LookupEnv) }, run)
}

// run builds the sidecar from a validated cfg and serves until SIGTERM or
// POST /drain.
func run(cfg sidecar.Config) error {
	zc := zap.NewProductionConfig()
	level, err := zap.ParseAtomicLevel(cfg.LogLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	zc.Level = level
	zc.DisableStacktrace = true
	log, err := zc.Build(zap.WithCaller(false))
	if err != nil {
		return err
	}
	log = log.Named("sidecar").With(zap.String("instance", cfg.Instance()))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := sidecar.New(ctx, cfg, log, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	return s.Run(ctx)
}
