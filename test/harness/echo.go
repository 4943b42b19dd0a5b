package harness

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// Echo is a WebSocket upstream that greets every connection with its instance id,
// then echoes what it receives. It stands in for a sidecar in control-plane tests.
type Echo struct {
	ID   string
	Port int
	srv  *http.Server
}

// StartEcho listens on a free loopback port (or port, when not 0).
func StartEcho(id string, port int) (*Echo, error) {
	lis, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", itoa(port)))
	if err != nil {
		return nil, err
	}
	e := &Echo{ID: id, Port: lis.Addr().(*net.TCPAddr).Port}
	e.srv = &http.Server{Handler: http.HandlerFunc(e.serve), ReadHeaderTimeout: 5 * time.Second}
	go e.srv.Serve(lis)
	return e, nil
}

func (e *Echo) serve(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx := r.Context()
	if err := c.Write(ctx, websocket.MessageText, []byte(e.ID)); err != nil {
		return
	}
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return
		}
	}
}

// Close stops the upstream and drops its connections.
func (e *Echo) Close() { e.srv.Close() }

// WhoServes opens a tunnel through url with the given headers and returns the id
// of the instance that answered.
func WhoServes(ctx context.Context, url string, header http.Header) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		return "", err
	}
	defer c.CloseNow()
	_, msg, err := c.Read(ctx)
	if err != nil {
		return "", err
	}
	c.Close(websocket.StatusNormalClosure, "")
	return string(msg), nil
}

func itoa(i int) string { return strconv.Itoa(i) }
