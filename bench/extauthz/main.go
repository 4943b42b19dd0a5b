// Command extauthz measures the xds-server's ext_authz service under load, with
// decision logging off and on: the real xds-server binary on the shipped policy
// (builtin, as the demo runs it; decision logs to a file when on), and a load
// generator in a process of its own (this program re-executed as `extauthz
// load`) sending the same admitted CheckRequest at each fixed rate over gRPC on
// loopback. A sample is one request's latency from when it was due, so that a
// server falling behind shows in the tail.
//
//	go run ./bench/extauthz [-rates 1000,3000,6000] [-duration 5s] [-workers 64] [-logging floor,off,on]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/climesh/climesh/bench/authzload"
	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/test/harness"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "load" {
		if err := load(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "extauthz load:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "floor-server" {
		if err := floorServer(); err != nil {
			fmt.Fprintln(os.Stderr, "extauthz floor-server:", err)
			os.Exit(1)
		}
		return
	}
	rates := flag.String("rates", "1000,3000,6000", "comma-separated request rates per second")
	dur := flag.Duration("duration", 5*time.Second, "length of each run")
	workers := flag.Int("workers", 64, "concurrent callers in the load generator")
	logging := flag.String("logging", "off,on", "comma-separated: off, on (decision logs to a file), floor (a gRPC server that allows without deciding: what the machine and the load generator cost)")
	flag.Parse()
	if err := run(*rates, *logging, *dur, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "extauthz:", err)
		os.Exit(1)
	}
}

// result is what the load generator prints.
type result struct {
	Samples  int     `json:"samples"`
	P50, P99 float64 // milliseconds
	Max      float64
	Achieved float64 `json:"achieved"`
	Errors   int64   `json:"errors"`
	TailNote string  `json:"tail_note"` // "max" when too few samples for a p99
}

func run(rates, logging string, dur time.Duration, workers int) error {
	root, err := harness.Root()
	if err != nil {
		return err
	}
	request := filepath.Join(root, "policy", "testdata", "check", "admitted.json")
	fmt.Print(stats.Provenance())
	fmt.Printf("# ext_authz under load: the xds-server binary, the shipped policy; load generator in its own process, %d callers (GOMAXPROCS=%d, %d CPUs)\n", workers, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Println("| decision logs | rate | samples | p50 | p99 (or max) | max | achieved | errors |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, mode := range strings.Split(logging, ",") {
		mode = strings.TrimSpace(mode)
		if mode != "on" && mode != "off" && mode != "floor" {
			return fmt.Errorf("-logging: %q is none of on, off, floor", mode)
		}
		if mode == "floor" {
			if err := runFloor(rates, request, dur, workers); err != nil {
				return err
			}
			continue
		}
		if err := runMode(mode, rates, request, dur, workers); err != nil {
			return err
		}
	}
	return nil
}

func runMode(mode, rates, request string, dur time.Duration, workers int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "climesh-bench-extauthz-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	keys := filepath.Join(dir, "identity-keys.json")
	if _, err := harness.WriteKeys(keys); err != nil {
		return err
	}
	issuer, err := harness.NewIssuer(dir)
	if err != nil {
		return err
	}
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	logs := ""
	if mode == "on" {
		logs = fmt.Sprintf("  decision_logs: {file: %s}\n", filepath.Join(dir, "decisions.log"))
	}
	x, err := harness.StartXDSServer(ctx, dir, fmt.Sprintf(`jwt:
  providers:
    - {name: test, issuer: %q, audiences: [%s], local_jwks_file: %s}
policy:
  source: builtin
  identity_keys_file: %s
%slisteners:
  - {name: edge, port: %d, routes: [{pool: acme-dedicated}]}
pools:
  - name: acme-dedicated
    static: [{id: cli-1, address: 127.0.0.1, port: 7000}]
`, issuer.Issuer, issuer.Audience, issuer.JWKSPath, keys, logs, port))
	if err != nil {
		return err
	}
	defer x.Close()
	if err := x.WaitReady(ctx); err != nil {
		return err
	}
	if err := loadAtRates(ctx, mode, x.XDSAddr, rates, request, dur, workers); err != nil {
		return err
	}
	if mode == "on" {
		b, _ := os.ReadFile(filepath.Join(dir, "decisions.log"))
		fmt.Printf("# decision log: %d events written\n", bytes.Count(b, []byte("\n")))
	}
	return nil
}

// loadAtRates runs the load generator against addr at each rate and prints a row per rate.
func loadAtRates(ctx context.Context, mode, addr, rates, request string, dur time.Duration, workers int) error {
	for _, r := range strings.Split(rates, ",") {
		rate, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || rate < 1 {
			return fmt.Errorf("-rates: %q is not a rate", r)
		}
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, os.Args[0], "load", "-addr", addr, "-rate", strconv.Itoa(rate),
			"-duration", dur.String(), "-workers", strconv.Itoa(workers), "-request", request)
		cmd.Stdout, cmd.Stderr = &out, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("load generator at %d/s: %w", rate, err)
		}
		var res result
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			return fmt.Errorf("load generator output %q: %w", out.String(), err)
		}
		tail := fmt.Sprintf("%.2f ms", res.P99)
		if res.TailNote != "" {
			tail = res.TailNote + " " + tail
		}
		fmt.Printf("| %s | %d/s | %d | %.2f ms | %s | %.2f ms | %.0f/s | %d |\n", mode, rate, res.Samples, res.P50, tail, res.Max, res.Achieved, res.Errors)
	}
	return nil
}

// runFloor measures the apparatus alone: the same load against a server, in a
// process of its own, that answers every Check with an empty OK — gRPC on
// loopback, the two processes sharing the machine, no decision.
func runFloor(rates, request string, dur time.Duration, workers int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	srv := exec.CommandContext(ctx, os.Args[0], "floor-server")
	srv.Env = append(os.Environ(), "EXTAUTHZ_FLOOR_ADDR="+addr)
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("floor server on %s: %w", addr, err)
		}
	}
	return loadAtRates(ctx, "floor", addr, rates, request, dur, workers)
}

// floorServer answers every Check with OK, on EXTAUTHZ_FLOOR_ADDR, until killed.
func floorServer() error {
	lis, err := net.Listen("tcp", os.Getenv("EXTAUTHZ_FLOOR_ADDR"))
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	authv3.RegisterAuthorizationServer(srv, allowAll{})
	return srv.Serve(lis)
}

type allowAll struct {
	authv3.UnimplementedAuthorizationServer
}

func (allowAll) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, nil
}

// load is the load generator's process: it sends the request at the rate for
// the duration and prints a result.
func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	addr := fs.String("addr", "", "ext_authz gRPC address")
	rate := fs.Int("rate", 1000, "requests per second")
	dur := fs.Duration("duration", 5*time.Second, "length")
	workers := fs.Int("workers", 64, "callers")
	request := fs.String("request", "", "CheckRequest (protojson) file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*request)
	if err != nil {
		return err
	}
	req := &authv3.CheckRequest{}
	if err := protojson.Unmarshal(b, req); err != nil {
		return err
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *dur+time.Minute)
	defer cancel()
	if resp, err := client.Check(ctx, req); err != nil || resp.GetOkResponse() == nil {
		return fmt.Errorf("the canned request is not allowed: %v %v", resp.GetDeniedResponse(), err)
	}
	lat, achieved, errs := authzload.FixedRate(ctx, client, req, *rate, *dur, *workers)
	msf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	res := result{Samples: len(lat), Achieved: achieved, Errors: errs}
	if len(lat) > 0 {
		res.P50, res.P99, res.Max = msf(stats.Percentile(lat, 50)), msf(stats.Percentile(lat, 99)), msf(stats.Percentile(lat, 100))
	}
	if len(lat) < 100 {
		res.TailNote = "max"
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
