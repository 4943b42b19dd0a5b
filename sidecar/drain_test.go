package sidecar

import (
	"context"
	"testing"
	"time"
)

func TestTurnsFollowSendsAndIdle(t *testing.T) {
	all := &turns{}
	tt := newTunnelTurns(all)
	tt.fromClient(msg(t, `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s","prompt":"a"}}`))
	tt.fromClient(msg(t, `{"jsonrpc":"2.0","id":2,"method":"session.send","params":{"sessionId":"s","prompt":"b"}}`))
	tt.fromCLI(msg(t, `{"jsonrpc":"2.0","id":1,"result":{"messageId":"m"}}`))
	tt.fromCLI(msg(t, `{"jsonrpc":"2.0","id":2,"error":{"code":-32603,"message":"no"}}`)) // a failed send starts nothing
	if all.Running() != 1 {
		t.Fatalf("running %d, want 1", all.Running())
	}
	done := make(chan bool)
	go func() { done <- all.waitIdle(context.Background()) }()
	tt.fromCLI(msg(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s","event":{"type":"assistant.message","data":{}}}}`))
	select {
	case <-done:
		t.Fatal("idle before the turn ended")
	case <-time.After(20 * time.Millisecond):
	}
	tt.fromCLI(msg(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s","event":{"type":"session.idle","data":{}}}}`))
	if !<-done || all.Running() != 0 {
		t.Fatalf("running %d after the idle", all.Running())
	}
	// A tunnel that closes mid-turn no longer counts.
	tt.fromClient(msg(t, `{"jsonrpc":"2.0","id":3,"method":"session.send","params":{"sessionId":"s","prompt":"c"}}`))
	tt.fromCLI(msg(t, `{"jsonrpc":"2.0","id":3,"result":{}}`))
	tt.close()
	if all.Running() != 0 {
		t.Fatalf("running %d after the tunnel closed", all.Running())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if !all.waitIdle(ctx) {
		t.Fatal("waitIdle with nothing running")
	}
}
