package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// streamWindow is the per-stream receive window. yamux's default (256 KiB)
// caps one stream's throughput at window/RTT; a few MiB keeps a
// port-forward at link speed without letting one stream hog memory.
const streamWindow = 4 << 20

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.AcceptBacklog = 1024
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = keepAliveInterval
	cfg.ConnectionWriteTimeout = writeTimeout
	cfg.MaxStreamWindowSize = streamWindow
	cfg.StreamOpenTimeout = 30 * time.Second
	cfg.StreamCloseTimeout = time.Minute
	cfg.LogOutput = io.Discard
	return cfg
}

// NewWorker starts the worker's side of the yamux session on conn.
func NewWorker(conn net.Conn) (*yamux.Session, error) {
	s, err := yamux.Client(conn, yamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("start tunnel session: %w", err)
	}
	return s, nil
}

// NewController starts the controller's side of the yamux session on conn.
func NewController(conn net.Conn) (*yamux.Session, error) {
	s, err := yamux.Server(conn, yamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("start tunnel session: %w", err)
	}
	return s, nil
}

// IsClosed reports whether err means the session or stream went away, as
// opposed to a protocol error worth logging.
func IsClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, ErrSessionLost) || errors.Is(err, net.ErrClosed) || errors.Is(err, yamux.ErrSessionShutdown) ||
		errors.Is(err, yamux.ErrStreamClosed) || errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, io.ErrUnexpectedEOF)
}

// bodyMessage is the message of a {"message": ...} error body, or the
// body as text.
func bodyMessage(b []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &e) == nil && e.Message != "" {
		return e.Message
	}
	return strings.TrimSpace(string(b))
}

// Stream is a yamux stream as the rest of the project uses it:
//
//   - it can half-close: yamux's Close sends FIN and keeps reading until
//     the peer closes too, which is what Splice's CloseWrite needs;
//   - a read that ends because the whole session died reports
//     ErrSessionLost instead of io.EOF, so a port-forward cut by a lost
//     worker does not look like a clean end.
type Stream struct{ *yamux.Stream }

// ErrSessionLost is what a Stream's Read returns when its session dies.
var ErrSessionLost = errors.New("tunnel session lost")

// Read reads from the stream.
func (s Stream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if err == io.EOF && s.Stream.Session().IsClosed() {
		return n, ErrSessionLost
	}
	return n, err
}

// CloseWrite ends the outgoing direction.
func (s Stream) CloseWrite() error { return s.Stream.Close() }

// OpenStream opens a stream on s.
func OpenStream(s *yamux.Session) (Stream, error) {
	st, err := s.OpenStream()
	if err != nil {
		return Stream{}, fmt.Errorf("open tunnel stream: %w", err)
	}
	return Stream{st}, nil
}

// AcceptStream waits for the peer to open a stream on s.
func AcceptStream(ctx context.Context, s *yamux.Session) (Stream, error) {
	st, err := s.AcceptStreamWithContext(ctx)
	if err != nil {
		return Stream{}, err
	}
	return Stream{st}, nil
}
