package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

func newVMsSSH(g *globals) *cobra.Command {
	var user, pass string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- COMMAND...]",
		Short: "Open a shell in a VM, or run a command there and exit with its status",
		Long: `SSH into the VM through the controller and its worker (no route to the VM is needed). Without a
command it opens an interactive shell (with a terminal when stdin is one). With a command it runs it,
streams stdin/stdout/stderr, and orchard exits with the command's exit status. The user and password
default to the VM's own (admin/admin unless it was created with others).`,
		Args: args("NAME", "[COMMAND...]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, command := args[0], strings.Join(args[1:], " ")
			c, err := g.newClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if user == "" || pass == "" {
				vm, err := c.GetVM(ctx, name)
				if err != nil {
					return err
				}
				user, pass = firstNonEmpty(user, vm.Username, "admin"), firstNonEmpty(pass, vm.Password, "admin")
			}
			conn, err := c.PortForward(ctx, name, 22, wait)
			if err != nil {
				return fmt.Errorf("reach VM %q: %w", name, err)
			}
			sshCmd := tunnel.SSHCommand{Command: command, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
			if lang := os.Getenv("LANG"); lang != "" {
				sshCmd.Env = map[string]string{"LANG": lang}
			}
			fd := int(os.Stdin.Fd())
			if command == "" && term.IsTerminal(fd) {
				restore, pty, err := rawTerminal(fd)
				if err != nil {
					return err
				}
				defer restore()
				sshCmd.PTY = pty
			}
			err = tunnel.RunSSH(ctx, conn, tunnel.SSHLogin{User: user, Password: pass}, sshCmd)
			var exit *tunnel.ExitError
			if errors.As(err, &exit) {
				return &exitCode{code: exitStatus(exit)}
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&user, "username", "u", "", "SSH user (default: the VM's)")
	cmd.Flags().StringVarP(&pass, "password", "p", "", "SSH password (default: the VM's)")
	cmd.Flags().DurationVarP(&wait, "wait", "t", 60*time.Second, "how long to wait for the VM to run and accept SSH")
	return cmd
}

// exitStatus is orchard's exit status for a remote command: its own, or,
// when a signal killed it, 128 plus the signal's number as a shell
// reports it (255, as OpenSSH, for a signal it cannot name).
func exitStatus(exit *tunnel.ExitError) int {
	if exit.Signal == "" {
		return exit.Status
	}
	numbers := map[string]int{"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "FPE": 8, "KILL": 9,
		"USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15}
	if n, ok := numbers[exit.Signal]; ok {
		return 128 + n
	}
	return 255
}

// rawTerminal puts the terminal in raw mode and follows its size.
func rawTerminal(fd int) (restore func(), pty *tunnel.PTY, err error) {
	state, err := term.MakeRaw(fd)
	if err != nil {
		return nil, nil, fmt.Errorf("set the terminal to raw mode: %w", err)
	}
	width, height, _ := term.GetSize(fd)
	resize := make(chan [2]int, 1)
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	go func() {
		for range winch {
			if w, h, err := term.GetSize(fd); err == nil {
				select {
				case resize <- [2]int{w, h}:
				default:
				}
			}
		}
	}()
	restore = func() {
		signal.Stop(winch)
		close(winch)
		_ = term.Restore(fd, state)
	}
	return restore, &tunnel.PTY{Term: os.Getenv("TERM"), Width: width, Height: height, Resize: resize}, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func newVMsPortForward(g *globals) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "port-forward NAME [LOCAL:]REMOTE",
		Short: "Forward a port on 127.0.0.1 to a port of a VM",
		Long: `Listen on 127.0.0.1:LOCAL (LOCAL defaults to REMOTE; 0 picks a free port) and carry every
connection to port REMOTE of the VM, through the controller and its worker, until Ctrl-C.`,
		Args: args("NAME", "[LOCAL:]REMOTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			localPort, remotePort, err := parsePortSpec(args[1])
			if err != nil {
				return err
			}
			c, err := g.newClient()
			if err != nil {
				return err
			}
			if _, err := c.GetVM(cmd.Context(), args[0]); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(localPort))))
			if err != nil {
				return fmt.Errorf("listen on 127.0.0.1:%d: %w", localPort, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Forwarding %s -> %s:%d (Ctrl-C to stop)\n", ln.Addr(), args[0], remotePort)
			return c.ForwardPort(cmd.Context(), ln, args[0], remotePort, wait, func(err error) {
				fmt.Fprintf(cmd.ErrOrStderr(), "orchard: forward to %s:%d: %v\n", args[0], remotePort, err)
			})
		},
	}
	cmd.Flags().DurationVarP(&wait, "wait", "t", 60*time.Second, "how long each connection waits for the VM to run and the port to accept")
	return cmd
}

// parsePortSpec parses [LOCAL:]REMOTE.
func parsePortSpec(s string) (local, remote uint16, err error) {
	l, r, found := strings.Cut(s, ":")
	if !found {
		l, r = s, s
	}
	parse := func(p string, zeroOK bool) (uint16, error) {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || (n == 0 && !zeroOK) {
			return 0, fmt.Errorf("port %q: want [LOCAL:]REMOTE with ports 1 to 65535 (LOCAL may be 0)", s)
		}
		return uint16(n), nil
	}
	if local, err = parse(l, true); err != nil {
		return 0, 0, err
	}
	if remote, err = parse(r, false); err != nil {
		return 0, 0, err
	}
	return local, remote, nil
}

func newVMsVNC(g *globals) *cobra.Command {
	var user, pass string
	var wait time.Duration
	var noOpen bool
	cmd := &cobra.Command{
		Use:   "vnc NAME",
		Short: "Forward the VM's screen (port 5900) and open or print the vnc:// URL",
		Args:  args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			vm, err := c.GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			user, pass = firstNonEmpty(user, vm.Username, "admin"), firstNonEmpty(pass, vm.Password, "admin")
			if w, err := c.GetWorker(cmd.Context(), vm.Worker); err == nil && w.Driver == v1.DriverLocal {
				fmt.Fprintf(cmd.ErrOrStderr(), "orchard: VM %s runs on the local driver, which has no screen: connections reach whatever listens on the VM's port 5900\n", args[0])
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			url := fmt.Sprintf("vnc://%s:%s@%s", user, pass, ln.Addr())
			fmt.Fprintf(cmd.OutOrStdout(), "VNC to %s is on %s (Ctrl-C to stop): %s\n", args[0], ln.Addr(), url)
			if !noOpen && runtime.GOOS == "darwin" {
				_ = exec.CommandContext(cmd.Context(), "open", url).Start()
			}
			return c.ForwardPort(cmd.Context(), ln, args[0], 5900, wait, func(err error) {
				fmt.Fprintf(cmd.ErrOrStderr(), "orchard: VNC to %s: %v\n", args[0], err)
			})
		},
	}
	cmd.Flags().StringVarP(&user, "username", "u", "", "VNC user for the URL (default: the VM's)")
	cmd.Flags().StringVarP(&pass, "password", "p", "", "VNC password for the URL (default: the VM's)")
	cmd.Flags().DurationVarP(&wait, "wait", "t", 60*time.Second, "how long to wait for the VM to run")
	cmd.Flags().BoolVar(&noOpen, "no-open", false, "print the URL only, do not open a viewer (macOS opens one)")
	return cmd
}
