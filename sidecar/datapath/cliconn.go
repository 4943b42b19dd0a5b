package datapath

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
)

// CLIDialer reaches the local CLI.
type CLIDialer struct {
	Addr    string
	Token   string
	Limits  jsonrpc.Limits
	Timeout time.Duration
}

// CLIConn is an authenticated connection to the CLI.
type CLIConn struct {
	net.Conn
	Reader *jsonrpc.Reader
	// Hello is the CLI's answer to our connect: what the client's connect gets.
	Hello json.RawMessage

	own *jsonrpc.Caller // Call's requests
}

// handshakeID is the id of the sidecar's own connect; clients never see it.
const handshakeID = `"climesh-sidecar-connect"`

// Dial connects and sends `connect {token}`.
func (d CLIDialer) Dial(ctx context.Context) (*CLIConn, error) {
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", d.Addr)
	if err != nil {
		return nil, fmt.Errorf("copilot CLI unreachable at %s: %w", d.Addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	req, _ := jsonrpc.RequestBody(json.RawMessage(handshakeID), protocol.MethodConnect, map[string]string{"token": d.Token})
	if _, err := conn.Write(jsonrpc.Frame(req)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("copilot CLI at %s: send connect: %w", d.Addr, err)
	}
	r := jsonrpc.NewReader(conn, d.Limits)
	body, err := readConnectAnswer(r)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("copilot CLI at %s: read connect answer: %w", d.Addr, err)
	}
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &resp); err != nil || (resp.Error == nil && len(resp.Result) == 0) {
		conn.Close()
		return nil, fmt.Errorf("copilot CLI at %s: connect answer is not a JSON-RPC response: %.100s", d.Addr, body)
	}
	if resp.Error != nil {
		conn.Close()
		return nil, fmt.Errorf("copilot CLI at %s refused the sidecar's token: %d %s", d.Addr, resp.Error.Code, resp.Error.Message)
	}
	conn.SetDeadline(time.Time{})
	return &CLIConn{Conn: conn, Reader: r, Hello: resp.Result}, nil
}

// CallError is the CLI's JSON-RPC error answer to a call.
type CallError = jsonrpc.CallError

// Call sends one request of the sidecar's own on an idle connection (no tunnel
// uses it) and reads until its answer, skipping events; the whole exchange is
// bounded by timeout. An error answer is a *CallError. A connection whose call
// failed (timeout, read error) is not to be used again.
func (c *CLIConn) Call(method string, params any, timeout time.Duration) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c.SetDeadline(time.Now().Add(timeout))
	if c.own == nil {
		c.own = jsonrpc.NewCaller("climesh-sidecar-own-", func(b []byte) error { _, err := c.Write(jsonrpc.Frame(b)); return err })
	}
	read := make(chan struct{})
	go func() { // this connection's reader, for the call's duration
		defer close(read)
		for {
			body, err := c.Reader.Read()
			if err != nil {
				c.own.Close(fmt.Errorf("no answer: %w", err))
				return
			}
			if m, err := jsonrpc.ParseTrusted(body); err == nil && c.own.Deliver(m) {
				return
			} // else an event, or an older answer
		}
	}()
	v, err := c.own.Call(ctx, method, params)
	if err != nil {
		c.SetDeadline(time.Now()) // unblock the reader: one reader at a time
	}
	<-read
	c.SetDeadline(time.Time{})
	return v, err
}

// readConnectAnswer reads up to the answer to the sidecar's connect. The CLI
// broadcasts some notifications to every connection (session.lifecycle when any
// session changes), so on a busy CLI one may arrive first: they belong to no
// tunnel yet and are skipped, within the dial's deadline and a bound.
func readConnectAnswer(r *jsonrpc.Reader) ([]byte, error) {
	for range 1000 {
		body, err := r.Read()
		if err != nil {
			return nil, err
		}
		if m, err := jsonrpc.ParseTrusted(body); err == nil && m.Kind == jsonrpc.Notification {
			continue
		}
		return body, nil
	}
	return nil, errors.New("1000 notifications and no answer")
}
