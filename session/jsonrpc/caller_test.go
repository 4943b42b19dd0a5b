package jsonrpc

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// wire is a connection whose other end answers through Deliver.
type wire struct {
	mu   sync.Mutex
	sent []Message
}

func (w *wire) write(body []byte) error {
	m, err := ParseTrusted(body)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.sent = append(w.sent, m)
	w.mu.Unlock()
	return nil
}

func (w *wire) last(t *testing.T) Message {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		if n := len(w.sent); n > 0 {
			m := w.sent[n-1]
			w.sent = w.sent[:0]
			w.mu.Unlock()
			return m
		}
		w.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatal("nothing sent")
	return Message{}
}

func answer(t *testing.T, body []byte) Message {
	t.Helper()
	m, err := ParseTrusted(body)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCallerCalls(t *testing.T) {
	w := &wire{}
	c := NewCaller("own-", w.write)
	type result struct {
		v   string
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := c.Call(t.Context(), "ping", map[string]string{"message": "x"})
		done <- result{string(v), err}
	}()
	req := w.last(t)
	if req.Method != "ping" || req.IDKey() != `"own-1"` || !c.Waiting() || !c.Owns(req.IDKey()) || c.Owns(`"other-1"`) || c.Owns(`1`) {
		t.Fatalf("request %+v, waiting %v", req, c.Waiting())
	}
	if c.Deliver(answer(t, []byte(`{"jsonrpc":"2.0","id":"other-1","result":{}}`))) {
		t.Fatal("took another party's answer")
	}
	if c.Deliver(answer(t, []byte(`{"jsonrpc":"2.0","method":"session.event","params":{}}`))) {
		t.Fatal("took a notification")
	}
	if !c.Deliver(answer(t, resultResponseMust(req.ID, map[string]string{"message": "pong"}))) {
		t.Fatal("did not take its own answer")
	}
	if r := <-done; r.err != nil || r.v != `{"message":"pong"}` || c.Waiting() {
		t.Fatalf("%+v waiting %v", r, c.Waiting())
	}

	// An error answer is a *CallError naming the method.
	go func() {
		_, err := c.Call(t.Context(), "session.delete", nil)
		done <- result{"", err}
	}()
	req = w.last(t)
	c.Deliver(answer(t, ErrorResponse(req.ID, -32603, "Session not found", nil)))
	var ce *CallError
	if r := <-done; !errors.As(r.err, &ce) || ce.Code != -32603 || r.err.Error() != "session.delete: -32603 Session not found" {
		t.Fatalf("error answer: %v", r.err)
	}

	// A call whose context ends gives up; its late answer is still its own (Owns) but awaited by nobody.
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		_, err := c.Call(ctx, "session.resume", nil)
		done <- result{"", err}
	}()
	req = w.last(t)
	cancel()
	if r := <-done; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled call: %v", r.err)
	}
	if c.Deliver(answer(t, resultResponseMust(req.ID, struct{}{}))) || !c.Owns(req.IDKey()) {
		t.Fatal("a late answer was delivered to nobody, or is not recognised as ours")
	}

	// Close fails the waiting call and every later one.
	go func() {
		_, err := c.Call(t.Context(), "session.destroy", nil)
		done <- result{"", err}
	}()
	w.last(t)
	c.Close(errors.New("the CLI went away"))
	if r := <-done; r.err == nil || r.err.Error() != "session.destroy: the CLI went away" {
		t.Fatalf("closed: %v", r.err)
	}
	if _, err := c.Call(t.Context(), "ping", nil); err == nil || err.Error() != "ping: the CLI went away" {
		t.Fatalf("after close: %v", err)
	}
}

func resultResponseMust(id []byte, v any) []byte {
	b, err := ResultResponse(id, v)
	if err != nil {
		panic(err)
	}
	return b
}
