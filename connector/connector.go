// Package connector is the client side of climesh: it carries one SDK connection
// (stdio or TCP, Content-Length framed JSON-RPC) through one tunnel to the edge,
// with the caller's identity on the upgrade request. The application changes
// nothing but the address (or the executable) its SDK uses.
package connector

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/tunnel"
)

// Options say where the edge is and who is calling.
type Options struct {
	EdgeURL string // ws://host:port/v1/rpc
	Token   string // bearer token; in TCP mode the SDK's connect token wins
	User    string // x-climesh-user, only for edges that trust client headers
	Session string // shared-session name, if any
	// LockWait asks the sidecar to wait this long for a busy shared session
	// instead of answering busy at once.
	LockWait time.Duration
	Limits   jsonrpc.Limits
}

// Header is the upgrade request's identity.
func (o Options) Header(token string) http.Header {
	h := http.Header{}
	if token != "" {
		h.Set(tunnel.HeaderAuthorization, "Bearer "+token)
	}
	if o.User != "" {
		h.Set(tunnel.HeaderUser, o.User)
	}
	if o.Session != "" {
		h.Set(tunnel.HeaderSession, o.Session)
	}
	if o.LockWait > 0 {
		h.Set(tunnel.HeaderLockWait, o.LockWait.String())
	}
	return h
}

// ConnectToken returns the token of an SDK `connect` request, if first is one.
func ConnectToken(first []byte) string {
	m, err := jsonrpc.Classify(first)
	if err != nil || m.Kind != jsonrpc.Request || m.Method != "connect" {
		return ""
	}
	var p struct {
		Params struct {
			Token string `json:"token"`
		} `json:"params"`
	}
	json.Unmarshal(first, &p)
	return p.Params.Token
}

// Serve carries the SDK stream (in, out) through a new tunnel until either side
// closes. first, when not nil, is a message already read from in. When the edge
// cannot be reached or refuses, every request the SDK sends is answered with a
// JSON-RPC error that names the cause, until the SDK closes: no hang.
func Serve(ctx context.Context, o Options, token string, in *jsonrpc.Reader, out io.Writer, first []byte) error {
	conn, err := tunnel.Dial(ctx, o.EdgeURL, o.Header(token), o.Limits.MaxFrameBytes)
	if err != nil {
		refuse(in, out, first, err)
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var once sync.Once
	var result error
	done := func(err error, reason string) {
		once.Do(func() {
			result = err
			cancel()
			conn.Close(reason)
		})
	}
	go func() {
		for {
			msg, err := conn.Read(ctx)
			if err != nil {
				if _, reason, ok := tunnel.CloseReason(err); ok && reason != "" {
					err = errors.New("edge closed the tunnel: " + reason)
				}
				done(err, "")
				if c, ok := out.(io.Closer); ok {
					c.Close() // the SDK sees its connection end
				}
				return
			}
			if _, err := out.Write(jsonrpc.Frame(msg)); err != nil {
				done(err, "client gone")
				return
			}
		}
	}()
	if first != nil {
		if err := conn.Write(ctx, first); err != nil {
			done(err, "")
			return result
		}
	}
	for {
		body, err := in.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				done(nil, "client closed")
			} else {
				// A frame we cannot read: say so to the SDK, then end this connection only.
				out.Write(jsonrpc.Frame(jsonrpc.ErrorResponse(nil, jsonrpc.CodeParseError, err.Error(), nil)))
				done(err, "bad frame from client")
			}
			return result
		}
		if err := conn.Write(ctx, body); err != nil {
			done(err, "")
			return result
		}
	}
}

// refuse answers each request with the dial error until in ends.
func refuse(in *jsonrpc.Reader, out io.Writer, first []byte, cause error) {
	code, data := jsonrpc.CodeUnavailable, map[string]any{}
	var refused *tunnel.RefusedError
	if errors.As(cause, &refused) {
		code, data["status"], data["reason"] = jsonrpc.CodeRefused, refused.Status, refused.Reason
	}
	answer := func(body []byte) {
		m, err := jsonrpc.Classify(body)
		if err == nil && m.Kind == jsonrpc.Request {
			out.Write(jsonrpc.Frame(jsonrpc.ErrorResponse(m.ID, code, cause.Error(), data)))
		}
	}
	if first != nil {
		answer(first)
	}
	for {
		body, err := in.Read()
		if err != nil {
			return
		}
		answer(body)
	}
}
