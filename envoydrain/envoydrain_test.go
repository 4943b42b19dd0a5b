package envoydrain

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// fakeAdmin answers the drain call and counts down the open connections.
type fakeAdmin struct {
	mu      sync.Mutex
	open    []int // one per stats call; the last repeats
	drained bool
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/drain_listeners" && r.URL.Query().Has("graceful"):
		f.drained = true
		fmt.Fprintln(w, "OK")
	case r.Method == http.MethodGet && r.URL.Path == "/stats" && r.URL.Query().Get("format") == "json":
		n := f.open[0]
		if len(f.open) > 1 {
			f.open = f.open[1:]
		}
		fmt.Fprintf(w, `{"stats":[{"name":"listener.admin.downstream_cx_active","value":7},{"name":"listener.0.0.0.0_10000.downstream_cx_active","value":%d}]}`, n)
	default:
		http.Error(w, "unexpected "+r.Method+" "+r.URL.String(), http.StatusNotFound)
	}
}

func TestDrainWaitsForConnections(t *testing.T) {
	f := &fakeAdmin{open: []int{3, 2, 0}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	left, err := Drainer{Admin: srv.URL, Poll: time.Millisecond}.Drain(t.Context())
	if err != nil || left != 0 || !f.drained {
		t.Fatalf("left %d, err %v, drain asked %v", left, err, f.drained)
	}
}

func TestDrainTakesAtLeastMinDrain(t *testing.T) {
	f := &fakeAdmin{open: []int{0}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	start := time.Now()
	left, err := Drainer{Admin: srv.URL, Poll: time.Millisecond, MinDrain: 100 * time.Millisecond}.Drain(t.Context())
	if err != nil || left != 0 {
		t.Fatalf("left %d, err %v", left, err)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Fatalf("an idle Envoy's drain ended after %s, before --min-drain", took)
	}
}

func TestDrainStopsAtTheDeadline(t *testing.T) {
	f := &fakeAdmin{open: []int{1}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if left, err := (Drainer{Admin: srv.URL, Poll: time.Millisecond}).Drain(ctx); err != nil || left != 1 {
		t.Fatalf("left %d, err %v; want 1 connection left at the deadline", left, err)
	}
}

func TestDrainReportsAnAdminThatRefuses(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	if _, err := (Drainer{Admin: srv.URL, Poll: time.Millisecond}).Drain(t.Context()); err == nil {
		t.Fatal("no error from an admin that refused the drain")
	}
}
