// Package envoydrain takes an Envoy out of service the way a rolling update
// wants it, through Envoy's admin API only (like Contour's and Envoy Gateway's
// shutdown managers): its listeners drain gracefully — for --drain-time-s Envoy
// still accepts, but answers HTTP/1.1 with Connection: close and HTTP/2 with
// GOAWAY, then closes them — and Drain returns once no downstream connection is
// left, or at its deadline. Tunnels are long-lived WebSockets: what is still
// open at the deadline is cut when Envoy stops, and climesh-connect resumes its
// sessions through another Envoy.
package envoydrain

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/climesh/climesh/periodic"
)

// Drainer drains one Envoy.
type Drainer struct {
	Admin string        // Envoy's admin base URL, e.g. http://127.0.0.1:9901
	Poll  time.Duration // how often the open connections are counted
	// MinDrain is the least time Drain takes, connections or not: while a load
	// balancer still sends new connections (it takes a moment to see the pod
	// go), Envoy must keep answering them with Connection: close rather than
	// stop (Envoy Gateway's shutdown manager has the same floor).
	MinDrain time.Duration
	Client   *http.Client // nil: a client with a 5 s timeout
}

// Drain starts a graceful drain of every listener (climesh's edge listeners carry
// no traffic_direction, so "inboundonly" would skip them) and waits until no
// downstream connection is open or ctx ends. It returns how many were still
// open (0 when drained).
func (d Drainer) Drain(ctx context.Context) (int, error) {
	floor := time.Now().Add(d.MinDrain)
	if err := d.call(ctx, http.MethodPost, "/drain_listeners?graceful", nil); err != nil {
		return -1, err
	}
	defer func() { periodic.Sleep(ctx, time.Until(floor)) }()
	open, err := d.Open(ctx)
	if err != nil {
		return -1, err
	}
	for open > 0 && periodic.Sleep(ctx, d.Poll) {
		n, err := d.Open(ctx)
		if ctx.Err() != nil {
			break // the deadline, maybe mid-count: report the last count
		}
		if err != nil {
			return open, err
		}
		open = n
	}
	return open, nil
}

// Open counts the downstream connections of every listener but the admin's.
func (d Drainer) Open(ctx context.Context) (int, error) {
	var doc struct {
		Stats []struct {
			Name  string          `json:"name"`
			Value json.RawMessage `json:"value"`
		} `json:"stats"`
	}
	if err := d.call(ctx, http.MethodGet, `/stats?format=json&filter=^listener\..*\.downstream_cx_active$`, &doc); err != nil {
		return -1, err
	}
	open := 0
	for _, s := range doc.Stats {
		if strings.HasPrefix(s.Name, "listener.admin.") {
			continue
		}
		var n int
		if err := json.Unmarshal(s.Value, &n); err != nil {
			return -1, fmt.Errorf("envoy admin: stat %s: value %s is not a count", s.Name, s.Value)
		}
		open += n
	}
	return open, nil
}

func (d Drainer) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(d.Admin, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("envoy admin %s: %w", d.Admin, err)
	}
	client := d.Client
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("envoy admin: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("envoy admin %s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("envoy admin %s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("envoy admin %s %s: %w", method, path, err)
		}
	}
	return nil
}
