// Command decisions measures climesh's policy decisions with the shipped Rego:
//
//   - per message in the sidecar (the strict reading, then Guard.Inbound: registry
//     lookup + Rego), cached and cold as separate series, and session.create;
//
//   - ext_authz over real gRPC on loopback at a fixed request rate, and its
//     closed-loop maximum.
//
//     go run ./bench/decisions [-rate 3000] [-duration 5s] [-messages 20000]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/climesh/climesh/bench/authzload"
	"github.com/climesh/climesh/bench/stats"
	"github.com/climesh/climesh/decisionlog"
	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/sidecar/datapath"
	"github.com/climesh/climesh/test/harness"
)

func main() {
	rate := flag.Int("rate", 3000, "ext_authz requests per second for the fixed-load run")
	dur := flag.Duration("duration", 5*time.Second, "length of each ext_authz run")
	messages := flag.Int("messages", 20000, "messages through the sidecar guard")
	workers := flag.Int("workers", 64, "concurrent ext_authz callers")
	flag.Parse()
	if err := run(*rate, *dur, *messages, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "decisions:", err)
		os.Exit(1)
	}
}

func run(rate int, dur time.Duration, messages, workers int) error {
	root, err := harness.Root()
	if err != nil {
		return err
	}
	rego := filepath.Join(root, "policies", "rego")
	ctx := context.Background()
	engine, err := policy.NewEngine(ctx, rego, []string{policy.MessageQuery, policy.EdgeQuery}, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		return err
	}
	fmt.Print(stats.Provenance())
	fmt.Println("| measure | samples | p50 | p99 (or max) | note |")
	fmt.Println("|---|---:|---:|---:|---|")
	row := func(name string, lat []time.Duration, format func(time.Duration) string, note string) {
		fmt.Printf("| %s | %d | %s | %s | %s |\n", name, len(lat), format(stats.Percentile(lat, 50)), stats.TailCell(lat, 99, format), note)
	}
	cached, cold := guardLatencies(ctx, engine, messages, nil)
	row("sidecar decision, cached", cached, us, "a (method, session, params) this tunnel decided before: pings, reads, refused retries")
	row("sidecar decision, cold", cold, us, "first of its kind on the tunnel: every send (its prompt is new), Rego with the whole params")
	// The same stream with every decision logged (OPA's format, the shipped mask,
	// written to nowhere: the cost is the event, the queue and the mask).
	lctx, stopLog := context.WithCancel(ctx)
	logger := decisionlog.New(lctx, &decisionlog.WriterSink{W: io.Discard}, engine.Mask, decisionlog.Options{}, prometheus.NewRegistry())
	cachedLogged, coldLogged := guardLatencies(ctx, engine, messages, logger)
	stopLog()
	<-logger.Done()
	row("sidecar decision, cached, decision logs on", cachedLogged, us, "as above, each decision queued for the log (masked and written by the logger's goroutine)")
	row("sidecar decision, cold, decision logs on", coldLogged, us, "as above")
	creates := createLatencies(ctx, engine, messages/10)
	row("sidecar decision, session.create", creates, us, "Rego with the options allow-list, the registry claim (in memory) and the tools rewrite")

	keys := &identity.Keys{Active: "k", Keys: map[string][]byte{"k": bytes.Repeat([]byte{1}, 32)}}
	authz := policy.NewExtAuthz(engine, keys, policy.Claims{User: "sub", Tenant: "tenant", Roles: "roles"}, time.Minute, zap.NewNop(), prometheus.NewRegistry())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	authv3.RegisterAuthorizationServer(srv, authz)
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	req := &authv3.CheckRequest{}
	b, err := os.ReadFile(filepath.Join(root, "policy", "testdata", "check", "admitted.json"))
	if err != nil {
		return err
	}
	if err := protojson.Unmarshal(b, req); err != nil {
		return err
	}
	if resp, err := client.Check(ctx, req); err != nil || resp.GetOkResponse() == nil {
		return fmt.Errorf("check does not allow the canned request: %v %v", resp, err)
	}
	lat, achieved, errs := authzload.FixedRate(ctx, client, req, rate, dur, workers)
	row(fmt.Sprintf("ext_authz at %d/s (gRPC, loopback)", rate), lat, ms, fmt.Sprintf("achieved %.0f/s, %d errors", achieved, errs))
	lat, achieved, errs = authzload.ClosedLoop(ctx, client, req, dur, workers)
	row(fmt.Sprintf("ext_authz closed loop, %d callers", workers), lat, ms, fmt.Sprintf("max %.0f decisions/s, %d errors", achieved, errs))
	return nil
}

// guardLatencies drives a realistic stream through the strict reader and the
// guard: 50 users, each sending to its own session (a new prompt every time),
// reading it, pinging, listing, and now and then trying another user's session.
// Every forwarded request is answered, as the CLI would. A sample is "cached"
// when its tunnel has decided the same (method, session, params) before.
func guardLatencies(ctx context.Context, e *policy.Engine, n int, logger *decisionlog.Logger) (cached, cold []time.Duration) {
	reg := &registry.Memory{}
	const users = 50
	guards := make([]*datapath.PolicyPath, users)
	seen := make([]map[string]bool, users)
	for u := range users {
		reg.Create(ctx, &registry.Record{ID: fmt.Sprintf("s-%d", u), Owner: fmt.Sprintf("u-%d", u), Tenant: "acme", Members: []string{}})
		guards[u] = newGuard(e, reg, u)
		guards[u].Decisions = logger
		seen[u] = map[string]bool{}
	}
	kinds := []string{
		`{"jsonrpc":"2.0","id":%d,"method":"session.send","params":{"sessionId":"s-%d","prompt":"message %d"}}`,
		`{"jsonrpc":"2.0","id":%d,"method":"session.getMessages","params":{"sessionId":"s-%d"}}`,
		`{"jsonrpc":"2.0","id":%d,"method":"ping","params":{"message":"hi %.0d"}}`,
		`{"jsonrpc":"2.0","id":%d,"method":"session.list","params":{"x%.0d":0}}`,
		`{"jsonrpc":"2.0","id":%d,"method":"session.resume","params":{"sessionId":"s-%d"}}`, // someone else's
	}
	for i := range n {
		u := i % users
		k := i / users % len(kinds)
		target := u
		switch k {
		case 2, 3:
			target = 0
		case 4:
			target = (u + 1) % users
		}
		var body string
		if k == 0 {
			body = fmt.Sprintf(kinds[k], i, target, i)
		} else {
			body = fmt.Sprintf(kinds[k], i, target)
		}
		start := time.Now() // the strict reading and the decision: what each message costs
		m, _ := jsonrpc.Parse([]byte(body))
		fwd, _ := guards[u].Inbound(ctx, m)
		d := time.Since(start)
		key := m.Method + "|" + m.SessionID + "|" + string(m.Params)
		if seen[u][key] {
			cached = append(cached, d)
		} else {
			cold = append(cold, d)
			seen[u][key] = true
		}
		if fwd != nil {
			answer, _ := jsonrpc.ParseTrusted([]byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"result":{}}`, i)))
			guards[u].Outbound(ctx, answer)
		}
	}
	slices.Sort(cached)
	slices.Sort(cold)
	return cached, cold
}

// createLatencies times session.create with a chat's options, each a new session.
func createLatencies(ctx context.Context, e *policy.Engine, n int) []time.Duration {
	reg := &registry.Memory{}
	g := newGuard(e, reg, 0)
	out := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		m, _ := jsonrpc.Parse([]byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"session.create","params":{"sessionId":"c-%d","model":"m",`+
			`"streaming":true,"tools":[{"name":"lookup","description":"d"}],"availableTools":null,"envValueMode":"direct"}}`, i, i)))
		fwd, answer := g.Inbound(ctx, m)
		out = append(out, time.Since(start))
		if fwd == nil {
			panic(fmt.Sprintf("create refused: %s", answer))
		}
		res, _ := jsonrpc.ParseTrusted([]byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"result":{"sessionId":"c-%d"}}`, i, i)))
		g.Outbound(ctx, res)
	}
	slices.Sort(out)
	return out
}

// newGuard is a tunnel's policy path (the guard and its call table) for user u.
func newGuard(e *policy.Engine, reg registry.Registry, u int) *datapath.PolicyPath {
	return &datapath.PolicyPath{Guard: &datapath.Guard{Policy: datapath.Policy{Engine: e, Registry: reg, Pool: "copilot", Mode: "shared", RecordTTL: time.Hour},
		Caller: identity.Claims{User: fmt.Sprintf("u-%d", u), Tenant: "acme"}, Log: zap.NewNop()}}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d.Nanoseconds())/1000) }
