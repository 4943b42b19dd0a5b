// Package connector is the client side of climesh: it carries one SDK connection
// (stdio or TCP, Content-Length framed JSON-RPC) through one tunnel to the edge,
// with the caller's identity on the upgrade request. The application changes
// nothing but the address (or the executable) its SDK uses.
package connector

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/climesh/climesh/protocol"
	"github.com/climesh/climesh/session/jsonrpc"
	"github.com/climesh/climesh/tunnel"
)

// Options say where the edge is and who is calling.
type Options struct {
	EdgeURL string // ws://host:port/v1/rpc
	Token   string // bearer token; in TCP mode the SDK's connect token wins
	User    string // x-climesh-user, only for edges that trust client headers
	// TokenAsUser sends each connection's token as its x-climesh-user when User
	// is empty: for development edges that trust client headers and verify no
	// JWT, so that each SDK connection is routed as its own user.
	TokenAsUser bool
	Session     string // shared-session name, if any
	// LockWait asks the sidecar to wait this long for a busy shared session
	// instead of answering busy at once.
	LockWait time.Duration
	// Reconnect is how long to keep trying to regain a lost tunnel (then resume
	// the application's sessions); 0 ends the SDK connection at once.
	Reconnect time.Duration
	// Events counts what happened (for metrics); may be nil.
	Events *Events
	Limits jsonrpc.Limits
}

// Header is the upgrade request's identity.
func (o Options) Header(token string) http.Header {
	h := http.Header{}
	if token != "" {
		h.Set(protocol.HeaderAuthorization, "Bearer "+token)
	}
	if o.User != "" {
		h.Set(protocol.HeaderUser, o.User)
	} else if o.TokenAsUser && token != "" {
		h.Set(protocol.HeaderUser, token)
	}
	if o.Session != "" {
		h.Set(protocol.HeaderSession, o.Session)
	}
	if o.LockWait > 0 {
		h.Set(protocol.HeaderLockWait, o.LockWait.String())
	}
	if o.followsMoves() {
		h.Set(protocol.HeaderFeatures, protocol.FeatureMove)
	}
	return h
}

// followsMoves: a move is a reconnect, so only a connector that reconnects can
// follow one; and a shared (collab) session's tunnel is not moved — another
// member's turn streams to it without this connector's knowing when it ends.
func (o Options) followsMoves() bool { return o.Reconnect > 0 && o.Session == "" }

// ConnectToken returns the token of an SDK `connect` request, if first is one.
func ConnectToken(first []byte) string {
	m, err := jsonrpc.ParseTrusted(first)
	if err != nil || m.Kind != jsonrpc.Request || m.Method != protocol.MethodConnect {
		return ""
	}
	token, _ := jsonrpc.StringMember(m.Params, "token")
	return token
}

// Serve carries the SDK stream (in, out) through a tunnel until the SDK closes.
// first, when not nil, is a message already read from in. When the edge cannot be
// reached or refuses at the start, every request the SDK sends is answered with a
// JSON-RPC error that names the cause: no hang. When the tunnel closes under a
// running connection and o.Reconnect > 0, Serve reconnects (for up to
// o.Reconnect) and resumes the application's sessions; see continuity.
func Serve(ctx context.Context, o Options, token string, in *jsonrpc.Reader, out io.Writer, first []byte) error {
	conn, err := tunnel.Dial(ctx, o.EdgeURL, o.Header(token), o.Limits.MaxFrameBytes)
	if err != nil {
		refuse(in, out, first, err)
		return err
	}
	cont := newContinuity(out)
	sdk := make(chan []byte)
	sdkDone := make(chan error, 1)
	go func() {
		for {
			body, err := in.Read()
			if err != nil {
				sdkDone <- err
				return
			}
			select {
			case sdk <- body:
			case <-ctx.Done():
				return
			}
		}
	}()
	pin := conn.Pin
	link := startLink(ctx, conn, cont, o.followsMoves())
	link.ready.Store(true)
	if first != nil {
		cont.fromSDK(first)
		conn.Write(ctx, first)
	}
	for {
		select {
		case body := <-sdk:
			cont.fromSDK(body)
			if err := link.conn.Write(ctx, body); err != nil {
				<-link.lost // the reader sees the same failure
				if link = reconnect(ctx, o, token, &pin, cont, sdk, link.err); link == nil {
					return closeOut(out, errors.New("climesh edge lost and not regained"))
				}
			}
		case <-link.lost:
			if link = reconnect(ctx, o, token, &pin, cont, sdk, link.err); link == nil {
				return closeOut(out, errors.New("climesh edge lost and not regained"))
			}
		case req := <-link.move:
			// The sidecar says the user's home is elsewhere now, and the link
			// saw nothing of the application's in flight. Checked again here,
			// where the application's messages are sent, so that none slips in:
			// close and let the ring pick, resuming the sessions there.
			// Otherwise the move waits for the next moment nothing is in flight.
			moving := cont.idle()
			if moving {
				link.conn.Close("moving to the user's home instance")
			}
			close(req)
			if !moving {
				continue
			}
			<-link.lost
			pin = ""
			o.Events.moved()
			if link = reconnect(ctx, o, token, &pin, cont, sdk, errMoving); link == nil {
				return closeOut(out, errors.New("climesh edge lost and not regained"))
			}
		case err := <-sdkDone:
			if errors.Is(err, io.EOF) {
				link.conn.Close("client closed")
				return nil
			}
			// A frame we cannot read: say so to the SDK, then end this connection only.
			cont.write(jsonrpc.ErrorResponse(nil, jsonrpc.CodeParseError, err.Error(), nil))
			link.conn.Close("bad frame from client")
			return err
		case <-ctx.Done():
			link.conn.Close("shutting down")
			return ctx.Err()
		}
	}
}

// moveMethod is protocol.MethodMove as a frame carries it.
var moveMethod = []byte(`"` + protocol.MethodMove + `"`)

// errMoving is the cause of a tunnel the connector closed to move.
var errMoving = errors.New("moving to the user's home instance")

// link is one tunnel and the goroutine reading it.
type link struct {
	conn *tunnel.Conn
	lost chan struct{} // closed when the tunnel is gone
	// move carries the link's request to move (protocol.MethodMove) to Serve's
	// loop, which closes the request once it decided.
	move chan chan struct{}
	// ready: Serve's loop reads move (the sessions are restored); until then a
	// move waits, so that the restore's answers are not held up.
	ready atomic.Bool
	err   error
}

// startLink reads conn; follow says whether a protocol.MethodMove is followed
// (the connector announced protocol.FeatureMove) or ignored.
func startLink(ctx context.Context, conn *tunnel.Conn, cont *continuity, follow bool) *link {
	l := &link{conn: conn, lost: make(chan struct{}), move: make(chan chan struct{})}
	// wanted: the sidecar asked to move; the move is made at the first moment
	// nothing of the application's is in flight — at once, or when the turn
	// running ends: before that turn's last event reaches the application,
	// so that its next call cannot come first.
	wanted := false
	tryMove := func() {
		if !wanted || !l.ready.Load() || !cont.idle() {
			return
		}
		req := make(chan struct{})
		timer := time.NewTimer(time.Second)
		defer timer.Stop()
		select {
		case l.move <- req:
			<-req // Serve's loop decides at once
		case <-timer.C: // Serve's loop is busy with this tunnel's loss: no move
		case <-ctx.Done():
		}
	}
	go func() {
		defer close(l.lost)
		for {
			msg, err := conn.Read(ctx)
			if err != nil {
				if _, reason, ok := tunnel.CloseReason(err); ok && reason != "" {
					err = errors.New("edge closed the tunnel: " + reason)
				}
				l.err = err
				return
			}
			if isMove(msg) {
				wanted = follow
				tryMove()
				continue
			}
			if cont.fromEdge(msg) {
				tryMove()
				if cont.write(msg) != nil {
					l.err = errors.New("client gone")
					conn.Close("client gone")
					return
				}
			}
		}
	}()
	return l
}

// reconnect reports the loss, then dials again with backoff for up to o.Reconnect
// and restores the sessions. What the SDK sends meanwhile is held (up to
// maxQueued messages) and sent, in order, once the sessions are back: a call made
// while the tunnel is being regained is late, not lost. If the edge is not
// regained, every held request is answered with an error. nil means the edge was
// not regained (or reconnecting is off).
//
// *pin is the instance the lost tunnel reached (see protocol.HeaderPin): the first
// attempts ask for it, so that a user whose sessions live on one instance's disk
// goes back there even if the ring has changed since; once that instance refuses
// (draining) or fails the restore, the pin is dropped and the ring decides.
func reconnect(ctx context.Context, o Options, token string, pin *string, cont *continuity, sdk <-chan []byte, cause error) *link {
	if cause == nil {
		cause = errors.New("tunnel closed")
	}
	cont.lost(cause)
	var held [][]byte
	giveUp := func(why string) *link {
		for _, body := range held {
			if m, err := jsonrpc.ParseTrusted(body); err == nil && m.Kind == jsonrpc.Request {
				cont.write(jsonrpc.ErrorResponse(m.ID, protocol.CodeUnavailable, "climesh: "+why+": "+cause.Error(), nil))
			}
		}
		return nil
	}
	if o.Reconnect <= 0 {
		return nil
	}
	deadline := time.Now().Add(o.Reconnect)
	wait := 100 * time.Millisecond
	for time.Now().Before(deadline) {
		header := o.Header(token)
		if *pin != "" {
			header.Set(protocol.HeaderPin, *pin)
		}
		conn, err := tunnel.Dial(ctx, o.EdgeURL, header, o.Limits.MaxFrameBytes)
		var refused *tunnel.RefusedError
		if errors.As(err, &refused) && *pin != "" {
			*pin = "" // the pinned instance refuses (draining): let the ring pick, now
			continue
		}
		if err == nil {
			*pin = conn.Pin
			l := startLink(ctx, conn, cont, o.followsMoves())
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = cont.restore(rctx, conn)
			cancel()
			if err == nil {
				o.Events.reconnected()
				// Every held call is noted before any is sent: should the new
				// tunnel fail midway, each is answered by the loss (none dropped).
				for _, body := range held {
					cont.fromSDK(body)
				}
				for _, body := range held {
					if conn.Write(ctx, body) != nil {
						break // the link has seen the loss too
					}
				}
				l.ready.Store(true)
				return l
			}
			*pin = "" // that instance could not take the sessions back
			conn.Close("restore failed")
		}
		timer := time.NewTimer(wait)
	waiting:
		for {
			select {
			case body := <-sdk: // the SDK keeps talking: hold its calls for the new tunnel
				m, err := jsonrpc.ParseTrusted(body)
				switch {
				case err != nil || m.Kind == jsonrpc.Response:
					// an answer to the lost tunnel's CLI, or garbage: nobody to give it to
				case len(held) < maxQueued:
					held = append(held, body)
				case m.Kind == jsonrpc.Request:
					cont.write(jsonrpc.ErrorResponse(m.ID, protocol.CodeUnavailable, "climesh: reconnecting to the edge: "+cause.Error(), nil))
				}
			case <-timer.C:
				break waiting
			case <-ctx.Done():
				timer.Stop()
				return giveUp("shutting down")
			}
		}
		wait = min(wait*2, 2*time.Second)
	}
	return giveUp("the edge was not regained")
}

// maxQueued bounds what the SDK may send while its tunnel is being regained.
const maxQueued = 256

// closeOut ends the SDK's side so that it sees its connection end.
func closeOut(out io.Writer, err error) error {
	if c, ok := out.(io.Closer); ok {
		c.Close()
	}
	return err
}

// refuse answers each request with the dial error until in ends.
func refuse(in *jsonrpc.Reader, out io.Writer, first []byte, cause error) {
	code, data := protocol.CodeUnavailable, map[string]any{}
	var refused *tunnel.RefusedError
	if errors.As(cause, &refused) {
		code, data["status"], data["reason"] = protocol.CodeRefused, refused.Status, refused.Reason
		if refused.DecisionID != "" {
			data["decision_id"] = refused.DecisionID
		}
		if refused.Status == http.StatusServiceUnavailable {
			// The edge could not decide (its authorization service is
			// unreachable): an outage, not a refusal; try again.
			code, data["unavailable"] = protocol.CodeUnavailable, "edge authorization"
		}
	}
	answer := func(body []byte) {
		m, err := jsonrpc.ParseTrusted(body)
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

// isMove reports whether msg is the sidecar's protocol.MethodMove notification.
// Most frames are not: they are read once more only if they name the method
// as the sidecar writes it (a CLI's, in any encoding, never reaches here).
func isMove(msg []byte) bool {
	if !bytes.Contains(msg, moveMethod) {
		return false
	}
	m, err := jsonrpc.ParseTrusted(msg)
	return err == nil && m.Kind == jsonrpc.Notification && m.Method == protocol.MethodMove
}

// Events counts reconnects and moves (exported as metrics by the command).
type Events struct{ Reconnects, Moves atomic.Int64 }

func (e *Events) reconnected() {
	if e != nil {
		e.Reconnects.Add(1)
	}
}

func (e *Events) moved() {
	if e != nil {
		e.Moves.Add(1)
	}
}
