package datapath

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/tunnel"
)

// normaliser replaces the session ids the sidecar generates (random UUIDs) with
// <session-N>, numbered by first appearance.
type normaliser struct {
	names map[string]string // real -> placeholder
	real  map[string]string // placeholder -> real
}

var generatedSessionID = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}`)

func newNormaliser() *normaliser {
	return &normaliser{names: map[string]string{}, real: map[string]string{}}
}

func (n *normaliser) apply(frame string) string {
	frame = generatedSessionID.ReplaceAllStringFunc(frame, func(id string) string {
		name, ok := n.names[id]
		if !ok {
			name = fmt.Sprintf("<session-%d>", len(n.names)+1)
			n.names[id], n.real[name] = name, id
		}
		return name
	})
	return strings.ReplaceAll(frame, "\n", `\n`) // one frame, one line
}

// scriptedCLI is the CLI the relay dials: one scriptedConn per tunnel.
type scriptedCLI struct {
	addr  string
	conns chan *scriptedConn
}

// scriptedConn answers the sidecar's connect (the first frame) and the barriers
// (every status.get: transcripts do not send it), and queues every other frame
// it receives, then "<closed>" when the relay closes it.
type scriptedConn struct {
	c      net.Conn
	wmu    sync.Mutex
	frames chan string
}

func startScriptedCLI(t *testing.T) *scriptedCLI {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedCLI{addr: l.Addr().String(), conns: make(chan *scriptedConn, 8)}
	var mu sync.Mutex
	var accepted []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range accepted {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
			sc := &scriptedConn{c: c, frames: make(chan string, 256)}
			go sc.serve()
			s.conns <- sc
		}
	}()
	return s
}

func (sc *scriptedConn) write(body []byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	_, err := sc.c.Write(jsonrpc.Frame(body))
	return err
}

func (sc *scriptedConn) serve() {
	defer close(sc.frames)
	r := jsonrpc.NewReader(sc.c, jsonrpc.DefaultLimits)
	for first := true; ; first = false {
		body, err := r.Read()
		if err != nil {
			sc.frames <- "<closed>"
			return
		}
		m, perr := jsonrpc.ParseTrusted(body)
		if perr == nil && m.Kind == jsonrpc.Request && first && m.Method == "connect" {
			b, _ := jsonrpc.ResultResponse(m.ID, json.RawMessage(scriptedHello))
			sc.write(b)
			continue
		}
		if perr == nil && m.Kind == jsonrpc.Request && m.Method == "status.get" { // a barrier, whatever id the relay gave it
			sc.write([]byte(`{"jsonrpc":"2.0","id":` + m.IDKey() + `,"result":{}}`))
			continue
		}
		sc.frames <- string(body)
	}
}

// scriptedClient reads its tunnel into frames, then "<closed ...>" with the close
// status and reason.
type scriptedClient struct {
	c      *tunnel.Conn
	frames chan string
}

func newScriptedClient(c *tunnel.Conn) *scriptedClient {
	sc := &scriptedClient{c: c, frames: make(chan string, 256)}
	go func() {
		for {
			b, err := c.Read(context.Background())
			if err != nil {
				if code, reason, ok := tunnel.CloseReason(err); ok {
					sc.frames <- fmt.Sprintf("<closed %d %s: %q>", int(code), code, reason)
				} else {
					sc.frames <- "<closed without a close frame>"
				}
				return
			}
			sc.frames <- string(b)
		}
	}()
	return sc
}

// unifiedDiff is a unified diff of two texts, three lines of context.
func unifiedDiff(aName, bName, a, b string) string {
	al, bl := strings.SplitAfter(a, "\n"), strings.SplitAfter(b, "\n")
	n, m := len(al), len(bl)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if al[i] == bl[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		kind   byte // ' ', '-', '+'
		text   string
		ai, bi int // lines before this one in a and b
	}
	var ops []op
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && al[i] == bl[j]:
			ops = append(ops, op{' ', al[i], i, j})
			i, j = i+1, j+1
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', al[i], i, j})
			i++
		default:
			ops = append(ops, op{'+', bl[j], i, j})
			j++
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", aName, bName)
	const context = 3
	for k := 0; k < len(ops); {
		if ops[k].kind == ' ' {
			k++
			continue
		}
		start, end := max(0, k-context), k
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*context {
				end = min(len(ops), end+context)
				break
			}
			end = run
		}
		var as, bs int
		for _, o := range ops[start:end] {
			if o.kind != '+' {
				as++
			}
			if o.kind != '-' {
				bs++
			}
		}
		fmt.Fprintf(&out, "@@ -%d,%d +%d,%d @@\n", ops[start].ai+1, as, ops[start].bi+1, bs)
		for _, o := range ops[start:end] {
			out.WriteByte(o.kind)
			out.WriteString(strings.TrimSuffix(o.text, "\n"))
			out.WriteByte('\n')
		}
		k = end
	}
	return out.String()
}
