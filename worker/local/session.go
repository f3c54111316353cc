package local

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// ptyDrain is how long output a command wrote to its pty just before it
// exited is still read. Background processes that keep the pty open do not
// keep the session open (as with OpenSSH).
const ptyDrain = 200 * time.Millisecond

// session is one SSH session channel: settings from its requests, then one
// command.
type session struct {
	srv *server
	ch  ssh.Channel
	env []string    // accepted LANG and LC_* entries
	pty *ptyRequest // nil unless the client asked for a pty

	mu      sync.Mutex
	started bool
	pgid    int
	ptmx    *os.File
	ownEnds []*os.File // the server's ends of the command's stdio
}

// serveSession handles the requests of one session channel until it
// closes.
func (s *server) serveSession(nc ssh.NewChannel) {
	defer s.wg.Done()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	sess := &session{srv: s, ch: ch}
	for req := range reqs {
		ok, then := sess.handle(req)
		if req.WantReply {
			req.Reply(ok, nil)
		}
		// Output and the exit status must follow the reply to exec.
		if then != nil {
			then()
		}
	}
	// Closed: by the command's end, or by the client while the command
	// runs, which (like a vanished sshd) leaves it without stdio.
	sess.closeOwnEnds()
}

// handle acts on one request and says whether it succeeded, and what to
// run once that has been replied.
func (sess *session) handle(req *ssh.Request) (ok bool, then func()) {
	sess.mu.Lock()
	started := sess.started
	sess.mu.Unlock()

	switch req.Type {
	case "pty-req":
		r, err := parsePtyRequest(req.Payload)
		if err != nil || started {
			return false, nil
		}
		sess.pty = &r
		return true, nil
	case "env":
		entry, err := parseEnv(req.Payload)
		if err != nil || started {
			return false, nil
		}
		return sess.setEnv(entry), nil
	case "exec":
		command, err := parseExec(req.Payload)
		if err != nil || started {
			return false, nil
		}
		return sess.start("-c", command)
	case "shell":
		if started {
			return false, nil
		}
		// Like sshd: an interactive shell on a terminal; without one, a
		// login shell that reads commands from stdin without prompting
		// (how startup scripts arrive).
		if sess.pty != nil {
			return sess.start("-i")
		}
		return sess.start("-l")
	case "window-change":
		r, err := parseWindowChange(req.Payload)
		if err != nil || sess.pty == nil {
			return false, nil
		}
		sess.pty.Cols, sess.pty.Rows, sess.pty.Width, sess.pty.Height = r.Cols, r.Rows, r.Width, r.Height
		sess.mu.Lock()
		ptmx := sess.ptmx
		sess.mu.Unlock()
		if ptmx != nil {
			setWindowSize(ptmx, *sess.pty)
		}
		return true, nil
	case "signal":
		name, err := parseSignal(req.Payload)
		if err != nil || !started {
			return false, nil
		}
		sig := unix.SignalNum("SIG" + name)
		if sig == 0 {
			return false, nil
		}
		sess.mu.Lock()
		pgid := sess.pgid
		sess.mu.Unlock()
		return syscall.Kill(-pgid, sig) == nil, nil
	}
	// subsystem (sftp), x11-req, auth-agent-req@openssh.com, ...
	return false, nil
}

// maxEnv bounds the variables a session accepts; a locale needs a few.
const maxEnv = 32

// setEnv records entry (NAME=value), replacing an earlier value of NAME.
func (sess *session) setEnv(entry string) bool {
	name, _, _ := strings.Cut(entry, "=")
	for i, e := range sess.env {
		if strings.HasPrefix(e, name+"=") {
			sess.env[i] = entry
			return true
		}
	}
	if len(sess.env) >= maxEnv {
		return false
	}
	sess.env = append(sess.env, entry)
	return true
}

// start runs /bin/sh with args in the VM.
func (sess *session) start(args ...string) (ok bool, then func()) {
	inst := sess.srv.inst
	term := ""
	if sess.pty != nil {
		term = sess.pty.Term
		if term == "" {
			term = "vt100"
		}
	}
	cmd := &exec.Cmd{
		Path: "/bin/sh",
		Args: append([]string{"/bin/sh"}, args...),
		Dir:  inst.dir,
		Env:  sess.srv.driver.environment(inst, term, sess.env),
	}
	var err error
	if sess.pty != nil {
		then, err = sess.startWithPty(cmd)
	} else {
		then, err = sess.startWithPipes(cmd)
	}
	if err != nil {
		sess.srv.log.Debug("start command", "err", err)
		return false, nil
	}
	return true, then
}

// startWithPipes starts cmd with a pipe for each of stdin, stdout and
// stderr, in a process group of its own.
func (sess *session) startWithPipes(cmd *exec.Cmd) (then func(), err error) {
	var ends [6]*os.File // stdin r/w, stdout r/w, stderr r/w
	for i := 0; i < len(ends); i += 2 {
		if ends[i], ends[i+1], err = os.Pipe(); err != nil {
			closeFiles(ends[:i]...)
			return nil, err
		}
	}
	stdinR, stdinW, stdoutR, stdoutW, stderrR, stderrW := ends[0], ends[1], ends[2], ends[3], ends[4], ends[5]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, stdoutW, stderrW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	pid, err := sess.srv.inst.startCommand(sess.srv, func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	closeFiles(stdinR, stdoutW, stderrW) // the command's ends
	if err != nil {
		closeFiles(stdinW, stdoutR, stderrR)
		return nil, err
	}
	sess.mu.Lock()
	sess.started, sess.pgid = true, pid
	sess.ownEnds = []*os.File{stdinW, stdoutR, stderrR}
	sess.mu.Unlock()

	return func() {
		var output sync.WaitGroup
		sess.goCopy(&output, sess.ch, stdoutR, nil)
		sess.goCopy(&output, sess.ch.Stderr(), stderrR, nil)
		// EOF from the client closes the command's stdin.
		sess.goCopy(nil, stdinW, sess.ch, stdinW)
		sess.goWait(cmd, pid, func() {
			// As with OpenSSH, the session lasts while anything (a
			// background job) holds the command's stdout or stderr.
			output.Wait()
		})
	}, nil
}

// startWithPty starts cmd on a new pty, as the leader of a new session
// with the pty as its controlling terminal.
func (sess *session) startWithPty(cmd *exec.Cmd) (then func(), err error) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return nil, err
	}
	ptmx = pollable(ptmx)
	setWindowSize(ptmx, *sess.pty)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}

	pid, err := sess.srv.inst.startCommand(sess.srv, func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	tty.Close()
	if err != nil {
		ptmx.Close()
		return nil, err
	}
	sess.mu.Lock()
	sess.started, sess.pgid, sess.ptmx = true, pid, ptmx
	sess.ownEnds = []*os.File{ptmx}
	sess.mu.Unlock()

	return func() {
		var output sync.WaitGroup
		sess.goCopy(&output, sess.ch, ptmx, nil)
		// A pty has no separate stdin to close: EOF from the client
		// just ends the copy.
		sess.goCopy(nil, ptmx, sess.ch, nil)
		sess.goWait(cmd, pid, func() {
			ptmx.SetReadDeadline(time.Now().Add(ptyDrain))
			output.Wait()
		})
	}, nil
}

// goCopy copies src to dst in a goroutine of the server, then closes
// closeAfter if set.
func (sess *session) goCopy(wg *sync.WaitGroup, dst io.Writer, src io.Reader, closeAfter *os.File) {
	if wg != nil {
		wg.Add(1)
	}
	sess.srv.wg.Add(1)
	go func() {
		defer sess.srv.wg.Done()
		io.Copy(dst, src)
		if closeAfter != nil {
			closeAfter.Close()
		}
		if wg != nil {
			wg.Done()
		}
	}()
}

// goWait waits in a goroutine of the server for the command to exit and
// its output to be sent (drain), then reports its exit and closes the
// channel.
func (sess *session) goWait(cmd *exec.Cmd, pid int, drain func()) {
	sess.srv.wg.Add(1)
	go func() {
		defer sess.srv.wg.Done()
		defer sess.srv.commands.Done()
		cmd.Wait()
		sess.srv.inst.commandEnded(pid)
		drain()
		sess.ch.CloseWrite()
		sendExit(sess.ch, cmd.ProcessState)
		sess.ch.Close()
		sess.closeOwnEnds()
	}()
}

// sendExit sends exit-status, or exit-signal for a command killed by a
// signal.
func sendExit(ch ssh.Channel, state *os.ProcessState) {
	ws, ok := state.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		ch.SendRequest("exit-signal", false, ssh.Marshal(exitSignal{
			Signal:     strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG"),
			CoreDumped: ws.CoreDump(),
		}))
		return
	}
	ch.SendRequest("exit-status", false, ssh.Marshal(exitStatus{Status: uint32(state.ExitCode())}))
}

// closeOwnEnds closes the server's ends of the command's stdio, which ends
// the copies; the command sees EOF on stdin and EPIPE on output.
func (sess *session) closeOwnEnds() {
	sess.mu.Lock()
	ends := sess.ownEnds
	sess.ownEnds = nil
	sess.mu.Unlock()
	closeFiles(ends...)
}

func closeFiles(files ...*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// setWindowSize sets the pty's size; values beyond 16 bits are clamped.
func setWindowSize(ptmx *os.File, r ptyRequest) {
	clamp := func(v uint32) uint16 { return uint16(min(v, 0xffff)) }
	ws := &unix.Winsize{Row: clamp(r.Rows), Col: clamp(r.Cols), Xpixel: clamp(r.Width), Ypixel: clamp(r.Height)}
	conn, err := ptmx.SyscallConn()
	if err != nil {
		return
	}
	conn.Control(func(fd uintptr) {
		unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws)
	})
}
