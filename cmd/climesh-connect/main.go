// Command climesh-connect is what an unchanged Copilot SDK talks to instead of the
// CLI. It carries each SDK connection through one WebSocket tunnel to the climesh
// edge (Envoy), with the caller's identity.
//
// stdio: the SDK spawns it as its CLI (StdioConnection{Path: "climesh-connect"}); it
// accepts and ignores the flags the SDK adds (--headless, --stdio, --log-level, ...).
//
//	CLIMESH_EDGE=ws://edge:10000/v1/rpc CLIMESH_TOKEN=... climesh-connect
//
// TCP: for apps that dial a URL (URIConnection{URL: "127.0.0.1:4321", ConnectionToken: <user token>}).
//
//	climesh-connect --listen 127.0.0.1:4321 --edge ws://edge:10000/v1/rpc
//
// Its settings are connector.Config: flags override environment variables, which
// override defaults. A flag or variable that does not parse or validate is printed
// with the reason and the process exits 2, before anything is dialled or served.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/climesh/climesh/config/field"
	"github.com/climesh/climesh/connector"
	"github.com/climesh/climesh/session/jsonrpc"
)

func main() {
	field.Main("climesh-connect", "Flags override environment variables (CLIMESH_*; empty counts as unset), which override defaults.",
		func() *flag.FlagSet { c := connector.DefaultConfig(); return c.FlagSet() },
		func() (connector.Config, error) { return connector.Load(os.Args[1:], os.LookupEnv) }, run)
}

// run serves SDK connections with a validated cfg until a signal.
func run(cfg connector.Config) error {
	events := &connector.Events{}
	if cfg.MetricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "climesh_connect_reconnects_total", Help: "Tunnels regained after a loss (sessions resumed).",
		}, func() float64 { return float64(events.Reconnects.Load()) }))
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "climesh_connect_moves_total", Help: "Tunnels moved to their user's home instance between turns, when a sidecar asked (climesh/move).",
		}, func() float64 { return float64(events.Moves.Load()) }))
		ml, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		go http.Serve(ml, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	o := cfg.Options(events)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.Listen == "" {
		err := connector.Serve(ctx, o, o.Token, jsonrpc.NewReader(os.Stdin, o.Limits), stdout{}, nil)
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	go func() { <-ctx.Done(); lis.Close() }()
	fmt.Fprintf(os.Stderr, "climesh-connect: listening on %s, edge %s\n", lis.Addr(), cfg.EdgeURL)
	for {
		c, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go serveTCP(ctx, o, c)
	}
}

// serveTCP reads the SDK's first message: a connect token there is the caller's.
func serveTCP(ctx context.Context, o connector.Options, c net.Conn) {
	defer c.Close()
	in := jsonrpc.NewReader(c, o.Limits)
	first, err := in.Read()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			c.Write(jsonrpc.Frame(jsonrpc.ErrorResponse(nil, jsonrpc.CodeParseError, err.Error(), nil)))
		}
		return
	}
	token := o.Token
	if t := connector.ConnectToken(first); t != "" {
		token = t
	}
	if err := connector.Serve(ctx, o, token, in, c, first); err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "climesh-connect: %s: %v\n", c.RemoteAddr(), err)
	}
}

// stdout is the SDK's end in stdio mode. Closing it (the tunnel ended) closes stdin
// too, so that the process exits and the SDK sees its "CLI" end instead of waiting.
type stdout struct{}

func (stdout) Write(b []byte) (int, error) { return os.Stdout.Write(b) }

func (stdout) Close() error {
	os.Stdin.Close()
	return os.Stdout.Close()
}
