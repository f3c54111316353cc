package tunnel

import (
	"io"
	"net"
	"sync"
)

// copyBufferSize is large enough that a bulk transfer costs few syscalls
// and few yamux frames per megabyte.
const copyBufferSize = 256 << 10

var bufferPool = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// closeWriter is a connection that can end its outgoing direction alone
// (TCP, yamux streams, SSH channels).
type closeWriter interface{ CloseWrite() error }

// Splice copies bytes both ways between a and b until both directions end,
// then closes both. When one direction reaches EOF it half-closes the
// other side's write direction where that side supports it, so protocols
// that read to EOF still get their answer; where it does not, the first
// EOF ends the whole splice. It returns the bytes copied a->b and b->a.
func Splice(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	var once sync.Once
	closeBoth := func() { once.Do(func() { a.Close(); b.Close() }) }
	pump := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		buf := bufferPool.Get().(*[]byte)
		defer bufferPool.Put(buf)
		// Hide ReadFrom and WriteTo: for TCP they copy 32 KiB at a time,
		// and every piece becomes a yamux and a WebSocket frame.
		*n, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *buf)
		if cw, ok := dst.(closeWriter); ok {
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
