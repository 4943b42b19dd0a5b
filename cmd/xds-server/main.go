// Command xds-server is climesh's control plane: it learns Copilot CLI instances
// from Consul (or a static list), and serves Envoy its listeners, routes, clusters
// and endpoints over ADS.
//
//	xds-server [--config FILE] [--log-level info] [--check] [--print-default-config]
//
// Without --config it runs the embedded default: the demo's production-shaped config
// (a static fleet, JWT, the built-in policy), whose key files `make demo` writes into
// the working directory. SIGHUP
// reloads --config; a config that does not load is refused and the running one stays.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/climesh/climesh/config"
	"github.com/climesh/climesh/controlplane"
	"github.com/climesh/climesh/periodic"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "xds-server:", err)
		os.Exit(1)
	}
}

func run() error {
	configPath := flag.String("config", "", "YAML config `file` (default: the embedded demo config)")
	logLevel := flag.String("log-level", "info", "log `level`: debug, info, warn, error")
	check := flag.Bool("check", false, "validate the config, print the errors and exit")
	printDefault := flag.Bool("print-default-config", false, "print the embedded default config and exit")
	flag.Parse()

	if *printDefault {
		_, err := os.Stdout.Write(config.DefaultYAML())
		return err
	}
	cfg, err := load(*configPath)
	if err != nil {
		return err
	}
	if *check {
		fmt.Println("config ok")
		return nil
	}
	level, err := zapcore.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.DisableStacktrace = true
	log, err := zc.Build()
	if err != nil {
		return err
	}
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := controlplane.New(cfg, log.Named("controlplane"))
	if *configPath != "" {
		reload := make(chan struct{}, 1)
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		go func() {
			for range hup {
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}()
		// The files the config names are read again when they change (a
		// rotated JWKS or edge credential), as on SIGHUP.
		files := newFileWatch(cfg.ReferencedFiles())
		go func() {
			interval := cfg.Policy.WatchInterval
			if interval <= 0 {
				interval = time.Second // no policy: watched as often as its default
			}
			periodic.Every(ctx, interval, func() bool {
				if files.changed() {
					log.Info("a file the config names changed; reloading")
					select {
					case reload <- struct{}{}:
					default:
					}
				}
				return true
			})
		}()
		go func() {
			for range reload {
				next, err := load(*configPath)
				if err != nil {
					srv.ReloadFailed(err)
					continue
				}
				files.set(next.ReferencedFiles())
				srv.Reload(next)
			}
		}()
	}
	return srv.Run(ctx)
}

func load(path string) (*config.Config, error) {
	data := config.DefaultYAML()
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, err
		}
	}
	cfg, err := config.Load(data)
	if err == nil {
		err = cfg.ResolveFiles()
	}
	switch {
	case err != nil && path != "":
		return nil, fmt.Errorf("%s: %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("the embedded default config (the demo's; see --print-default-config) reads its JWKS, edge credential and identity keys from the working directory, where `make demo` writes them: run it there, or give --config: %w", err)
	}
	return cfg, nil
}
