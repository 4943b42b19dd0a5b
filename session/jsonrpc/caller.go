package jsonrpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
)

// Caller runs one party's own requests on a connection whose reading belongs to
// someone else: the sidecar's on a tunnel's CLI connection (capacity's release
// and resume), climesh-connect's on a new tunnel (connect, resume), the health
// ping and the sweeper on a connection of their own. Its ids carry a prefix no
// other party may use, so that the reader can tell its answers from everyone
// else's and hand them over with Deliver. It is the one request/answer component
// climesh has: every "send a request, wait for its answer" goes through it.
type Caller struct {
	prefix string
	write  func(body []byte) error

	mu      sync.Mutex
	seq     int
	waiting map[string]chan Message // canonical id -> its answer
	closed  error
}

// NewCaller sends requests with write (one message body; the caller frames it
// if the connection is framed) under ids `"<prefix><n>"`.
func NewCaller(prefix string, write func(body []byte) error) *Caller {
	return &Caller{prefix: prefix, write: write, waiting: map[string]chan Message{}}
}

// CallError is a JSON-RPC error answer to a Call.
type CallError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (e *CallError) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Message) }

// ErrConnClosed is what a call gets when its connection closes before the answer.
var ErrConnClosed = errors.New("the connection closed before the answer")

// Call sends method with params and waits for its answer, ctx's end, or Close.
// An error answer is a *CallError wrapped with the method.
func (c *Caller) Call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	c.mu.Lock()
	if c.closed != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", method, c.closed)
	}
	c.seq++
	id := strconv.Quote(c.prefix + strconv.Itoa(c.seq)) // canonical: a plain quoted string
	ch := make(chan Message, 1)
	c.waiting[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
	}
	body, err := RequestBody(json.RawMessage(id), method, params)
	if err != nil {
		forget()
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	if err := c.write(body); err != nil {
		forget()
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("%s: %w", method, c.closedErr())
		}
		if m.Failed() {
			e := &CallError{}
			json.Unmarshal(m.Error, e)
			return nil, fmt.Errorf("%s: %w", method, e)
		}
		return json.RawMessage(m.Result), nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// Deliver hands m to the call it answers; false means m is not an answer to one
// of this Caller's requests (and belongs to whoever else reads the connection).
func (c *Caller) Deliver(m Message) bool {
	if m.Kind != Response {
		return false
	}
	c.mu.Lock()
	ch, ok := c.waiting[m.IDKey()]
	delete(c.waiting, m.IDKey())
	c.mu.Unlock()
	if ok {
		ch <- m
	}
	return ok
}

// Owns reports whether id (canonical) is of this Caller's form, answered or not:
// a reader drops an answer to a call that gave up rather than pass it on.
func (c *Caller) Owns(idKey string) bool {
	return len(idKey) > len(c.prefix)+1 && idKey[0] == '"' && idKey[1:1+len(c.prefix)] == c.prefix
}

// Waiting reports whether a call awaits its answer (a reader may skip the
// lookup when none does).
func (c *Caller) Waiting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiting) > 0
}

// Close fails every waiting call, and every later one, with cause (nil:
// ErrConnClosed).
func (c *Caller) Close(cause error) {
	if cause == nil {
		cause = ErrConnClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed == nil {
		c.closed = cause
	}
	for id, ch := range c.waiting {
		close(ch)
		delete(c.waiting, id)
	}
}

func (c *Caller) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed == nil {
		return ErrConnClosed
	}
	return c.closed
}
