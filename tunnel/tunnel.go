// Package tunnel carries JSON-RPC over WebSocket between climesh-connect and the
// sidecar: one JSON-RPC message per WebSocket text message, so that Envoy sees one
// HTTP request (the upgrade) per SDK connection, with the caller's headers to route,
// authorise and hash on.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
)

// Conn is one tunnel.
type Conn struct {
	ws *websocket.Conn
	// Pin is the upgrade response's x-climesh-host (empty when the edge does not pin).
	Pin string
}

// Read returns the next message.
func (c *Conn) Read(ctx context.Context) ([]byte, error) {
	typ, b, err := c.ws.Read(ctx)
	if err != nil {
		return nil, err
	}
	if typ != websocket.MessageText {
		return nil, fmt.Errorf("tunnel: binary message (want one JSON-RPC message per text message)")
	}
	return b, nil
}

// Write sends one message.
func (c *Conn) Write(ctx context.Context, msg []byte) error {
	return c.ws.Write(ctx, websocket.MessageText, msg)
}

// Ping sends a WebSocket ping and waits for its pong. A Read must be running
// concurrently (it receives the pong).
func (c *Conn) Ping(ctx context.Context) error { return c.ws.Ping(ctx) }

// Close closes cleanly with a reason the other side can log.
func (c *Conn) Close(reason string) error {
	return c.ws.Close(websocket.StatusNormalClosure, clip(reason))
}

// Fail closes with an internal-error status and reason.
func (c *Conn) Fail(reason string) error {
	return c.ws.Close(websocket.StatusInternalError, clip(reason))
}

// CloseReason extracts the peer's close reason from a Read error, if any.
func CloseReason(err error) (websocket.StatusCode, string, bool) {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Reason, true
	}
	return 0, "", false
}

// close reasons are limited to 123 bytes by the protocol.
func clip(s string) string {
	if len(s) > 120 {
		return s[:120]
	}
	return s
}

// Accept upgrades an HTTP request. limit bounds one message.
func Accept(w http.ResponseWriter, r *http.Request, limit int) (*Conn, error) {
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(int64(limit))
	return &Conn{ws: ws}, nil
}

// RefusedError is an edge that answered the upgrade with an HTTP error.
type RefusedError struct {
	Status int
	Reason string
	// DecisionID is the edge policy's decision id (x-climesh-decision-id), to
	// find the decision in the xds-server's decision log.
	DecisionID string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("climesh edge refused the tunnel: %d %s: %s", e.Status, http.StatusText(e.Status), e.Reason)
}

// Dial opens a tunnel to url with header. An HTTP refusal is a *RefusedError.
func Dial(ctx context.Context, url string, header http.Header, limit int) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: header, CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body := ""
			if resp.Body != nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				body = strings.TrimSpace(string(b))
			}
			return nil, &RefusedError{Status: resp.StatusCode, Reason: body, DecisionID: resp.Header.Get(protocol.HeaderDecisionID)}
		}
		return nil, fmt.Errorf("climesh edge unreachable at %s: %w", url, err)
	}
	ws.SetReadLimit(int64(limit))
	return &Conn{ws: ws, Pin: resp.Header.Get(protocol.HeaderPin)}, nil
}

// DefaultLimit is the largest message either side accepts by default.
var DefaultLimit = jsonrpc.DefaultLimits.MaxFrameBytes
