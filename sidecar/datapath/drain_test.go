package datapath

import (
	"context"
	"testing"
	"time"
)

// turnsOf runs the turns stage as a tunnel does: sends enter the call table
// when forwarded, and each CLI message finds the call it answers.
func turnsOf(all *turns) (send func(t *testing.T, body string), fromCLI func(t *testing.T, body string), tt *tunnelTurns) {
	calls := &callTable{max: 10}
	tt = newTunnelTurns(all, calls)
	send = func(t *testing.T, body string) { calls.add(&flow{msg: msg(t, body)}) }
	fromCLI = func(t *testing.T, body string) {
		f := &flow{msg: msg(t, body)}
		calls.toClient(t.Context(), f)
		tt.toClient(t.Context(), f)
	}
	return send, fromCLI, tt
}

func TestTurnsFollowSendsAndIdle(t *testing.T) {
	all := &turns{}
	send, fromCLI, tt := turnsOf(all)
	send(t, `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":"s","prompt":"a"}}`)
	send(t, `{"jsonrpc":"2.0","id":2,"method":"session.send","params":{"sessionId":"s","prompt":"b"}}`)
	if !tt.busy("s") || tt.busy("other") {
		t.Fatal("a session with sends awaiting their answers is busy, another is not")
	}
	fromCLI(t, `{"jsonrpc":"2.0","id":1,"result":{"messageId":"m"}}`)
	fromCLI(t, `{"jsonrpc":"2.0","id":2,"error":{"code":-32603,"message":"no"}}`) // a failed send starts nothing
	if all.Running() != 1 {
		t.Fatalf("running %d, want 1", all.Running())
	}
	done := make(chan bool)
	go func() { done <- all.waitIdle(context.Background()) }()
	fromCLI(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s","event":{"type":"assistant.message","data":{}}}}`)
	select {
	case <-done:
		t.Fatal("idle before the turn ended")
	case <-time.After(20 * time.Millisecond):
	}
	fromCLI(t, `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"s","event":{"type":"session.idle","data":{}}}}`)
	if !<-done || all.Running() != 0 || tt.busy("s") {
		t.Fatalf("running %d after the idle (busy %v)", all.Running(), tt.busy("s"))
	}
	// An answer to a request that was not a send (or to nobody) starts nothing.
	send(t, `{"jsonrpc":"2.0","id":4,"method":"session.getMessages","params":{"sessionId":"s"}}`)
	fromCLI(t, `{"jsonrpc":"2.0","id":4,"result":{}}`)
	fromCLI(t, `{"jsonrpc":"2.0","id":77,"result":{}}`)
	if all.Running() != 0 {
		t.Fatalf("running %d after answers to other calls", all.Running())
	}
	// A tunnel that closes mid-turn no longer counts.
	send(t, `{"jsonrpc":"2.0","id":3,"method":"session.send","params":{"sessionId":"s","prompt":"c"}}`)
	fromCLI(t, `{"jsonrpc":"2.0","id":3,"result":{}}`)
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
