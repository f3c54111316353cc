package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Dial opens the tunnel's WebSocket to url (an http:// or https:// URL of
// the controller's tunnel endpoint) with client, which carries the TLS
// configuration, and header, which carries the credentials. The returned
// conn carries the bytes of the yamux session.
func Dial(ctx context.Context, url string, client *http.Client, header http.Header) (net.Conn, error) {
	ws, err := DialWebSocket(ctx, url, client, header)
	if err != nil {
		var ue *UpgradeError
		if errors.As(err, &ue) {
			return nil, &DialError{StatusCode: ue.StatusCode, Message: bodyMessage(ue.Body), err: err}
		}
		return nil, fmt.Errorf("dial tunnel: %w", err)
	}
	return &coalescingConn{Conn: ws}, nil
}

// DialError is a refused tunnel upgrade: the controller answered with an
// HTTP status instead of switching protocols.
type DialError struct {
	StatusCode int
	Message    string
	err        error
}

func (e *DialError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("controller refused the tunnel: %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
	}
	return fmt.Sprintf("controller refused the tunnel: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
}

func (e *DialError) Unwrap() error { return e.err }

// Accept upgrades an HTTP request to the tunnel's WebSocket.
func Accept(w http.ResponseWriter, r *http.Request) (net.Conn, error) {
	ws, err := AcceptWebSocket(w, r, Binary)
	if err != nil {
		return nil, fmt.Errorf("accept tunnel: %w", err)
	}
	return &coalescingConn{Conn: ws}, nil
}

// coalescingConn sends each yamux frame as one WebSocket message. yamux
// writes a frame's 12-byte header and its body in two calls; sent as is,
// that would cost two WebSocket frames and two flushes per yamux frame.
// yamux writes from a single goroutine, so no lock is needed.
type coalescingConn struct {
	net.Conn
	buf []byte
}

const yamuxHeaderSize = 12

func (c *coalescingConn) Write(p []byte) (int, error) {
	if len(c.buf) == 0 && len(p) == yamuxHeaderSize && p[1] == 0 /* data frame */ {
		if n := uint32(p[8])<<24 | uint32(p[9])<<16 | uint32(p[10])<<8 | uint32(p[11]); n > 0 {
			c.buf = append(c.buf[:0], p...)
			return len(p), nil
		}
	}
	if len(c.buf) == 0 {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if cap(c.buf) > 1<<20 {
		c.buf = nil
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// keepAliveInterval is how often each side pings the other; a session
// whose pings go unanswered for writeTimeout is dead.
const (
	keepAliveInterval = 10 * time.Second
	writeTimeout      = 15 * time.Second
)
