// Command chat-server is the seed guide's chat application rebuilt on climesh: a
// plain Copilot Go SDK app with no pool, balancer, lock or ownership code. Every
// user's calls go through climesh-connect to the mesh, which routes the user to
// their CLI, checks that they own the session they name, and serialises the
// turns of a shared session.
//
//	climesh-connect --listen 127.0.0.1:4321 --edge ws://127.0.0.1:10000/v1/rpc &
//	chat-server --listen 127.0.0.1:8080 --connect 127.0.0.1:4321 \
//	    --edge ws://127.0.0.1:10000/v1/rpc --climesh-connect climesh-connect \
//	    --provider-url http://127.0.0.1:11434/v1 --model gpt-4.1
//
// Callers authenticate with `Authorization: Bearer <token>`; the token goes to the
// edge as is (Envoy verifies it), so the app never decodes it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "chat-server:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	listen := flag.String("listen", "127.0.0.1:8080", "HTTP `address`")
	flag.StringVar(&o.connectAddr, "connect", "127.0.0.1:4321", "climesh-connect's TCP `address` (its --listen)")
	flag.StringVar(&o.edgeURL, "edge", "", "edge tunnel `URL`, for /team-chat (climesh-connect over stdio with CLIMESH_SESSION)")
	flag.StringVar(&o.connectBin, "climesh-connect", "climesh-connect", "climesh-connect `executable`, for /team-chat")
	flag.StringVar(&o.model, "model", "gpt-4.1", "model `name`")
	flag.StringVar(&o.providerType, "provider-type", "openai", "bring-your-own-key provider `type` (empty: the CLI's own login)")
	flag.StringVar(&o.providerURL, "provider-url", "", "provider base `URL`")
	flag.StringVar(&o.providerKey, "provider-key", os.Getenv("CHAT_PROVIDER_KEY"), "provider API `key` (env CHAT_PROVIDER_KEY)")
	flag.DurationVar(&o.turnTimeout, "turn-timeout", 2*time.Minute, "longest wait for a reply")
	flag.DurationVar(&o.lockWait, "team-lock-wait", 30*time.Second, "/team-chat: how long a message waits for another member's turn")
	flag.Parse()

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	app := newApp(o, log)
	defer app.close()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv := &http.Server{Handler: app.routes(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Info("serving", "listen", lis.Addr().String(), "connect", o.connectAddr)
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
