package local

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

func TestExec(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-exec", nil)
	client := mustSSH(t, d, "orchard-exec")

	tests := []struct {
		name       string
		command    string
		wantStdout string
		wantStderr string
		wantStatus int    // with wantSignal "", the exit status
		wantSignal string // the signal that killed the command
	}{
		{name: "stdout, status 0", command: "echo hello; echo world", wantStdout: "hello\nworld\n"},
		{name: "stderr, status 3", command: "echo out; echo oops >&2; exit 3", wantStdout: "out\n", wantStderr: "oops\n", wantStatus: 3},
		{name: "killed by SIGKILL", command: "echo before; kill -KILL $$", wantStdout: "before\n", wantSignal: "KILL"},
		{name: "killed by SIGTERM", command: "kill -TERM $$", wantSignal: "TERM"},
		{name: "shell syntax", command: "for i in 1 2 3; do printf %s $i; done", wantStdout: "123"},
		{name: "command not found", command: "no-such-command-here", wantStatus: 127},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := run(t, client, tt.command, nil)
			if stdout != tt.wantStdout {
				t.Errorf("stdout = %q, want %q", stdout, tt.wantStdout)
			}
			if tt.wantStderr != "" && stderr != tt.wantStderr {
				t.Errorf("stderr = %q, want %q", stderr, tt.wantStderr)
			}
			var exitErr *ssh.ExitError
			switch {
			case tt.wantSignal != "":
				if !errors.As(err, &exitErr) || exitErr.Signal() != tt.wantSignal {
					t.Errorf("err = %v, want killed by %s", err, tt.wantSignal)
				}
			case tt.wantStatus == 0:
				if err != nil {
					t.Errorf("err = %v, want success", err)
				}
			default:
				if !errors.As(err, &exitErr) || exitErr.ExitStatus() != tt.wantStatus || exitErr.Signal() != "" {
					t.Errorf("err = %v, want exit status %d", err, tt.wantStatus)
				}
			}
		})
	}
}

func TestStdinPipedThrough(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-stdin", nil)
	client := mustSSH(t, d, "orchard-stdin")

	data := make([]byte, 4<<20+123)
	rand.Read(data)
	sum := sha256.Sum256(data)

	// cat ends only when the client's EOF reaches its stdin.
	out, _, err := run(t, client, "cat", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("cat: %v", err)
	}
	if got := sha256.Sum256([]byte(out)); got != sum {
		t.Errorf("cat returned %d bytes with sha256 %x, want %d bytes with %x", len(out), got, len(data), sum)
	}

	out, _, err = run(t, client, "wc -c", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("wc: %v", err)
	}
	if got, want := strings.TrimSpace(out), "4194427"; got != want {
		t.Errorf("wc -c = %q, want %q", got, want)
	}
}

func TestHomeUserAndWorkingDirectory(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-home", &v1.VM{Username: "runner", Password: "hunter2"})
	client, err := dialSSH(t, d, "orchard-home", "runner", "hunter2")
	if err != nil {
		t.Fatalf("ssh: %v", err)
	}
	defer client.Close()

	out := mustRun(t, client, `printf '%s\n' "$HOME" "$(pwd -P)" "$USER" "$LOGNAME" "$SHELL"`)
	vmDir, err := filepath.EvalSymlinks(filepath.Join(d.dir, "orchard-home"))
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{filepath.Join(d.dir, "orchard-home"), vmDir, "runner", "runner", "/bin/sh"}, "\n") + "\n"
	if out != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}

	// Files a command writes land in the VM directory.
	mustRun(t, client, "echo data > made-here")
	if data, err := os.ReadFile(filepath.Join(vmDir, "made-here")); err != nil || string(data) != "data\n" {
		t.Errorf("made-here in the VM directory: %q, %v", data, err)
	}
	if out := mustRun(t, client, "cat \"$HOME/made-here\""); out != "data\n" {
		t.Errorf("cat made-here = %q", out)
	}
}

func TestEnvRequests(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-env", nil)
	client := mustSSH(t, d, "orchard-env")

	tests := []struct {
		name, value string
		accepted    bool
	}{
		{"LANG", "en_US.UTF-8", true},
		{"LC_ALL", "C", true},
		{"LC_CTYPE", "UTF-8", true},
		{"FOO", "bar", false},
		{"PATH", "/evil", false},
		{"LD_PRELOAD", "/tmp/x.so", false},
		{"LC_BAD-NAME", "x", false},
		{"LANGUAGE", "de", false},
	}
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	for _, tt := range tests {
		err := sess.Setenv(tt.name, tt.value)
		if accepted := err == nil; accepted != tt.accepted {
			t.Errorf("Setenv(%s) err = %v, want accepted %v", tt.name, err, tt.accepted)
		}
	}
	out, err := sess.Output("env")
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, tt := range tests {
		entry := tt.name + "=" + tt.value
		if got := slices.Contains(env, entry); got != tt.accepted {
			t.Errorf("%s in the command's environment: %v, want %v\n%s", entry, got, tt.accepted, out)
		}
	}
}

func TestWorkerEnvironmentDoesNotLeak(t *testing.T) {
	// t.Setenv: not parallel.
	const secret = "ghs_0123456789abcdefSECRET"
	t.Setenv("ORCHARD_TEST_GITHUB_TOKEN", secret)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	d := newTestDriver(t)
	startVM(t, d, "orchard-leak", nil)
	client := mustSSH(t, d, "orchard-leak")

	for _, withPty := range []bool{false, true} {
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if withPty {
			if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err != nil {
				t.Fatal(err)
			}
		}
		out, err := sess.Output("env")
		sess.Close()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), secret) {
			t.Errorf("pty %v: the worker's secret reached the VM:\n%s", withPty, out)
		}
		// The variables the driver sets, and those /bin/sh adds itself.
		allowed := []string{"HOME", "USER", "LOGNAME", "SHELL", "PATH", markerVar, "PWD", "OLDPWD", "SHLVL", "_"}
		if withPty {
			allowed = append(allowed, "TERM")
		}
		var got []string
		for line := range strings.SplitSeq(strings.TrimSpace(strings.ReplaceAll(string(out), "\r", "")), "\n") {
			name, _, _ := strings.Cut(line, "=")
			got = append(got, name)
			if !slices.Contains(allowed, name) {
				t.Errorf("pty %v: unexpected variable %s in the VM", withPty, line)
			}
		}
		for _, want := range []string{"HOME", "PATH", markerVar} {
			if !slices.Contains(got, want) {
				t.Errorf("pty %v: %s missing from the VM's environment %v", withPty, want, got)
			}
		}
	}

	env := mustRun(t, client, `printf '%s\n' "$PATH" "$ORCHARD_LOCAL_VM"`)
	lines := strings.Split(env, "\n")
	if want := filepath.Join(d.dir, "orchard-leak", ".orchard", "bin") + ":"; !strings.HasPrefix(lines[0], want) {
		t.Errorf("PATH = %q, want it to start with %q", lines[0], want)
	}
	if want := d.id + "/orchard-leak"; lines[1] != want {
		t.Errorf("%s = %q, want %q", markerVar, lines[1], want)
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-auth", &v1.VM{Username: "ci", Password: "s3cret-pass"})

	tests := []struct {
		name, user, password string
		ok                   bool
	}{
		{"right credentials", "ci", "s3cret-pass", true},
		{"wrong password", "ci", "s3cret-pasS", false},
		{"password prefix", "ci", "s3cret", false},
		{"empty password", "ci", "", false},
		{"wrong user", "admin", "s3cret-pass", false},
		{"default credentials", "admin", "admin", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, err := dialSSH(t, d, "orchard-auth", tt.user, tt.password)
			if tt.ok {
				if err != nil {
					t.Fatalf("login refused: %v", err)
				}
				defer client.Close()
				if out := mustRun(t, client, "echo in"); out != "in\n" {
					t.Errorf("echo = %q", out)
				}
				return
			}
			if err == nil {
				client.Close()
				t.Fatal("login accepted")
			}
			if !strings.Contains(err.Error(), "unable to authenticate") {
				t.Errorf("err = %v, want an authentication failure", err)
			}
		})
	}
}

func TestDefaultCredentials(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-defaults", &v1.VM{})
	client := mustSSH(t, d, "orchard-defaults") // admin/admin
	if out := mustRun(t, client, "echo $USER"); out != "admin\n" {
		t.Errorf("USER = %q, want admin", out)
	}
}

// ptyReader collects what an interactive shell prints.
type ptyReader struct {
	t     *testing.T
	lines chan string
}

func newPtyReader(t *testing.T, r io.Reader) *ptyReader {
	p := &ptyReader{t: t, lines: make(chan string, 100)}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.lines <- strings.TrimRight(sc.Text(), "\r")
		}
	}()
	return p
}

// waitFor returns the first line holding marker, from the first "start"
// on: it skips the other lines (the echo of what was typed) and the prompt.
func (p *ptyReader) waitFor(start, marker string) string {
	p.t.Helper()
	timeout := time.After(testTimeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("output ended before %q", marker)
			}
			if strings.Contains(line, marker) {
				if i := strings.Index(line, start); i > 0 {
					line = line[i:]
				}
				return line
			}
		case <-timeout:
			p.t.Fatalf("no line with %q", marker)
		}
	}
}

func TestShellWithPty(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-pty", nil)
	client := mustSSH(t, d, "orchard-pty")

	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestPty("xterm-256color", 40, 100, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
		t.Fatalf("pty-req: %v", err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := newPtyReader(t, stdout)
	if err := sess.Shell(); err != nil {
		t.Fatalf("shell: %v", err)
	}

	// The marker is computed by the shell, so the echo of the typed line
	// never matches it.
	type_ := func(line string) { io.WriteString(stdin, line+"\n") }
	type_(`echo "size=$(stty size) tty=$(tty) term=$TERM" M$((40+2))`)
	got := out.waitFor("size=", "M42")
	if want := "size=40 100 tty=/dev/pts/"; !strings.HasPrefix(got, want) || !strings.HasSuffix(got, " term=xterm-256color M42") {
		t.Errorf("got %q, want size 40x100, a /dev/pts tty and TERM xterm-256color", got)
	}

	if err := sess.WindowChange(50, 132); err != nil {
		t.Fatalf("window-change: %v", err)
	}
	// Requests are handled in order: once this one is answered, the
	// window-change before it has been applied.
	if _, err := sess.SendRequest("env", true, ssh.Marshal(envRequest{"LANG", "C"})); err != nil {
		t.Fatal(err)
	}
	type_(`echo "size=$(stty size)" M$((40+3))`)
	if got, want := out.waitFor("size=", "M43"), "size=50 132 M43"; got != want {
		t.Errorf("after window-change got %q, want %q", got, want)
	}

	type_("exit 7")
	var exitErr *ssh.ExitError
	if err := sess.Wait(); !errors.As(err, &exitErr) || exitErr.ExitStatus() != 7 {
		t.Errorf("shell ended with %v, want exit status 7", err)
	}
}

func TestExecWithAndWithoutPty(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-tty", nil)
	client := mustSSH(t, d, "orchard-tty")

	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("vt220", 24, 80, ssh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	out, err := sess.Output("tty; echo $TERM")
	sess.Close()
	if err != nil {
		t.Fatalf("tty with pty: %v", err)
	}
	lines := strings.Split(strings.ReplaceAll(string(out), "\r", ""), "\n")
	if !strings.HasPrefix(lines[0], "/dev/") || len(lines) < 2 || lines[1] != "vt220" {
		t.Errorf("with a pty: %q, want a /dev/ tty and TERM vt220", out)
	}

	stdout, _, err := run(t, client, "tty", nil)
	var exitErr *ssh.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 1 || !strings.Contains(stdout, "not a tty") {
		t.Errorf("without a pty: tty printed %q with %v, want \"not a tty\" and status 1", stdout, err)
	}
}

func TestShellWithoutPty(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-shell", nil)
	client := mustSSH(t, d, "orchard-shell")

	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var stdout bytes.Buffer
	sess.Stdout = &stdout
	sess.Stdin = strings.NewReader("echo from-shell\nexit 4\n")
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	var exitErr *ssh.ExitError
	if err := sess.Wait(); !errors.As(err, &exitErr) || exitErr.ExitStatus() != 4 {
		t.Errorf("shell ended with %v, want status 4", err)
	}
	if got := stdout.String(); got != "from-shell\n" {
		t.Errorf("stdout = %q", got)
	}
}

func TestSignalForwarded(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-signal", nil)
	client := mustSSH(t, d, "orchard-signal")

	for _, sig := range []ssh.Signal{ssh.SIGTERM, ssh.SIGINT, ssh.SIGUSR1} {
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := sess.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		// exec: a non-interactive dash swallows a SIGINT that arrives
		// before it forks a foreground command, and sleeps on.
		if err := sess.Start("echo ready; exec sleep 300"); err != nil {
			t.Fatal(err)
		}
		if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
			t.Fatalf("read %q", line)
		}
		if err := sess.Signal(sig); err != nil {
			t.Fatal(err)
		}
		var exitErr *ssh.ExitError
		if err := sess.Wait(); !errors.As(err, &exitErr) || exitErr.Signal() != string(sig) {
			t.Errorf("after signal %s: %v, want killed by %s", sig, err, sig)
		}
		sess.Close()
	}
}

func TestDialReachesVMServices(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-dial", nil)
	ctx := testContext(t)

	ip, err := d.IP(ctx, "orchard-dial")
	if err != nil {
		t.Fatal(err)
	}
	// A stand-in for a service the VM started on its own address.
	service, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer service.Close()
	go func() {
		for {
			c, err := service.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "service here\n")
			c.Close()
		}
	}()
	port := service.Addr().(*net.TCPAddr).Port

	conn, err := d.Dial(ctx, "orchard-dial", uint16(port))
	if err != nil {
		t.Fatalf("Dial(%d): %v", port, err)
	}
	got, _ := io.ReadAll(conn)
	conn.Close()
	if string(got) != "service here\n" {
		t.Errorf("service said %q", got)
	}

	conn, err = d.Dial(ctx, "orchard-dial", 22)
	if err != nil {
		t.Fatalf("Dial(22): %v", err)
	}
	defer conn.Close()
	banner, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
		t.Errorf("port 22 said %q (%v), want an SSH banner", banner, err)
	}
}

func TestDirectTCPIP(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-forward", nil)
	client := mustSSH(t, d, "orchard-forward")

	// An upper-casing echo server that answers once its input ended:
	// the half-close must pass through both ways.
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				in, _ := io.ReadAll(c)
				c.Write(bytes.ToUpper(in))
			}()
		}
	}()

	payload := make([]byte, 1<<20)
	rand.Read(payload)
	hexPayload := []byte(hex.EncodeToString(payload))
	for i := range 3 {
		conn, err := client.Dial("tcp", target.Addr().String())
		if err != nil {
			t.Fatalf("forward %d: %v", i, err)
		}
		go func() {
			conn.Write(hexPayload)
			conn.(interface{ CloseWrite() error }).CloseWrite()
		}()
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Fatalf("forward %d read: %v", i, err)
		}
		if !bytes.Equal(got, bytes.ToUpper(hexPayload)) {
			t.Errorf("forward %d: got %d bytes, want %d upper-cased", i, len(got), len(hexPayload))
		}
	}

	// A refused target is reported, not hung.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	if conn, err := client.Dial("tcp", closedAddr); err == nil {
		conn.Close()
		t.Errorf("forward to a closed port succeeded")
	}
}

func TestUnsupportedRequestsRefused(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-refuse", nil)
	client := mustSSH(t, d, "orchard-refuse")

	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestSubsystem("sftp"); err == nil {
		t.Error("subsystem sftp accepted")
	}
	if ok, _, err := client.SendRequest("tcpip-forward", true, ssh.Marshal(struct {
		Addr string
		Port uint32
	}{"127.0.0.1", 0})); err != nil || ok {
		t.Errorf("tcpip-forward: ok %v err %v, want refused", ok, err)
	}
	if _, _, err := client.OpenChannel("x11", nil); err == nil {
		t.Error("x11 channel accepted")
	}
	// A command with a NUL byte cannot be run and is refused.
	ok, err := sess.SendRequest("exec", true, ssh.Marshal(execRequest{"echo a\x00b"}))
	if err != nil || ok {
		t.Errorf("exec with NUL: ok %v err %v, want refused", ok, err)
	}
	// The session is still usable after the refusals.
	out, err := sess.Output("echo still")
	if err != nil || string(out) != "still\n" {
		t.Errorf("after refusals: %q, %v", out, err)
	}
}
