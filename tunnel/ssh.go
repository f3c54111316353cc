package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"golang.org/x/crypto/ssh"
)

// SSHLogin is how RunSSH authenticates to a VM.
type SSHLogin struct {
	User     string
	Password string
}

// PTY asks for a pseudo-terminal.
type PTY struct {
	Term          string
	Width, Height int
	// Resize, when not nil, delivers window size changes until closed.
	Resize <-chan [2]int
}

// SSHCommand is what RunSSH runs. An empty Command runs the login shell,
// which then reads its commands from Stdin (or the terminal).
type SSHCommand struct {
	Command string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	PTY     *PTY
	// Env is sent as SSH environment requests. macOS's sshd (and the
	// local driver) accept only LANG and LC_*: never pass secrets this way.
	Env map[string]string
}

// ExitError is a command that ran and exited non-zero, or was killed.
type ExitError struct {
	Status int
	Signal string
}

func (e *ExitError) Error() string {
	if e.Signal != "" {
		return fmt.Sprintf("killed by signal %s", e.Signal)
	}
	return fmt.Sprintf("exit status %d", e.Status)
}

// ConnectError is an SSH connection that failed before any command ran:
// the VM's sshd is not up yet, or it refused the login.
type ConnectError struct {
	User string
	Err  error
}

func (e *ConnectError) Error() string { return fmt.Sprintf("ssh to the VM as %q: %v", e.User, e.Err) }
func (e *ConnectError) Unwrap() error { return e.Err }

// AuthFailed reports whether the VM refused the credentials, which waiting
// will not fix.
func (e *ConnectError) AuthFailed() bool {
	return strings.Contains(e.Err.Error(), "unable to authenticate")
}

// RunSSH runs cmd over an SSH connection on conn, which reaches the VM's
// port 22 (a port-forward, or a stream from DialVM). It returns nil when
// the command exits 0, an *ExitError when it ran and failed, and another
// error when it could not run at all. RunSSH closes conn; cancelling ctx
// ends the session.
//
// Host keys are not verified: VMs are ephemeral clones that share their
// image's key, and conn already runs through the authenticated tunnel.
func RunSSH(ctx context.Context, conn net.Conn, login SSHLogin, cmd SSHCommand) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	cc, chans, reqs, err := ssh.NewClientConn(conn, "vm:22", &ssh.ClientConfig{
		User:            login.User,
		Auth:            []ssh.AuthMethod{ssh.Password(login.Password), keyboardInteractive(login.Password)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &ConnectError{User: login.User, Err: err}
	}
	client := ssh.NewClient(cc, chans, reqs)
	defer client.Close()

	session, err := client.NewSession()
	if err != nil {
		return fmt.Errorf("open ssh session: %w", err)
	}
	defer session.Close()
	for k, v := range cmd.Env {
		// A refused variable is not fatal, as with OpenSSH's SendEnv.
		_ = session.Setenv(k, v)
	}
	session.Stdin, session.Stdout, session.Stderr = cmd.Stdin, cmd.Stdout, cmd.Stderr
	if cmd.PTY != nil {
		term := cmd.PTY.Term
		if term == "" {
			term = "xterm-256color"
		}
		if err := session.RequestPty(term, cmd.PTY.Height, cmd.PTY.Width, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
			return fmt.Errorf("request a terminal: %w", err)
		}
		if cmd.PTY.Resize != nil {
			go func() {
				for size := range cmd.PTY.Resize {
					_ = session.WindowChange(size[1], size[0])
				}
			}()
		}
	}
	if cmd.Command == "" {
		err = session.Shell()
	} else {
		err = session.Start(cmd.Command)
	}
	if err != nil {
		return fmt.Errorf("start command: %w", err)
	}
	err = session.Wait()
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit):
		return &ExitError{Status: exit.ExitStatus(), Signal: exit.Signal()}
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		var missing *ssh.ExitMissingError
		if errors.As(err, &missing) {
			return errors.New("the ssh session ended without an exit status (connection lost)")
		}
		return fmt.Errorf("ssh session: %w", err)
	}
}

// keyboardInteractive answers password prompts, for sshd configurations
// that only offer keyboard-interactive (macOS's default among them).
func keyboardInteractive(password string) ssh.AuthMethod {
	return ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
		answers := make([]string, len(questions))
		for i := range answers {
			answers[i] = password
		}
		return answers, nil
	})
}
