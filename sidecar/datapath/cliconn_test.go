package datapath

import (
	"net"
	"strings"
	"testing"

	"github.com/climesh/climesh/session/jsonrpc"
)

// A busy CLI broadcasts session.lifecycle to every connection, so one can come
// before the answer to the sidecar's connect (seen in a full run: the dial failed
// with "connect answer is not a JSON-RPC response"). The dial skips it.
func TestDialSkipsNotificationsBeforeTheConnectAnswer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := jsonrpc.NewReader(c, jsonrpc.DefaultLimits)
		body, _ := r.Read()
		m, _ := jsonrpc.ParseTrusted(body)
		c.Write(jsonrpc.Frame([]byte(`{"jsonrpc":"2.0","method":"session.lifecycle","params":{"type":"session.updated","sessionId":"other"}}`)))
		answer, _ := jsonrpc.ResultResponse(m.ID, map[string]any{"ok": true, "protocolVersion": 3})
		c.Write(jsonrpc.Frame(answer))
		r.Read() // until the sidecar closes
	}()
	conn, err := CLIDialer{Addr: l.Addr().String(), Token: "t", Limits: jsonrpc.DefaultLimits}.Dial(t.Context())
	if err != nil {
		t.Fatalf("dial with a notification before the answer: %v", err)
	}
	defer conn.Close()
	if !strings.Contains(string(conn.Hello), `"protocolVersion":3`) {
		t.Fatalf("hello %s", conn.Hello)
	}
}
