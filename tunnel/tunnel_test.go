package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

func TestMessageRoundTrip(t *testing.T) {
	msgs := []*Message{
		{Type: TypeHello, Hello: &Hello{Protocol: 1, Name: "w", MachineID: "m", Driver: "local", Resources: v1.Resources{"a": 1},
			Instances: []Instance{{LocalName: "orchard-a-b-0", Running: true}}}},
		{Type: TypeWelcome, Welcome: &Welcome{Protocol: 1, HeartbeatSeconds: 10}},
		{Type: TypeHeartbeat},
		{Type: TypeVMSet, VMSet: &VMSet{Full: true, VMs: []*v1.VM{{Image: "i", Meta: v1.Meta{Name: "a"}}}, Deleted: []string{"b"}}},
		{Type: TypeVMStatus, VMStatus: &VMStatus{Name: "a", UID: "u", Status: v1.VMStatusRunning, Running: true}},
		{Type: TypeVMEvents, VMEvents: &VMEvents{Name: "a", UID: "u", Events: []v1.Event{{Kind: "log_line", Payload: "hi"}}}},
		{Type: TypeError, Error: &Error{Message: "bye"}},
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range msgs {
		got, err := ReadMessage(&buf)
		if err != nil {
			t.Fatalf("read %s: %v", want.Type, err)
		}
		if got.Type != want.Type {
			t.Errorf("type = %q, want %q", got.Type, want.Type)
		}
	}
	if _, err := ReadMessage(&buf); err != io.EOF {
		t.Errorf("read past the end: %v, want EOF", err)
	}
}

func TestReadMessageRejects(t *testing.T) {
	frame := func(body string) []byte {
		b := []byte{0, 0, 0, byte(len(body))}
		return append(b, body...)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"unknown type", frame(`{"type":"launch"}`), "unknown message type"},
		{"missing body", frame(`{"type":"hello"}`), "without its body"},
		{"not json", frame(`hello`), "decode control message"},
		{"bad os in a VM", frame(`{"type":"vm_set","vm_set":{"vms":[{"os":"windows"}]}}`), "unsupported value"},
		{"too large", []byte{0xff, 0xff, 0xff, 0xff}, "over the size limit"},
		{"truncated body", []byte{0, 0, 0, 10, '{'}, "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadMessage(bytes.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestRequestResponseRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	req := Request{Op: OpDial, Port: 5900, LocalName: "orchard-vm-uid-3"}
	if err := WriteRequest(&buf, req); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadRequest(&buf); err != nil || got != req {
		t.Fatalf("request = %+v, %v", got, err)
	}
	resp := Response{Code: CodeUnreachable, Message: "connection refused"}
	if err := WriteResponse(&buf, resp); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadResponse(&buf); err != nil || got != resp {
		t.Fatalf("response = %+v, %v", got, err)
	}
	bad := [][]byte{
		{2, 1, 0, 22, 0, 1, 'a'}, // version
		{1, 9, 0, 22, 0, 1, 'a'}, // operation
		{1, 1, 0, 22, 0, 0},      // empty name
		{1, 1, 0, 22, 0, 5, 'a'}, // truncated
	}
	for _, b := range bad {
		if _, err := ReadRequest(bytes.NewReader(b)); err == nil {
			t.Errorf("ReadRequest(%v) accepted a bad header", b)
		}
	}
	if err := WriteRequest(&buf, Request{Op: OpDial}); err == nil {
		t.Error("WriteRequest accepted an empty name")
	}
}

func FuzzReadMessage(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteMessage(&buf, &Message{Type: TypeVMSet, VMSet: &VMSet{VMs: []*v1.VM{{Image: "x", Meta: v1.Meta{Name: "a"}}}}})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadMessage(bytes.NewReader(b))
		if err == nil && m.check() != nil {
			t.Fatalf("accepted an inconsistent message %+v", m)
		}
	})
}

func FuzzReadRequest(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteRequest(&buf, Request{Op: OpIP, LocalName: "orchard-a-b-0"})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ReadRequest(bytes.NewReader(b))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteRequest(&out, r); err != nil {
			t.Fatalf("cannot re-encode an accepted request %+v: %v", r, err)
		}
		if !bytes.HasPrefix(b, out.Bytes()) {
			t.Fatalf("re-encoding %+v differs from its input", r)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteResponse(&buf, Response{Code: CodeOK, Message: "10.0.0.1"})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := ReadResponse(bytes.NewReader(b)); err == nil && (r.Code > CodeBadRequest || len(r.Message) > maxText) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

// pair connects a worker and a controller session through a real
// WebSocket on loopback.
type pair struct {
	worker, controller *yamux.Session
	conns              *trackingListener
}

// trackingListener remembers accepted connections so a test can cut them,
// hijacked WebSockets included (httptest forgets those).
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

func newPair(t *testing.T) *pair {
	t.Helper()
	accepted := make(chan *yamux.Session, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := Accept(w, r)
		if err != nil {
			t.Error(err)
			return
		}
		s, err := NewController(conn)
		if err != nil {
			t.Error(err)
			return
		}
		accepted <- s
		<-s.CloseChan()
	}))
	tl := &trackingListener{Listener: srv.Listener}
	srv.Listener = tl
	srv.Start()
	conn, err := Dial(context.Background(), srv.URL, srv.Client(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := NewWorker(conn)
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{worker: ws, controller: <-accepted, conns: tl}
	t.Cleanup(func() {
		p.worker.Close()
		p.controller.Close()
		tl.cut()
		srv.Close()
	})
	return p
}

// serveEcho answers every controller-opened stream on the worker side:
// dials succeed and echo, ip returns a fixed address.
func serveEcho(s *yamux.Session) {
	for {
		st, err := s.AcceptStream()
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			req, err := ReadRequest(st)
			if err != nil {
				_ = WriteResponse(st, Response{Code: CodeBadRequest, Message: err.Error()})
				return
			}
			if req.Op == OpIP {
				_ = WriteResponse(st, Response{Code: CodeOK, Message: "127.0.0.9"})
				return
			}
			_ = WriteResponse(st, Response{Code: CodeOK})
			_, _ = io.Copy(st, st)
		}()
	}
}

func TestManyConcurrentStreams(t *testing.T) {
	p := newPair(t)
	go serveEcho(p.worker)
	const streams, size = 300, 64 << 10
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			st, err := p.controller.OpenStream()
			if err != nil {
				t.Error(err)
				return
			}
			defer st.Close()
			if err := WriteRequest(st, Request{Op: OpDial, Port: 22, LocalName: fmt.Sprintf("orchard-vm%d-u-0", i)}); err != nil {
				t.Error(err)
				return
			}
			if resp, err := ReadResponse(st); err != nil || resp.Code != CodeOK {
				t.Errorf("response = %+v, %v", resp, err)
				return
			}
			payload := make([]byte, size)
			_, _ = rand.Read(payload)
			want := sha256.Sum256(payload)
			go func() {
				_, _ = st.Write(payload)
				_ = Stream{st}.CloseWrite()
			}()
			h := sha256.New()
			n, err := io.Copy(h, st)
			if err != nil || n != size {
				t.Errorf("echoed %d bytes, %v", n, err)
				return
			}
			if !bytes.Equal(h.Sum(nil), want[:]) {
				t.Errorf("stream %d: checksum mismatch", i)
			}
		})
	}
	wg.Wait()
}

func TestSessionDeathFailsStreams(t *testing.T) {
	p := newPair(t)
	go serveEcho(p.worker)
	st, err := OpenStream(p.controller)
	if err != nil {
		t.Fatal(err)
	}
	_ = WriteRequest(st, Request{Op: OpDial, Port: 22, LocalName: "orchard-a-b-0"})
	if _, err := ReadResponse(st); err != nil {
		t.Fatal(err)
	}
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, st)
		readDone <- err
	}()
	if _, err := st.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	// Kill the TCP connection under the WebSocket.
	p.conns.cut()
	select {
	case err := <-readDone:
		if !errors.Is(err, ErrSessionLost) {
			t.Errorf("read err = %v, want ErrSessionLost", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a stream outlived its session")
	}
	select {
	case <-p.worker.CloseChan():
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not notice its session died")
	}
	if _, err := p.worker.OpenStream(); err == nil {
		t.Error("opened a stream on a dead session")
	}
}

func TestDialRefusedCarriesStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		_, _ = w.Write([]byte(`{"message":"worker w exists with another machine id"}`))
	}))
	defer srv.Close()
	_, err := Dial(context.Background(), srv.URL, srv.Client(), nil)
	var de *DialError
	if !errors.As(err, &de) || de.StatusCode != http.StatusConflict || !strings.Contains(de.Message, "another machine id") {
		t.Fatalf("err = %v, want a DialError with 409 and the message", err)
	}
}

func TestSpliceHalfClose(t *testing.T) {
	// client <-> [a | splice | b] <-> server, all TCP on loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		// The server reads to EOF, then answers: only half-close lets it.
		b, _ := io.ReadAll(c)
		_, _ = c.Write([]byte(strings.ToUpper(string(b))))
		c.Close()
	}()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	go func() {
		a, err := front.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			a.Close()
			return
		}
		Splice(a, b)
	}()
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("hello"))
	_ = c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	if string(got) != "HELLO" {
		t.Errorf("got %q through the splice, want HELLO", got)
	}
}

// failingConn fails its reads at once, as a stream of a lost session does.
type failingConn struct {
	net.Conn
	closed chan struct{}
	once   sync.Once
}

func (f *failingConn) Read([]byte) (int, error) { return 0, ErrSessionLost }
func (f *failingConn) Close() error             { f.once.Do(func() { close(f.closed) }); return nil }
func (f *failingConn) CloseWrite() error        { return nil }

func TestSpliceEndsBothOnFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c) // a VM service that never closes first
		}
	}()
	tcp, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	lost := &failingConn{closed: make(chan struct{})}
	done := make(chan struct{})
	go func() { Splice(lost, tcp); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a splice whose one side failed waited for the other forever")
	}
}
