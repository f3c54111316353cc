package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// An independent implementation (coder/websocket) on the other end
// proves that ours speaks the protocol, not just to itself.

func TestOurServerWithAnotherClient(t *testing.T) {
	tests := []struct {
		name string
		typ  MessageType
		want websocket.MessageType
	}{
		{"binary", Binary, websocket.MessageBinary},
		{"text", Text, websocket.MessageText},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ws, err := AcceptWebSocket(w, r, tt.typ)
				if err != nil {
					return
				}
				defer ws.Close()
				_, _ = io.Copy(ws, io.LimitReader(ws, 3<<20)) // echo 3 MiB, then close normally
			}))
			defer srv.Close()
			c, _, err := websocket.Dial(context.Background(), srv.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			c.SetReadLimit(-1)
			payload := make([]byte, 3<<20)
			_, _ = rand.Read(payload)
			// Fragmented messages and a ping along the way.
			go func() {
				for off := 0; off < len(payload); off += 1 << 20 {
					w, _ := c.Writer(context.Background(), websocket.MessageBinary)
					_, _ = w.Write(payload[off : off+512<<10])
					_, _ = w.Write(payload[off+512<<10 : off+1<<20])
					_ = w.Close()
				}
			}()
			var got bytes.Buffer
			for got.Len() < len(payload) {
				typ, b, err := c.Read(context.Background())
				if err != nil {
					t.Fatalf("read after %d bytes: %v", got.Len(), err)
				}
				if typ != tt.want {
					t.Fatalf("message type %v, want %v", typ, tt.want)
				}
				got.Write(b)
			}
			if !bytes.Equal(got.Bytes(), payload) {
				t.Fatal("echo differs")
			}
			_, _, err = c.Read(context.Background())
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Errorf("close: %v, want status 1000", err)
			}
		})
	}
}

func TestOurClientWithAnotherServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.SetReadLimit(-1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		pinged := make(chan error, 1)
		go func() { pinged <- c.Ping(ctx) }() // needs our client to answer
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			if string(b) == "bye" {
				if err := <-pinged; err != nil {
					c.Close(websocket.StatusInternalError, "no pong: "+err.Error())
					return
				}
				c.Close(websocket.StatusGoingAway, "leaving")
				return
			}
			_ = c.Write(ctx, websocket.MessageBinary, b)
		}
	}))
	defer srv.Close()
	ws, err := DialWebSocket(context.Background(), srv.URL, srv.Client(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	payload := make([]byte, 2<<20+17)
	_, _ = rand.Read(payload)
	go func() { _, _ = ws.Write(payload) }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(ws, got); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatal("echo differs")
	}
	_, _ = ws.Write([]byte("bye"))
	_, err = ws.Read(make([]byte, 1))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != StatusGoingAway || ce.Reason != "leaving" {
		t.Errorf("read after the server closed: %v, want a CloseError 1001 leaving", err)
	}
}

func TestAcceptRefuses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = AcceptWebSocket(w, r, Binary)
	}))
	defer srv.Close()
	tests := []struct {
		name   string
		header map[string]string
		status int
	}{
		{"plain GET", map[string]string{}, 400},
		{"old version", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, 400},
		{"bad key", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "short"}, 400},
		{"foreign origin", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "https://evil.example"}, 403},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		for k, v := range tt.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s: %d, want %d", tt.name, resp.StatusCode, tt.status)
		}
	}
}

func TestMask(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	for _, n := range []int{0, 1, 7, 8, 15, 16, 17, 100} {
		for pos := range 4 {
			b := make([]byte, n)
			want := make([]byte, n)
			for i := range want {
				want[i] = key[(pos+i)%4]
			}
			if next := mask(key, pos, b); next != (pos+n)%4 || !bytes.Equal(b, want) {
				t.Errorf("mask(len %d, pos %d) = %v next %d", n, pos, b, next)
			}
		}
	}
}

// serverSide is a server-side WebSocket reading raw client bytes.
func serverSide(raw []byte) *WebSocket {
	a, b := net.Pipe()
	go func() { _, _ = io.Copy(io.Discard, b) }() // swallow what the server writes (pongs, closes)
	ws := newWebSocket(a, nil, false, Binary)
	ws.br = &growingReader{src: bytes.NewReader(raw), buf: make([]byte, minReadBuffer)}
	return ws
}

func clientFrame(op byte, fin bool, payload []byte) []byte {
	b := []byte{op}
	if fin {
		b[0] |= 0x80
	}
	switch {
	case len(payload) < 126:
		b = append(b, 0x80|byte(len(payload)))
	default:
		b = append(b, 0x80|126, 0, 0)
		binary.BigEndian.PutUint16(b[2:], uint16(len(payload)))
	}
	key := [4]byte{9, 8, 7, 6}
	b = append(b, key[:]...)
	masked := bytes.Clone(payload)
	mask(key, 0, masked)
	return append(b, masked...)
}

func TestReadFrames(t *testing.T) {
	var raw []byte
	raw = append(raw, clientFrame(opBinary, false, []byte("hel"))...)
	raw = append(raw, clientFrame(opPing, true, []byte("p"))...)
	raw = append(raw, clientFrame(opContinuation, true, []byte("lo"))...)
	raw = append(raw, clientFrame(opText, true, []byte(" world"))...)
	raw = append(raw, clientFrame(opClose, true, []byte{0x03, 0xe8})...)
	ws := serverSide(raw)
	got, err := io.ReadAll(ws)
	if err != nil || string(got) != "hello world" {
		t.Errorf("read %q, %v", got, err)
	}

	bad := map[string][]byte{
		"unmasked from a client": {0x82, 0x01, 'x'},
		"reserved bits":          append([]byte{0xc2}, clientFrame(opBinary, true, nil)[1:]...),
		"fragmented ping":        clientFrame(opPing, false, nil),
		"unknown opcode":         clientFrame(0x3, true, nil),
		"truncated":              clientFrame(opBinary, true, []byte("abc"))[:7],
	}
	for name, raw := range bad {
		if _, err := io.ReadAll(serverSide(raw)); err == nil {
			t.Errorf("%s: read without an error", name)
		}
	}
}

func FuzzReadFrames(f *testing.F) {
	f.Add(clientFrame(opBinary, true, []byte("hello")))
	f.Add(append(clientFrame(opPing, true, nil), clientFrame(opClose, true, []byte{3, 232})...))
	f.Fuzz(func(t *testing.T, raw []byte) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			ws := serverSide(raw)
			_, _ = io.Copy(io.Discard, ws)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("reading a finite input did not end")
		}
	})
}

// TestCloseKeepsTheTail: a server that writes and then closes while its
// client is still sending must not lose the end of what it wrote (an
// immediate close would make the kernel reset the connection).
func TestCloseKeepsTheTail(t *testing.T) {
	const size = 8 << 20
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := AcceptWebSocket(w, r, Binary)
		if err != nil {
			return
		}
		go func() { _, _ = io.Copy(io.Discard, ws) }()
		_, _ = ws.Write(make([]byte, size))
		_ = ws.Close()
	}))
	defer srv.Close()
	for round := range 5 {
		c, _, err := websocket.Dial(context.Background(), srv.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadLimit(-1)
		stop := make(chan struct{})
		go func() {
			chunk := make([]byte, 64<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c.Write(context.Background(), websocket.MessageBinary, chunk) != nil {
					return
				}
			}
		}()
		got := 0
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
					t.Errorf("round %d: read ended with %v after %d bytes", round, err, got)
				}
				break
			}
			got += len(b)
		}
		close(stop)
		if got != size {
			t.Errorf("round %d: received %d of %d bytes", round, got, size)
		}
	}
}
