package main_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// orchardBin is the binary under test, built once.
var orchardBin string

func TestMain(m *testing.M) {
	// The echo helper runs inside a local VM, started there over SSH.
	if addr := os.Getenv("ORCHARD_E2E_ECHO_ADDR"); addr != "" {
		serveEcho(addr)
		return
	}
	dir, err := os.MkdirTemp("", "orchard-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	orchardBin = filepath.Join(dir, "orchard")
	out, err := exec.Command("go", "build", "-o", orchardBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build orchard: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// serveEcho echoes every connection on addr, for the port-forward test.
func serveEcho(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// home is one ORCHARD_HOME and the CLI run in it.
type home struct {
	t   *testing.T
	dir string
	env []string
}

func newHome(t *testing.T) *home {
	dir := t.TempDir()
	env := []string{"ORCHARD_HOME=" + dir, "HOME=" + dir, "PATH=" + os.Getenv("PATH")}
	return &home{t: t, dir: dir, env: env}
}

// run runs the CLI and returns stdout, stderr and the exit status.
func (h *home) run(args ...string) (string, string, int) {
	h.t.Helper()
	cmd := exec.Command(orchardBin, args...)
	cmd.Env = h.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		h.t.Fatalf("run orchard %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// must runs the CLI and fails the test unless it exits 0.
func (h *home) must(args ...string) string {
	h.t.Helper()
	out, errOut, code := h.run(args...)
	if code != 0 {
		h.t.Fatalf("orchard %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// daemon is a long-running orchard process (dev, controller, worker).
type daemon struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	output bytes.Buffer
	lines  chan string
	done   chan struct{}
}

func (h *home) start(args ...string) *daemon {
	h.t.Helper()
	d := &daemon{lines: make(chan string, 1000), done: make(chan struct{})}
	d.cmd = exec.Command(orchardBin, args...)
	d.cmd.Env = h.env
	pr, pw := io.Pipe()
	d.cmd.Stdout, d.cmd.Stderr = pw, pw
	if err := d.cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			d.mu.Lock()
			d.output.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			select {
			case d.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() { _ = d.cmd.Wait(); pw.Close(); close(d.done) }()
	h.t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
	})
	return d
}

// waitLine waits for a line matching re and returns its submatches.
func (d *daemon) waitLine(t *testing.T, re string) []string {
	t.Helper()
	r := regexp.MustCompile(re)
	timeout := time.After(60 * time.Second)
	for {
		select {
		case line := <-d.lines:
			if m := r.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-d.done:
			t.Fatalf("orchard exited before printing %q:\n%s", re, d.out())
		case <-timeout:
			t.Fatalf("no line matching %q:\n%s", re, d.out())
		}
	}
}

func (d *daemon) out() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.output.String()
}

// stop interrupts the daemon, as Ctrl-C does, and waits for it.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("orchard did not stop on SIGINT:\n%s", d.out())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("orchard exited %d after SIGINT:\n%s", code, d.out())
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// processesWith lists processes whose command line contains marker.
func processesWith(t *testing.T, marker string) []string {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), marker) {
			found = append(found, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return found
}

func TestDevEndToEnd(t *testing.T) {
	h := newHome(t)
	port := freePort(t)
	dev := h.start("dev", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	dev.waitLine(t, `dev cluster is up`)

	// The CLI needs no flags: orchard dev wrote the default context.
	out := h.must("vms", "create", "demo", "--image", "ghcr.io/cirruslabs/macos-sequoia-base:latest", "--wait",
		"--startup-script", "echo hello-from-startup\necho second line")
	if !strings.Contains(out, "VM demo is running") {
		t.Errorf("create --wait said %q", out)
	}
	if out := h.must("vms", "ssh", "demo", "--", "echo", "hi"); out != "hi\n" {
		t.Errorf("ssh echo printed %q", out)
	}
	if _, _, code := h.run("vms", "ssh", "demo", "--", "exit 7"); code != 7 {
		t.Errorf("ssh of a failing command exited %d, want 7", code)
	}
	if _, _, code := h.run("vms", "ssh", "demo", "--", "kill -TERM $$"); code != 128+15 {
		t.Errorf("ssh of a command killed by SIGTERM exited %d, want 143", code)
	}
	// --wait waits for the startup script, and reports its failure.
	if out, errOut, code := h.run("vms", "create", "broken", "--image", "x", "--wait", "--startup-script", "exit 4"); code == 0 ||
		!strings.Contains(errOut, "startup script failed with exit status 4") {
		t.Errorf("create --wait of a VM whose script fails: exit %d\n%s%s", code, out, errOut)
	}
	h.must("vms", "delete", "broken")

	// A TCP service inside the VM, on the VM's address.
	var vm v1.VM
	if err := json.Unmarshal([]byte(h.must("vms", "get", "demo", "-o", "json")), &vm); err != nil {
		t.Fatal(err)
	}
	ip := vmIP(t, h)
	if vm.Worker != "dev-1" || vm.StatusMessage != "the startup script finished" {
		t.Errorf("vms get: worker %q, message %q", vm.Worker, vm.StatusMessage)
	}
	marker := "e2e-echo-" + vm.UID
	service := fmt.Sprintf("ORCHARD_E2E_ECHO_ADDR=%s:7777 nohup %s -test.run=^$ %s >/dev/null 2>&1 &", ip, os.Args[0], marker)
	h.must("vms", "ssh", "demo", "--", service)
	if len(processesWith(t, marker)) == 0 {
		t.Fatal("the echo service did not start in the VM")
	}

	fwd := h.start("vms", "port-forward", "demo", "0:7777")
	local := fwd.waitLine(t, `Forwarding (127\.0\.0\.1:\d+) ->`)[1]
	conn, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 8<<20)
	_, _ = rand.Read(payload)
	go func() { _, _ = conn.Write(payload) }()
	h1 := sha256.New()
	if _, err := io.CopyN(h1, conn, int64(len(payload))); err != nil {
		t.Fatalf("read back through the port-forward: %v", err)
	}
	conn.Close()
	if want := sha256.Sum256(payload); !bytes.Equal(h1.Sum(nil), want[:]) {
		t.Error("8 MiB through the port-forward came back different")
	}
	fwd.stop(t)

	logs := h.must("vms", "logs", "demo")
	if !strings.Contains(logs, "hello-from-startup\nsecond line") {
		t.Errorf("logs = %q", logs)
	}
	if tail := h.must("vms", "logs", "demo", "--tail", "1"); !strings.HasSuffix(tail, "second line\n") || strings.Contains(tail, "hello-from-startup") {
		t.Errorf("logs --tail 1 = %q", tail)
	}
	follow := h.start("vms", "logs", "demo", "--follow")
	follow.waitLine(t, `^second line$`)

	// vnc forwards port 5900: stand a service there.
	h.must("vms", "ssh", "demo", "--", fmt.Sprintf("ORCHARD_E2E_ECHO_ADDR=%s:5900 nohup %s -test.run=^$ %s >/dev/null 2>&1 &", ip, os.Args[0], marker))
	vnc := h.start("vms", "vnc", "demo", "--no-open")
	vncAddr := vnc.waitLine(t, `vnc://admin:admin@(127\.0\.0\.1:\d+)`)[1]
	vc, err := net.Dial("tcp", vncAddr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = vc.Write([]byte("RFB?"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(vc, buf); err != nil || string(buf) != "RFB?" {
		t.Errorf("through vnc's forward: %q, %v", buf, err)
	}
	vc.Close()
	vnc.stop(t)

	// An interactive session on a terminal.
	if code, out := interactiveSSH(t, h, "demo", "echo interactive-$((6*7))\nexit 3\n"); code != 3 || !strings.Contains(out, "interactive-42") {
		t.Errorf("interactive ssh: exit %d, output %q", code, out)
	}
	var list []v1.VM
	if err := json.Unmarshal([]byte(h.must("vms", "list", "-o", "json")), &list); err != nil || len(list) != 1 || list[0].Status != v1.VMStatusRunning {
		t.Errorf("vms list -o json: %v, %v", list, err)
	}
	if out := h.must("workers", "list"); !strings.Contains(out, "dev-1") || !strings.Contains(out, "local") {
		t.Errorf("workers list = %q", out)
	}

	h.must("vms", "delete", "demo")
	select {
	case <-follow.done:
		if code := follow.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("logs --follow exited %d when the VM was deleted:\n%s", code, follow.out())
		}
	case <-time.After(20 * time.Second):
		t.Error("logs --follow did not end when the VM was deleted")
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(processesWith(t, marker)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the VM's service outlived the VM: %v", processesWith(t, marker))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, errOut, code := h.run("vms", "get", "demo"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("get of a deleted VM: exit %d, %q", code, errOut)
	}

	// A VM left running when dev stops is stopped with it.
	h.must("vms", "create", "left", "--image", "x", "--wait")
	leftIP := vmIPOf(t, h, "left")
	leftMarker := "e2e-left-" + fmt.Sprint(time.Now().UnixNano())
	h.must("vms", "ssh", "left", "--", fmt.Sprintf("ORCHARD_E2E_ECHO_ADDR=%s:7778 nohup %s -test.run=^$ %s >/dev/null 2>&1 &", leftIP, os.Args[0], leftMarker))
	dev.stop(t)
	if left := processesWith(t, leftMarker); len(left) > 0 {
		t.Errorf("orchard dev left processes behind: %v", left)
	}
	// A second run starts clean: the first one's VMs are gone with it.
	dev2 := h.start("dev", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	dev2.waitLine(t, `dev cluster is up`)
	if out := h.must("vms", "list"); !strings.Contains(out, "No VMs") {
		t.Errorf("the second orchard dev starts with VMs:\n%s", out)
	}
	dev2.stop(t)
	if left := processesWith(t, orchardBin+"\x00dev"); len(left) > 0 {
		t.Errorf("orchard dev still runs: %v", left)
	}
}

// interactiveSSH runs `orchard vms ssh NAME` on a pseudo-terminal, types
// input, and returns the exit status and what the terminal showed.
func interactiveSSH(t *testing.T, h *home, name, input string) (int, string) {
	t.Helper()
	cmd := exec.Command(orchardBin, "vms", "ssh", name)
	cmd.Env = append(h.env, "TERM=xterm")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var out bytes.Buffer
	read := make(chan struct{})
	go func() { _, _ = io.Copy(&out, tty); close(read) }()
	time.Sleep(500 * time.Millisecond) // let the shell start
	_, _ = tty.Write([]byte(input))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("interactive ssh did not end")
	}
	tty.Close()
	<-read
	return cmd.ProcessState.ExitCode(), out.String()
}

func vmIP(t *testing.T, h *home) string { return vmIPOf(t, h, "demo") }

// vmIPOf asks the controller for the VM's IP (GET /v1/vms/{name}/ip) with
// the Go client and the context the CLI uses.
func vmIPOf(t *testing.T, h *home, name string) string {
	t.Helper()
	cfg, err := client.Resolve(h.dir, "", h.env)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ip, err := c.VMIP(t.Context(), name, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return ip
}

func TestControllerWorkerEndToEnd(t *testing.T) {
	admin := newHome(t)
	port := freePort(t)
	ctrl := admin.start("controller", "run", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	token := ctrl.waitLine(t, `token: (\S+)`)[1]
	fp := ctrl.waitLine(t, `fingerprint: ([0-9A-F ]+)$`)[1]
	if len(strings.Fields(fp)) != 32 {
		t.Errorf("fingerprint %q is not 32 hex pairs", fp)
	}
	// The controller wrote a pinned context for its admin.
	out := admin.must("vms", "list")
	if !strings.Contains(out, "NAME") {
		t.Errorf("vms list = %q", out)
	}
	if strings.Contains(ctrl.out(), token) && strings.Count(ctrl.out(), token) > 1 {
		t.Error("the admin token was printed more than once")
	}

	admin.must("service-accounts", "create", "workers", "--roles", "compute:read,compute:write")
	bootstrap := strings.TrimSpace(admin.must("bootstrap-token", "workers"))
	if !strings.HasPrefix(bootstrap, "orchard-bootstrap-token-v0.") || len(strings.Split(bootstrap, ".")) != 4 {
		t.Fatalf("bootstrap token %q does not carry the certificate", bootstrap)
	}

	// A worker with its own home, pinned by the token's certificate.
	wh := newHome(t)
	worker := wh.start("worker", "run", fmt.Sprintf("https://127.0.0.1:%d", port), "--bootstrap-token", bootstrap, "--name", "mac-1", "--driver", "local")
	worker.waitLine(t, `connected to the controller`)

	// A user elsewhere, from a bootstrap token for an account of theirs.
	user := newHome(t)
	admin.must("service-accounts", "create", "alice", "--roles", "compute:read,compute:write,compute:connect")
	aliceToken := strings.TrimSpace(admin.must("bootstrap-token", "alice"))
	user.must("context", "create", fmt.Sprintf("127.0.0.1:%d", port), "--bootstrap-token", aliceToken, "--name", "prod")
	user.must("vms", "create", "vm1", "--image", "x", "--wait")
	if out := user.must("vms", "ssh", "vm1", "--", "echo", "over-tls"); out != "over-tls\n" {
		t.Errorf("ssh over TLS printed %q", out)
	}
	if _, errOut, code := user.run("service-accounts", "list"); code == 0 || !strings.Contains(errOut, "admin:read") {
		t.Errorf("alice listing accounts: exit %d, %q; want 403 naming admin:read", code, errOut)
	}

	// Wrong credentials are refused before a context is saved.
	other := newHome(t)
	bad, _ := v1.ParseBootstrapToken(aliceToken)
	bad.ServiceAccountToken = "forged"
	if _, errOut, code := other.run("context", "create", fmt.Sprintf("127.0.0.1:%d", port), "--bootstrap-token", bad.String()); code == 0 || !strings.Contains(errOut, "401") {
		t.Errorf("context create with a forged token: exit %d, %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(other.dir, ".orchard", "orchard.yml")); err == nil {
		if b, _ := os.ReadFile(filepath.Join(other.dir, ".orchard", "orchard.yml")); strings.Contains(string(b), "forged") {
			t.Error("a context with refused credentials was saved")
		}
	}
	// Trust on first use, non-interactively: the fingerprint must match.
	if _, errOut, code := other.run("context", "create", fmt.Sprintf("127.0.0.1:%d", port), "--service-account-name", "alice",
		"--service-account-token", tokenOf(t, aliceToken), "--fingerprint", "00 11"); code == 0 || !strings.Contains(errOut, "fingerprint") {
		t.Errorf("TOFU with a wrong fingerprint: exit %d, %q", code, errOut)
	}
	other.must("context", "create", fmt.Sprintf("127.0.0.1:%d", port), "--service-account-name", "alice",
		"--service-account-token", tokenOf(t, aliceToken), "--fingerprint", fp)
	if out := other.must("vms", "list"); !strings.Contains(out, "vm1") {
		t.Errorf("vms list after TOFU = %q", out)
	}

	user.must("vms", "delete", "vm1")
	worker.stop(t)
	ctrl.stop(t)
	if strings.Contains(ctrl.out()+worker.out(), tokenOf(t, bootstrap)) {
		t.Error("a worker token reached a log")
	}
}

func tokenOf(t *testing.T, bootstrap string) string {
	bt, err := v1.ParseBootstrapToken(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	return bt.ServiceAccountToken
}

func TestDevGivesTheDefaultContextBack(t *testing.T) {
	h := newHome(t)
	// Another controller's context is the default before dev starts.
	ctrl := h.start("controller", "run", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	ctrl.waitLine(t, `fingerprint`)
	dev := h.start("dev", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	dev.waitLine(t, `dev cluster is up`)
	if out := h.must("context", "list"); !regexp.MustCompile(`\*\s+dev\s`).MatchString(out) {
		t.Errorf("while dev runs, dev is not the default:\n%s", out)
	}
	dev.stop(t)
	if out := h.must("context", "list"); !regexp.MustCompile(`\*\s+bootstrap-context\s`).MatchString(out) {
		t.Errorf("after dev, the default did not go back:\n%s", out)
	}
	ctrl.stop(t)
}

func TestCLIErrors(t *testing.T) {
	h := newHome(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"vms", "list"}, "no controller configured"},
		{[]string{"vms", "create", "x"}, `required flag(s) "image" not set`},
		{[]string{"dev", "--listen", "0.0.0.0:0"}, "refusing to serve plain HTTP"},
		{[]string{"controller", "run", "--insecure-no-tls", "--tls-cert", "a", "--tls-key", "b"}, "exclude each other"},
		{[]string{"vms", "port-forward", "x", "99999"}, "want [LOCAL:]REMOTE"},
		{[]string{"worker", "run", "http://127.0.0.1:1"}, "bootstrap token is required"},
		{[]string{"worker", "run", "http://127.0.0.1:1", "--bootstrap-token", "nope"}, "not of the form"},
		{[]string{"vms", "delete"}, "missing NAME (usage: orchard vms delete NAME..."},
		{[]string{"vms", "get", "a", "b"}, `unexpected argument "b"`},
		{[]string{"vms", "create", "x", "--image", "i", "--os", "windows"}, `--os "windows": want one of darwin, linux`},
		{[]string{"vms", "logs", "x", "--tail", "-1"}, "want 0 or more lines"},
	}
	for _, c := range cases {
		_, errOut, code := h.run(c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("orchard %s: exit %d, stderr %q; want an error mentioning %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}
	cfg := filepath.Join(h.dir, "config.yaml")
	_ = os.WriteFile(cfg, []byte("controller:\n  listn: \":1\"\n"), 0o600)
	if _, errOut, code := h.run("controller", "run", "--config", cfg); code == 0 || !strings.Contains(errOut, "controller.listn") || !strings.Contains(errOut, cfg) {
		t.Errorf("unknown config key: exit %d, %q", code, errOut)
	}
}
