// Command climesh-envoy-drain drains an Envoy before its pod stops: its
// listeners drain gracefully and it waits until no connection is left, or
// --timeout. Run as a shutdown-manager container beside Envoy (--listen): Envoy's
// preStop hook GETs /shutdown, which answers once the drain is over; the
// container itself waits for that drain before it exits on SIGTERM. Without
// --listen it drains once and exits (a preStop exec where the binary is at hand).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/climesh/climesh/config/field"
	"github.com/climesh/climesh/envoydrain"
)

func main() {
	field.Main("climesh-envoy-drain", "Drains an Envoy's listeners through its admin API and waits for its connections.",
		func() *flag.FlagSet { c := envoydrain.DefaultConfig(); return c.FlagSet() },
		func() (envoydrain.Config, error) { return envoydrain.Load(os.Args[1:]) }, run)
}

func run(cfg envoydrain.Config) error {
	d := envoydrain.Drainer{Admin: cfg.Admin, Poll: cfg.Poll, MinDrain: cfg.MinDrain}
	drain := func() (int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		return d.Drain(ctx)
	}
	if cfg.Listen == "" {
		left, err := drain()
		fmt.Fprintf(os.Stderr, "climesh-envoy-drain: %d connections left\n", left)
		return err
	}
	// One drain per process, however many times /shutdown is called (the
	// kubelet retries nothing, but an operator might).
	var once sync.Once
	started, done := make(chan struct{}), make(chan struct{})
	var left int
	var derr error
	start := func() {
		once.Do(func() {
			close(started)
			go func() { left, derr = drain(); close(done) }()
		})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /shutdown", func(w http.ResponseWriter, r *http.Request) {
		start()
		select {
		case <-done:
		case <-r.Context().Done():
			return
		}
		if derr != nil {
			http.Error(w, derr.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "drained; %d connections left\n", left)
	})
	srv := &http.Server{Addr: cfg.Listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ListenAndServe() }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	select {
	case err := <-serveErr:
		return err
	case <-sig:
	}
	// The kubelet runs every container's preStop hook at once and sends SIGTERM
	// to a container as its own hook ends — this one has none, so SIGTERM may
	// come before Envoy's hook has called /shutdown. Wait a moment for it, then
	// for the drain it started.
	select {
	case <-started:
		<-done
	case <-time.After(5 * time.Second):
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
