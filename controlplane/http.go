package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/climesh/climesh/model"
	"github.com/climesh/climesh/xds"
)

func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /debug/fleet", s.debugFleet)
	mux.HandleFunc("GET /debug/xds", s.debugXDS)
	mux.HandleFunc("GET /status", s.status)
	return mux
}

// status is the edge policy's state (policy.Status: source, fingerprint, a
// bundle service's revision and last refusal, in OPA's status fields) — 404
// when the config turns policy off.
func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	if s.edgePolicy == nil {
		http.Error(w, "policy is off", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"policy": s.edgePolicy.Status()})
}

// Ready is nil once every pool was read and a snapshot was published.
func (s *Server) Ready() error {
	s.mu.Lock()
	d := s.disc
	s.mu.Unlock()
	if d == nil {
		return fmt.Errorf("starting")
	}
	if err := d.Ready(); err != nil {
		return err
	}
	if !s.publisher.Ready() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.lastErr != nil {
			return fmt.Errorf("no snapshot published: %w", s.lastErr)
		}
		return fmt.Errorf("no snapshot published yet")
	}
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := s.Ready(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

type fleetView struct {
	Pools map[string][]instanceView `json:"pools"`
}

type instanceView struct {
	ID      string            `json:"id"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Health  string            `json:"health"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
}

func (s *Server) debugFleet(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	d := s.disc
	s.mu.Unlock()
	view := fleetView{Pools: map[string][]instanceView{}}
	if d != nil {
		for _, p := range d.Current().Pools() {
			list := []instanceView{}
			p.Each(func(in model.Instance) {
				list = append(list, instanceView{ID: in.ID, Address: in.Address, Port: in.Port, Health: in.Health.String(), Tags: in.Tags, Meta: in.Meta})
			})
			view.Pools[p.Name] = list
		}
	}
	writeJSON(w, view)
}

type groupView struct {
	Versions  xds.Versions      `json:"versions"`
	Clusters  []json.RawMessage `json:"clusters"`
	Endpoints []json.RawMessage `json:"endpoints"`
	Listeners []json.RawMessage `json:"listeners"`
	Routes    []json.RawMessage `json:"routes"`
	Secrets   []json.RawMessage `json:"secrets"` // values redacted
}

// debugXDS shows what each node group receives and what each Envoy did with it,
// secrets redacted (the port is open to more than Envoy). ?group=NAME limits it
// to one group.
func (s *Server) debugXDS(w http.ResponseWriter, r *http.Request) {
	groups := map[string]groupView{}
	for _, g := range s.publisher.Groups() {
		if want := r.URL.Query().Get("group"); want != "" && want != g {
			continue
		}
		res, v, ok := s.publisher.Snapshot(g)
		if !ok {
			continue
		}
		groups[g] = groupView{
			Versions:  v,
			Clusters:  rawAll(res.Clusters),
			Endpoints: rawAll(res.Endpoints),
			Listeners: rawAll(res.Listeners),
			Routes:    rawAll(res.Routes),
			Secrets:   rawAll(redacted(res.Secrets)),
		}
	}
	writeJSON(w, map[string]any{"node_groups": groups, "nodes": s.publisher.Nodes()})
}

func redacted(secrets []*tlsv3.Secret) []*tlsv3.Secret {
	out := make([]*tlsv3.Secret, len(secrets))
	for i, s := range secrets {
		out[i] = xds.RedactSecret(s)
	}
	return out
}

func rawAll[T proto.Message](items []T) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(items))
	for _, m := range items {
		b, err := protojson.Marshal(m)
		if err != nil {
			b, _ = json.Marshal(map[string]string{"error": err.Error()})
		}
		out = append(out, b)
	}
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
