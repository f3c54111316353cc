package local

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	// handshakeTimeout bounds a connection that never completes the SSH
	// handshake, so that idle dials do not pile up.
	handshakeTimeout = 30 * time.Second
	// forwardDialTimeout bounds the dial of a direct-tcpip target.
	forwardDialTimeout = 10 * time.Second
	serverVersion      = "SSH-2.0-OrchardLocal"
)

// server is the SSH server of one running VM. Its goroutines are the
// accept loop and, per live connection, session or forward, a few more;
// wg counts them all.
type server struct {
	inst   *instance
	driver *Driver
	ln     net.Listener
	config *ssh.ServerConfig
	log    *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
	// commands counts the commands whose exit is not yet reported.
	commands sync.WaitGroup
}

func newServer(d *Driver, inst *instance, ln net.Listener) *server {
	s := &server{
		inst:   inst,
		driver: d,
		ln:     ln,
		log:    d.log.With("vm", inst.name),
		conns:  make(map[net.Conn]struct{}),
	}
	s.config = &ssh.ServerConfig{
		ServerVersion:    serverVersion,
		PasswordCallback: s.checkPassword,
	}
	s.config.AddHostKey(d.hostKey)
	return s
}

// checkPassword compares in constant time, through hashes so that not even
// the lengths leak. Neither password ever reaches a log.
func (s *server) checkPassword(meta ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
	gotUser, wantUser := sha256.Sum256([]byte(meta.User())), sha256.Sum256([]byte(s.inst.username))
	gotPass, wantPass := sha256.Sum256(password), sha256.Sum256([]byte(s.inst.password))
	userOK := subtle.ConstantTimeCompare(gotUser[:], wantUser[:])
	passOK := subtle.ConstantTimeCompare(gotPass[:], wantPass[:])
	if userOK&passOK == 1 {
		return nil, nil
	}
	s.log.Debug("ssh authentication failed", "user", meta.User(), "remote", meta.RemoteAddr().String())
	return nil, errors.New("wrong username or password")
}

func (s *server) start() {
	s.wg.Add(1)
	go s.acceptLoop()
}

func (s *server) acceptLoop() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does, rather than give the VM up.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("ssh accept", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.track(conn) {
			conn.Close()
			return
		}
		s.wg.Add(1)
		go s.serveConn(conn)
	}
}

// track records conn so that close can close it; false once closed.
func (s *server) track(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[conn] = struct{}{}
	return true
}

func (s *server) untrack(conn net.Conn) {
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
}

// stopAccepting closes the listener. Live connections stay, so that the
// commands being ended can still write (a shell reporting "Terminated"
// would otherwise die of SIGPIPE before its TERM trap ran) and the clients
// learn how they ended.
func (s *server) stopAccepting() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.ln.Close()
}

// closeConns closes every connection, which ends their channels.
func (s *server) closeConns() {
	s.mu.Lock()
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// wait returns when every goroutine of the server has ended.
func (s *server) wait() { s.wg.Wait() }

// waitCommandsReported waits, up to timeout, until every command's exit
// has been sent to its client.
func (s *server) waitCommandsReported(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		s.commands.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

// serveConn runs one SSH connection: the handshake, then its global
// requests and new channels, in this one goroutine.
func (s *server) serveConn(conn net.Conn) {
	defer s.wg.Done()
	defer s.untrack(conn)
	defer conn.Close()

	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	sconn, chans, reqs, err := ssh.NewServerConn(conn, s.config)
	if err != nil {
		s.log.Debug("ssh handshake", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	conn.SetDeadline(time.Time{})
	defer sconn.Close()

	var forwards connSet
	defer forwards.closeAll()
	for chans != nil || reqs != nil {
		select {
		case req, ok := <-reqs:
			if !ok {
				reqs = nil
				continue
			}
			// No tcpip-forward (ssh -R) and no other global request.
			if req.WantReply {
				req.Reply(false, nil)
			}
		case nc, ok := <-chans:
			if !ok {
				chans = nil
				continue
			}
			switch nc.ChannelType() {
			case "session":
				s.wg.Add(1)
				go s.serveSession(nc)
			case "direct-tcpip":
				s.wg.Add(1)
				go s.serveDirectTCPIP(nc, &forwards)
			default:
				nc.Reject(ssh.UnknownChannelType, "unsupported channel type")
			}
		}
	}
}

// connSet holds the TCP connections of a client's forwards, to close when
// the client goes: a target that never closes would keep them open.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (cs *connSet) add(c net.Conn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return false
	}
	if cs.conns == nil {
		cs.conns = make(map[net.Conn]struct{})
	}
	cs.conns[c] = struct{}{}
	return true
}

func (cs *connSet) remove(c net.Conn) {
	cs.mu.Lock()
	delete(cs.conns, c)
	cs.mu.Unlock()
}

func (cs *connSet) closeAll() {
	cs.mu.Lock()
	cs.closed = true
	conns := cs.conns
	cs.conns = nil
	cs.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// serveDirectTCPIP serves ssh -L: it dials the target from the host and
// splices bytes both ways, passing half-closes on.
func (s *server) serveDirectTCPIP(nc ssh.NewChannel, forwards *connSet) {
	defer s.wg.Done()
	req, err := parseDirectTCPIP(nc.ExtraData())
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	target := net.JoinHostPort(req.Host, strconv.FormatUint(uint64(req.Port), 10))
	conn, err := net.DialTimeout("tcp", target, forwardDialTimeout)
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, "dial "+target+": connection failed")
		return
	}
	defer conn.Close()
	if !forwards.add(conn) {
		nc.Reject(ssh.ConnectionFailed, "connection closing")
		return
	}
	defer forwards.remove(conn)
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()

	// reqs closes when the channel is closed for good (not on a mere
	// EOF): then the target goes too, ending a copy that waits on it.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ssh.DiscardRequests(reqs)
		conn.Close()
	}()

	toClient := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(toClient)
		io.Copy(ch, conn)
		ch.CloseWrite()
	}()
	io.Copy(conn, ch)
	if tcp, ok := conn.(*net.TCPConn); ok {
		tcp.CloseWrite()
	} else {
		conn.Close()
	}
	<-toClient
}
