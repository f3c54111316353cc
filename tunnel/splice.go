package tunnel

import (
	"io"
	"net"
	"sync"
)

// Copy buffers: a connection starts with a small one and moves to a large
// one while reads keep filling it. A bulk transfer then costs few
// syscalls and few frames per megabyte, while an idle or interactive
// connection (SSH, a quiet port-forward) ties up only the small one: a
// read blocks holding its buffer, and hundreds of connections wait.
const (
	smallBuffer = 16 << 10
	largeBuffer = 256 << 10
)

var largeBuffers = sync.Pool{New: func() any { b := make([]byte, largeBuffer); return &b }}

// closeWriter is a connection that can end its outgoing direction alone
// (TCP, yamux streams, SSH channels).
type closeWriter interface{ CloseWrite() error }

// Splice copies bytes both ways between a and b until both directions end,
// then closes both. When one direction reaches EOF it half-closes the
// other side's write direction where that side supports it, so protocols
// that read to EOF still get their answer; where it does not, the first
// EOF ends the whole splice; so does any error. It returns the bytes
// copied a->b and b->a.
func Splice(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	var once sync.Once
	closeBoth := func() { once.Do(func() { a.Close(); b.Close() }) }
	pump := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		var err error
		*n, err = copyAdaptive(dst, src)
		// Only a clean end half-closes; a failure (a lost tunnel, a reset)
		// ends both directions, or the other one would wait forever.
		if cw, ok := dst.(closeWriter); ok && err == nil {
			if cw.CloseWrite() == nil {
				return
			}
		}
		closeBoth()
	}
	wg.Add(2)
	go pump(b, a, &aToB)
	go pump(a, b, &bToA)
	wg.Wait()
	closeBoth()
	return aToB, bToA
}

// copyAdaptive is io.Copy with the buffer policy above. It never uses
// ReadFrom or WriteTo: for TCP they copy 32 KiB at a time, and every piece
// would become a yamux and a WebSocket frame.
func copyAdaptive(dst io.Writer, src io.Reader) (written int64, err error) {
	small := make([]byte, smallBuffer)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			largeBuffers.Put(large)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			written += int64(w)
			if werr != nil {
				return written, werr
			}
			if w != n {
				return written, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
		switch {
		case large == nil && n == len(buf):
			large = largeBuffers.Get().(*[]byte)
			buf = *large
		case large != nil && n < smallBuffer:
			largeBuffers.Put(large)
			large, buf = nil, small
		}
	}
}
