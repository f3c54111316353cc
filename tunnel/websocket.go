package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// This file is a WebSocket (RFC 6455) carrying a byte stream, for the
// worker's tunnel and for port-forwards. It exists because throughput is
// the point here: a general-purpose library that masks and reads in 4 KiB
// chunks spends most of a transfer in syscalls. This one reads through a
// 256 KiB buffer, masks into a 256 KiB buffer, and sends each Write as one
// frame with one syscall (writev on the unmasked side).
//
// It speaks the whole protocol a peer may use: masked client frames,
// fragmented messages, text or binary data, ping/pong and the closing
// handshake with status codes. Message boundaries carry no meaning: Read
// returns the concatenation of all data frames.

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA

	// Close status codes.
	StatusNormalClosure = 1000
	StatusGoingAway     = 1001
	StatusProtocolError = 1002
	StatusInternalError = 1011

	wsBufferSize = 256 << 10
	// maxFramePayload bounds what one Write sends as one frame.
	maxFramePayload = 1 << 20
	// maxControlPayload is RFC 6455's limit for control frames.
	maxControlPayload = 125

	websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
)

// MessageType selects the frames a WebSocket sends.
type MessageType int

const (
	Binary MessageType = iota
	// Text frames, for clients on x/net/websocket, which expect them.
	Text
)

// WebSocket is one end of a WebSocket connection as a net.Conn.
type WebSocket struct {
	raw    io.ReadWriteCloser
	netc   net.Conn // raw as a net.Conn, when it is one: deadlines, addresses
	br     io.Reader
	client bool // we mask our frames, and expect unmasked ones
	dataOp byte

	readMu    sync.Mutex
	remaining int64 // payload bytes left in the current data frame
	masked    bool
	maskKey   [4]byte
	maskPos   int
	readErr   error

	writeMu   sync.Mutex
	wbuf      []byte
	closeSent bool

	closeOnce sync.Once
	closed    chan struct{}
}

func newWebSocket(raw io.ReadWriteCloser, buffered *bufio.Reader, client bool, typ MessageType) *WebSocket {
	ws := &WebSocket{raw: raw, client: client, dataOp: opBinary, closed: make(chan struct{})}
	if typ == Text {
		ws.dataOp = opText
	}
	ws.netc, _ = raw.(net.Conn)
	var src io.Reader = raw
	if buffered != nil && buffered.Buffered() > 0 {
		// Bytes that arrived with the handshake come first.
		peek, _ := buffered.Peek(buffered.Buffered())
		src = io.MultiReader(bytes.NewReader(bytes.Clone(peek)), raw)
	}
	ws.br = &growingReader{src: src, buf: make([]byte, minReadBuffer)}
	return ws
}

// Read buffer sizes: an idle connection (a worker's tunnel between
// heartbeats) keeps a small buffer; a busy one grows it, so that a bulk
// transfer reads 256 KiB per syscall.
const minReadBuffer = 16 << 10

// growingReader is a read buffer that doubles (up to wsBufferSize) while
// every fill fills it, and drops back once fills stay small.
type growingReader struct {
	src   io.Reader
	buf   []byte
	r, w  int
	small int // consecutive fills under an eighth of the buffer
}

func (g *growingReader) Read(p []byte) (int, error) {
	if g.r == g.w {
		if err := g.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, g.buf[g.r:g.w])
	g.r += n
	return n, nil
}

func (g *growingReader) fill() error {
	g.r, g.w = 0, 0
	n, err := g.src.Read(g.buf)
	g.w = n
	switch {
	case n == len(g.buf) && len(g.buf) < wsBufferSize:
		// Full: the next fill gets twice the room. The data read stays
		// where it is until consumed.
		next := make([]byte, min(2*len(g.buf), wsBufferSize))
		g.w = copy(next, g.buf[:n])
		g.buf = next
		g.small = 0
	case n < len(g.buf)/8 && len(g.buf) > minReadBuffer:
		if g.small++; g.small >= 16 {
			next := make([]byte, minReadBuffer)
			g.w = copy(next, g.buf[:n])
			g.buf, g.small = next, 0
		}
	default:
		g.small = 0
	}
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// CloseError is a close frame with a status other than normal, received
// or sent.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("websocket closed with status %d: %s", e.Code, e.Reason)
	}
	return fmt.Sprintf("websocket closed with status %d", e.Code)
}

// Read reads data from the stream of data frames. A normal close reads
// as io.EOF, any other close as a *CloseError.
func (ws *WebSocket) Read(p []byte) (int, error) {
	ws.readMu.Lock()
	defer ws.readMu.Unlock()
	for ws.remaining == 0 {
		if ws.readErr != nil {
			return 0, ws.readErr
		}
		if err := ws.nextFrame(); err != nil {
			ws.readErr = err
			return 0, err
		}
	}
	if int64(len(p)) > ws.remaining {
		p = p[:ws.remaining]
	}
	n, err := ws.br.Read(p)
	if ws.masked {
		ws.maskPos = mask(ws.maskKey, ws.maskPos, p[:n])
	}
	ws.remaining -= int64(n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		ws.readErr = err
	}
	return n, err
}

// nextFrame reads frame headers, answering control frames, until a data
// frame with a payload starts.
func (ws *WebSocket) nextFrame() error {
	var h [14]byte
	if _, err := io.ReadFull(ws.br, h[:2]); err != nil {
		return err
	}
	fin, op := h[0]&0x80 != 0, h[0]&0x0f
	if h[0]&0x70 != 0 {
		return ws.fail(StatusProtocolError, "reserved bits set (no extension was negotiated)")
	}
	masked := h[1]&0x80 != 0
	if masked == ws.client {
		if ws.client {
			return ws.fail(StatusProtocolError, "the server masked a frame")
		}
		return ws.fail(StatusProtocolError, "the client sent an unmasked frame")
	}
	length := int64(h[1] & 0x7f)
	switch length {
	case 126:
		if _, err := io.ReadFull(ws.br, h[2:4]); err != nil {
			return unexpectedEOF(err)
		}
		length = int64(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		if _, err := io.ReadFull(ws.br, h[2:10]); err != nil {
			return unexpectedEOF(err)
		}
		u := binary.BigEndian.Uint64(h[2:10])
		if u > 1<<62 {
			return ws.fail(StatusProtocolError, "frame length out of range")
		}
		length = int64(u)
	}
	var key [4]byte
	if masked {
		if _, err := io.ReadFull(ws.br, key[:]); err != nil {
			return unexpectedEOF(err)
		}
	}
	switch op {
	case opContinuation, opText, opBinary:
		ws.remaining, ws.masked, ws.maskKey, ws.maskPos = length, masked, key, 0
		return nil
	case opClose, opPing, opPong:
		if !fin || length > maxControlPayload {
			return ws.fail(StatusProtocolError, "malformed control frame")
		}
		payload := make([]byte, length)
		if _, err := io.ReadFull(ws.br, payload); err != nil {
			return unexpectedEOF(err)
		}
		if masked {
			mask(key, 0, payload)
		}
		switch op {
		case opPing:
			if err := ws.writeControl(opPong, payload); err != nil {
				return err
			}
		case opClose:
			return ws.peerClosed(payload)
		}
		return nil
	default:
		return ws.fail(StatusProtocolError, fmt.Sprintf("unknown opcode %d", op))
	}
}

// peerClosed answers a close frame with one and reports how it closed.
func (ws *WebSocket) peerClosed(payload []byte) error {
	code := 1005 // no status received
	reason := ""
	if len(payload) >= 2 {
		code = int(binary.BigEndian.Uint16(payload))
		reason = string(payload[2:])
	}
	echo := payload
	if len(payload) < 2 {
		echo = nil
	}
	_ = ws.writeCloseFrame(echo)
	ws.closeRaw()
	if code == StatusNormalClosure || code == 1005 {
		return io.EOF
	}
	return &CloseError{Code: code, Reason: reason}
}

// fail sends a close frame with code and ends the connection.
func (ws *WebSocket) fail(code int, reason string) error {
	_ = ws.CloseWithStatus(code, reason)
	return &CloseError{Code: code, Reason: reason}
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Write sends p as data frames of at most 1 MiB.
func (ws *WebSocket) Write(p []byte) (int, error) {
	ws.writeMu.Lock()
	defer ws.writeMu.Unlock()
	if ws.closeSent {
		return 0, net.ErrClosed
	}
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxFramePayload)]
		if err := ws.writeFrame(ws.dataOp, chunk); err != nil {
			return written, err
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// writeFrame sends one final frame; the caller holds writeMu.
func (ws *WebSocket) writeFrame(op byte, payload []byte) error {
	var h [14]byte
	h[0] = 0x80 | op
	n := 2
	switch l := len(payload); {
	case l < 126:
		h[1] = byte(l)
	case l <= 0xffff:
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(l))
		n = 4
	default:
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(l))
		n = 10
	}
	if !ws.client {
		// Unmasked: header and payload in one writev, no copy.
		bufs := net.Buffers{h[:n], payload}
		_, err := bufs.WriteTo(ws.raw)
		return err
	}
	var key [4]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	h[1] |= 0x80
	copy(h[n:], key[:])
	n += 4
	if need := min(n+len(payload), wsBufferSize); cap(ws.wbuf) < need {
		// Sized to what is sent: heartbeats keep it small; a bulk transfer
		// grows it once to the full size.
		ws.wbuf = make([]byte, 0, max(need, 4<<10))
	}
	// Mask into the buffer a piece at a time; the header goes with the
	// first piece, so a frame up to the buffer's size is one syscall.
	buf := append(ws.wbuf[:0], h[:n]...)
	pos := 0
	for {
		take := min(len(payload), cap(buf)-len(buf))
		start := len(buf)
		buf = append(buf, payload[:take]...)
		pos = mask(key, pos, buf[start:])
		payload = payload[take:]
		if _, err := ws.raw.Write(buf); err != nil {
			return err
		}
		if len(payload) == 0 {
			return nil
		}
		buf = ws.wbuf[:0]
	}
}

func (ws *WebSocket) writeControl(op byte, payload []byte) error {
	ws.writeMu.Lock()
	defer ws.writeMu.Unlock()
	if ws.closeSent {
		return nil
	}
	return ws.writeFrame(op, payload)
}

func (ws *WebSocket) writeCloseFrame(payload []byte) error {
	ws.writeMu.Lock()
	defer ws.writeMu.Unlock()
	if ws.closeSent {
		return nil
	}
	ws.closeSent = true
	return ws.writeFrame(opClose, payload)
}

// Close ends the connection with the normal status, 1000.
func (ws *WebSocket) Close() error { return ws.CloseWithStatus(StatusNormalClosure, "") }

// closeLinger bounds the closing handshake: how long a close waits for a
// write in progress, and then for the peer to read what was sent and
// answer.
const closeLinger = 5 * time.Second

// CloseWithStatus sends a close frame with code and reason, half-closes
// the connection and, in the background, reads (and drops) what the peer
// still sends until its close frame or closeLinger, then closes. Closing
// at once would let the kernel answer the peer's unread bytes with a
// reset, and the peer would lose the end of what we sent. It returns
// without waiting for the peer.
func (ws *WebSocket) CloseWithStatus(code int, reason string) error {
	if len(reason) > maxControlPayload-2 {
		reason = reason[:maxControlPayload-2]
	}
	payload := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(payload, uint16(code))
	copy(payload[2:], reason)
	// A write stuck on a peer that stopped reading holds writeMu: do not
	// wait for it forever.
	deadline := time.AfterFunc(closeLinger, ws.closeRaw)
	err := ws.writeCloseFrame(payload)
	cw, halfCloses := ws.netc.(closeWriter)
	if err != nil || !halfCloses || cw.CloseWrite() != nil {
		deadline.Stop()
		ws.closeRaw()
		return err
	}
	go func() {
		defer deadline.Stop()
		_ = ws.netc.SetReadDeadline(time.Now().Add(closeLinger))
		// Read takes the read lock: if a reader is busy, it sees the
		// peer's close (or the deadline) itself, and this waits for it.
		buf := make([]byte, 4<<10)
		for {
			if _, err := ws.Read(buf); err != nil {
				break
			}
		}
		ws.closeRaw()
	}()
	return nil
}

func (ws *WebSocket) closeRaw() {
	ws.closeOnce.Do(func() {
		close(ws.closed)
		ws.raw.Close()
	})
}

// LocalAddr and RemoteAddr are the underlying connection's, when known.
func (ws *WebSocket) LocalAddr() net.Addr {
	if ws.netc != nil {
		return ws.netc.LocalAddr()
	}
	return wsAddr{}
}

func (ws *WebSocket) RemoteAddr() net.Addr {
	if ws.netc != nil {
		return ws.netc.RemoteAddr()
	}
	return wsAddr{}
}

// SetDeadline and friends apply to the underlying connection when it is
// a net.Conn; through an HTTP client's upgraded body they are not
// available.
func (ws *WebSocket) SetDeadline(t time.Time) error {
	if ws.netc != nil {
		return ws.netc.SetDeadline(t)
	}
	return errors.ErrUnsupported
}

func (ws *WebSocket) SetReadDeadline(t time.Time) error {
	if ws.netc != nil {
		return ws.netc.SetReadDeadline(t)
	}
	return errors.ErrUnsupported
}

func (ws *WebSocket) SetWriteDeadline(t time.Time) error {
	if ws.netc != nil {
		return ws.netc.SetWriteDeadline(t)
	}
	return errors.ErrUnsupported
}

type wsAddr struct{}

func (wsAddr) Network() string { return "websocket" }
func (wsAddr) String() string  { return "websocket" }

// mask XORs b with key starting at key position pos, and returns the
// position after b. Eight bytes at a time where it can.
func mask(key [4]byte, pos int, b []byte) int {
	next := (pos + len(b)) & 3
	if len(b) >= 16 {
		// Rotate the key so that b[0] lines up with key[pos].
		var k8 [8]byte
		for i := range 8 {
			k8[i] = key[(pos+i)&3]
		}
		k := binary.LittleEndian.Uint64(k8[:])
		for len(b) >= 8 {
			binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k)
			b = b[8:]
		}
	}
	for i := range b {
		b[i] ^= key[(pos+i)&3]
	}
	return next
}

func acceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// AcceptWebSocket upgrades an HTTP request. It refuses requests that are
// not WebSocket upgrades (400), and browser requests from another origin
// (403): the API uses Basic auth, which a browser may send on its own.
func AcceptWebSocket(w http.ResponseWriter, r *http.Request, typ MessageType) (*WebSocket, error) {
	if r.Method != http.MethodGet || !headerHas(r.Header, "Connection", "upgrade") || !headerHas(r.Header, "Upgrade", "websocket") {
		http.Error(w, `{"message":"this endpoint needs a WebSocket upgrade"}`, http.StatusBadRequest)
		return nil, errors.New("not a WebSocket upgrade")
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, `{"message":"unsupported WebSocket version (want 13)"}`, http.StatusBadRequest)
		return nil, errors.New("unsupported WebSocket version")
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	if decoded, err := base64.StdEncoding.DecodeString(key); err != nil || len(decoded) != 16 {
		http.Error(w, `{"message":"invalid Sec-WebSocket-Key"}`, http.StatusBadRequest)
		return nil, errors.New("invalid Sec-WebSocket-Key")
	}
	// A browser page of another origin must not ride on credentials the
	// browser holds for the API. x/net/websocket clients, which send an
	// Origin of their own choosing and no User-Agent, are not browsers.
	if origin := r.Header.Get("Origin"); origin != "" && r.UserAgent() != "" {
		if u, err := url.Parse(origin); err != nil || !strings.EqualFold(u.Host, r.Host) {
			http.Error(w, `{"message":"cross-origin WebSocket requests are refused"}`, http.StatusForbidden)
			return nil, errors.New("cross-origin WebSocket request")
		}
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("hijack the connection: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n\r\n"
	if _, err := conn.Write([]byte(resp)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("answer the WebSocket upgrade: %w", err)
	}
	return newWebSocket(conn, brw.Reader, false, typ), nil
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// UpgradeError is a WebSocket dial the server answered with an HTTP
// status instead of switching protocols, with up to 64 KiB of its body.
type UpgradeError struct {
	StatusCode int
	Body       []byte
}

func (e *UpgradeError) Error() string {
	return fmt.Sprintf("WebSocket upgrade refused: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
}

// DialWebSocket opens a WebSocket to rawURL (http:// or https://, or
// ws:// and wss://) with client, which carries TLS and timeouts, sending
// header (credentials) with the upgrade.
func DialWebSocket(ctx context.Context, rawURL string, client *http.Client, header http.Header) (*WebSocket, error) {
	rawURL = strings.Replace(strings.Replace(rawURL, "wss://", "https://", 1), "ws://", "http://", 1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", key)
	hc, conn := recordingClient(client)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, &UpgradeError{StatusCode: resp.StatusCode, Body: body}
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok || resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(key) {
		resp.Body.Close()
		return nil, errors.New("the server's WebSocket handshake is invalid")
	}
	ws := newWebSocket(rwc, nil, true, Binary)
	if c := conn(); c != nil {
		// Reads and writes go through rwc (it holds what the HTTP client
		// buffered); deadlines, half-close and addresses through the
		// connection under it, TLS or not.
		ws.netc = c
	}
	return ws, nil
}

// recordingClient is client with a transport of its own that remembers
// the connection it dials, for the one request it makes: an upgraded
// response body hides its connection, and a WebSocket needs it.
func recordingClient(client *http.Client) (*http.Client, func() net.Conn) {
	base, ok := client.Transport.(*http.Transport)
	if client.Transport == nil {
		base, ok = http.DefaultTransport.(*http.Transport)
	}
	if !ok {
		return client, func() net.Conn { return nil }
	}
	t := base.Clone()
	t.DisableKeepAlives = true
	dial := t.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second}).DialContext
	}
	var mu sync.Mutex
	var conn net.Conn
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		mu.Lock()
		conn = c
		mu.Unlock()
		return c, err
	}
	hc := *client
	hc.Transport = t
	return &hc, func() net.Conn {
		mu.Lock()
		defer mu.Unlock()
		return conn
	}
}
