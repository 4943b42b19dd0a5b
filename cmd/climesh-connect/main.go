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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/climesh/climesh/connector"
	"github.com/climesh/climesh/session/jsonrpc"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "climesh-connect:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("climesh-connect", flag.ContinueOnError)
	edge := fs.String("edge", os.Getenv("CLIMESH_EDGE"), "edge tunnel `URL` (env CLIMESH_EDGE), e.g. ws://127.0.0.1:10000/v1/rpc")
	token := fs.String("token", os.Getenv("CLIMESH_TOKEN"), "caller's bearer `token` (env CLIMESH_TOKEN)")
	user := fs.String("user", os.Getenv("CLIMESH_USER"), "x-climesh-user for edges that trust client headers (env CLIMESH_USER)")
	tokenAsUser := fs.Bool("token-as-user", os.Getenv("CLIMESH_TOKEN_AS_USER") != "", "send each connection's token as x-climesh-user too: development edges that trust client headers and verify no JWT (env CLIMESH_TOKEN_AS_USER)")
	session := fs.String("session", os.Getenv("CLIMESH_SESSION"), "shared-session `name` (env CLIMESH_SESSION)")
	lockWait := fs.Duration("lock-wait", envDuration("CLIMESH_LOCK_WAIT"), "shared sessions: wait this long for another member's turn instead of failing busy (env CLIMESH_LOCK_WAIT)")
	reconnect := fs.Duration("reconnect", envDurationOr("CLIMESH_RECONNECT", time.Minute), "when a tunnel is lost, keep trying this long to regain it and resume the sessions (0: give up at once; env CLIMESH_RECONNECT)")
	metricsAddr := fs.String("metrics-listen", "", "serve Prometheus /metrics on `host:port` (reconnects)")
	listen := fs.String("listen", "", "TCP mode: accept SDK connections on `host:port` (default: stdio)")
	maxFrame := fs.Int("max-frame-bytes", jsonrpc.DefaultLimits.MaxFrameBytes, "largest JSON-RPC message")
	// Flags the SDK passes to what it believes is the CLI: accepted, ignored.
	for _, b := range []string{"headless", "no-auto-update", "stdio", "no-auto-login", "remote"} {
		fs.Bool(b, false, "ignored (passed by the Copilot SDK)")
	}
	for _, s := range []string{"log-level", "auth-token-env", "session-idle-timeout", "port"} {
		fs.String(s, "", "ignored (passed by the Copilot SDK)")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *edge == "" {
		return errors.New("no edge: set --edge or CLIMESH_EDGE (ws://host:port/v1/rpc)")
	}
	events := &connector.Events{}
	if *metricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "climesh_connect_reconnects_total", Help: "Tunnels regained after a loss (sessions resumed).",
		}, func() float64 { return float64(events.Reconnects.Load()) }))
		ml, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		go http.Serve(ml, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	o := connector.Options{Events: events, EdgeURL: *edge, Token: *token, User: *user, TokenAsUser: *tokenAsUser, Session: *session, LockWait: *lockWait, Reconnect: *reconnect,
		Limits: jsonrpc.Limits{MaxHeaderBytes: jsonrpc.DefaultLimits.MaxHeaderBytes, MaxFrameBytes: *maxFrame}}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *listen == "" {
		err := connector.Serve(ctx, o, o.Token, jsonrpc.NewReader(os.Stdin, o.Limits), stdout{}, nil)
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	go func() { <-ctx.Done(); lis.Close() }()
	fmt.Fprintf(os.Stderr, "climesh-connect: listening on %s, edge %s\n", lis.Addr(), *edge)
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

func envDuration(name string) time.Duration { return envDurationOr(name, 0) }

func envDurationOr(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}
