package harness

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/climesh/climesh/session/jsonrpc"
)

// Tap sits between a sidecar and its CLI (the sidecar's --cli-address) and
// records every frame the CLI receives, read as the CLI reads it (CLIReading):
// what a test compares with what the policy allowed.
type Tap struct {
	Addr   string
	target string
	lis    net.Listener

	mu     sync.Mutex
	frames []TapFrame
	conns  int
}

// TapFrame is one frame the CLI received.
type TapFrame struct {
	Conn int    // the sidecar's connection (one per tunnel), numbered from 1
	Body []byte // as received
	CLIReading
}

// CLIReading is a frame read with the CLI's semantics (JSON.parse): member names
// exactly, the last of duplicate names wins, a field counts only with its type.
type CLIReading struct {
	Valid     bool
	Method    string          // "" unless a string
	ID        json.RawMessage // as written; nil when absent
	SessionID string          // params.sessionId, "" unless a string
	Params    map[string]json.RawMessage
}

// ReadAsCLI is the reference reading of body.
func ReadAsCLI(body []byte) CLIReading {
	var env map[string]json.RawMessage // a map: exact names, last duplicate wins
	if json.Unmarshal(body, &env) != nil {
		return CLIReading{}
	}
	r := CLIReading{Valid: true, ID: env["id"]}
	json.Unmarshal(env["method"], &r.Method)
	if json.Unmarshal(env["params"], &r.Params) == nil {
		json.Unmarshal(r.Params["sessionId"], &r.SessionID)
	}
	return r
}

// StartTap listens on a free loopback port and forwards each connection to target.
func StartTap(target string) (*Tap, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &Tap{Addr: lis.Addr().String(), target: target, lis: lis}
	go t.serve()
	return t, nil
}

// Close stops accepting; open connections end with their peers.
func (t *Tap) Close() { t.lis.Close() }

// Frames returns what the CLI received so far.
func (t *Tap) Frames() []TapFrame {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]TapFrame(nil), t.frames...)
}

func (t *Tap) serve() {
	for {
		in, err := t.lis.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", t.target)
		if err != nil {
			in.Close()
			continue
		}
		t.mu.Lock()
		t.conns++
		n := t.conns
		t.mu.Unlock()
		go func() { io.Copy(in, out); in.Close() }()
		go t.record(n, in, out)
	}
}

func (t *Tap) record(n int, in, out net.Conn) {
	defer out.Close()
	r := jsonrpc.NewReader(in, jsonrpc.DefaultLimits)
	for {
		body, err := r.Read()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				out.Close()
			}
			return
		}
		t.mu.Lock()
		t.frames = append(t.frames, TapFrame{Conn: n, Body: body, CLIReading: ReadAsCLI(body)})
		t.mu.Unlock()
		if _, err := out.Write(jsonrpc.Frame(body)); err != nil {
			return
		}
	}
}
