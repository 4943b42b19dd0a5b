// Package jsonrpc reads and writes the Copilot CLI's wire format — JSON-RPC 2.0
// messages framed by LSP-style `Content-Length: N\r\n\r\n` headers — and classifies
// each message (request, notification, response; method; sessionId) without
// re-encoding it: what is forwarded is the exact bytes that were read.
package jsonrpc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/climesh/climesh/protocol"
)

// Limits bound what a peer can make us buffer.
type Limits struct {
	MaxHeaderBytes int // all header lines of one frame together
	MaxFrameBytes  int // one message body
}

// DefaultLimits suit the CLI: large tool results and histories fit in 8 MiB.
var DefaultLimits = Limits{MaxHeaderBytes: 4 << 10, MaxFrameBytes: 8 << 20}

// Framing errors. Any of them leaves the stream unusable: close the connection.
var (
	ErrHeaderTooLarge = errors.New("jsonrpc: frame header too large")
	ErrFrameTooLarge  = errors.New("jsonrpc: frame too large")
	ErrBadHeader      = errors.New("jsonrpc: malformed frame header")
)

// Reader reads framed messages.
type Reader struct {
	br  *bufio.Reader
	lim Limits
}

// NewReader reads frames from r within lim.
func NewReader(r io.Reader, lim Limits) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), lim: lim}
}

// Read returns the next message body. io.EOF means the peer closed cleanly
// between frames; io.ErrUnexpectedEOF, a close inside one.
func (r *Reader) Read() ([]byte, error) {
	length, headerBytes := -1, 0
	for {
		line, err := r.br.ReadSlice('\n')
		headerBytes += len(line)
		if headerBytes > r.lim.MaxHeaderBytes || errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrHeaderTooLarge, r.lim.MaxHeaderBytes)
		}
		if err != nil {
			if errors.Is(err, io.EOF) && headerBytes == 0 {
				return nil, io.EOF
			}
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		text := strings.TrimRight(string(line), "\r\n")
		if text == "" {
			if length < 0 {
				return nil, fmt.Errorf("%w: no Content-Length", ErrBadHeader)
			}
			break
		}
		name, value, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("%w: %q is not a header line", ErrBadHeader, truncate(text))
		}
		if strings.EqualFold(strings.TrimSpace(name), "Content-Length") {
			n, err := strconv.Atoi(strings.TrimSpace(value))
			if err != nil || n < 0 {
				return nil, fmt.Errorf("%w: Content-Length %q", ErrBadHeader, truncate(value))
			}
			length = n
		}
	}
	if length > r.lim.MaxFrameBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, length, r.lim.MaxFrameBytes)
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r.br, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return body, nil
}

// Frame returns body with its header, ready for one Write.
func Frame(body []byte) []byte {
	out := make([]byte, 0, len(body)+32)
	out = append(out, "Content-Length: "...)
	out = strconv.AppendInt(out, int64(len(body)), 10)
	out = append(out, "\r\n\r\n"...)
	return append(out, body...)
}

// Kind is what a message is.
type Kind int

// The kinds of JSON-RPC message.
const (
	Request Kind = iota + 1
	Notification
	Response
)

func (k Kind) String() string {
	switch k {
	case Request:
		return "request"
	case Notification:
		return "notification"
	case Response:
		return "response"
	}
	return "invalid"
}

var (
	idleMarker  = []byte(`"` + protocol.EventSessionIdle + `"`)
	errorMarker = []byte(`"` + protocol.EventSessionError + `"`)
)

// EndsTurn reports whether m is the CLI's event that ends a session's turn: a
// session.event notification whose event type is session.idle or session.error.
func EndsTurn(m Message) bool {
	if m.Kind != Notification || m.Method != protocol.MethodSessionEvent {
		return false
	}
	// Every streamed delta is a session.event: skip the walk for those that
	// cannot end a turn (the CLI writes these names unescaped).
	if !bytes.Contains(m.Params, idleMarker) && !bytes.Contains(m.Params, errorMarker) {
		return false
	}
	t, _ := StringMember(m.Params, "event", "type")
	return t == protocol.EventSessionIdle || t == protocol.EventSessionError
}

// JSON-RPC's own error codes; climesh's are in package protocol.
const (
	CodeParseError     = -32700 // a message that is not JSON-RPC
	CodeInvalidRequest = -32600
	CodeInvalidParams  = -32602
)

// ErrorResponse builds a JSON-RPC error response to id (null when id is empty).
func ErrorResponse(id []byte, code int, message string, data any) []byte {
	if len(id) == 0 {
		id = []byte("null")
	}
	type rpcError struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Data    any    `json:"data,omitempty"`
	}
	b, _ := json.Marshal(struct {
		Version string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   rpcError        `json:"error"`
	}{"2.0", json.RawMessage(id), rpcError{code, message, data}})
	return b
}

// ResultResponse builds a JSON-RPC success response.
func ResultResponse(id []byte, result any) ([]byte, error) {
	return json.Marshal(struct {
		Version string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Result  any             `json:"result"`
	}{"2.0", json.RawMessage(id), result})
}

// RequestBody builds a request.
func RequestBody(id any, method string, params any) ([]byte, error) {
	return json.Marshal(struct {
		Version string `json:"jsonrpc"`
		ID      any    `json:"id,omitempty"` // nil: a notification
		Method  string `json:"method"`
		Params  any    `json:"params,omitempty"`
	}{"2.0", id, method, params})
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// ResumeParams turns the params of a session.create or session.resume into those
// of a session.resume of session id: the same options (provider included, which
// the CLI needs again on every resume), naming id.
func ResumeParams(params []byte, id string) []byte {
	obj := map[string]json.RawMessage{}
	json.Unmarshal(params, &obj) // a map: exact names (params were read strictly)
	obj["sessionId"], _ = json.Marshal(id)
	b, _ := json.Marshal(obj)
	return b
}

// AttachedSession is the session a successful session.create or session.resume
// attached: the sessionId its result names, else the one the request named.
func AttachedSession(result []byte, requested string) string {
	if id, ok := StringMember(result, "sessionId"); ok && id != "" {
		return id
	}
	return requested
}
