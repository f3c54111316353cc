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
		Args: cobra.MinimumNArgs(1),
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
				if exit.Signal != "" {
					return &exitCode{code: 128 + 1}
				}
				return &exitCode{code: exit.Status}
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&user, "username", "u", "", "SSH user (default: the VM's)")
	cmd.Flags().StringVarP(&pass, "password", "p", "", "SSH password (default: the VM's)")
	cmd.Flags().DurationVarP(&wait, "wait", "t", 60*time.Second, "how long to wait for the VM to run and accept SSH")
	return cmd
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
		Args: cobra.ExactArgs(2),
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
		Args:  cobra.ExactArgs(1),
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
