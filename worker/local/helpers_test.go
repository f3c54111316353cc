package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// testTimeout bounds every wait in the tests, so that a broken driver
// fails a test instead of hanging it. It is no timed assertion: nothing
// here is expected to take more than a fraction of it.
const testTimeout = 30 * time.Second

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newTestDriver returns a driver on a fresh directory, closed at cleanup.
func newTestDriver(t testing.TB) *Driver {
	t.Helper()
	d, err := New(testContext(t), Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// startVM creates and starts a VM called name with vm's credentials.
func startVM(t testing.TB, d *Driver, name string, vm *v1.VM) <-chan error {
	t.Helper()
	ctx := testContext(t)
	if vm == nil {
		vm = &v1.VM{}
	}
	if _, err := d.Create(ctx, name, vm, nil); err != nil {
		t.Fatalf("Create(%s): %v", name, err)
	}
	exited, err := d.Start(ctx, name, vm)
	if err != nil {
		t.Fatalf("Start(%s): %v", name, err)
	}
	return exited
}

// dialSSH logs in to the VM through Driver.Dial, pinning the driver's host
// key as a client that knows the VM would.
func dialSSH(t testing.TB, d *Driver, name, user, password string) (*ssh.Client, error) {
	t.Helper()
	return sshLogin(testContext(t), d, name, user, password)
}

func sshLogin(ctx context.Context, d *Driver, name, user, password string) (*ssh.Client, error) {
	conn, err := d.Dial(ctx, name, 22)
	if err != nil {
		return nil, err
	}
	config := &ssh.ClientConfig{
		User:            user,
		Auth:            []ssh.AuthMethod{ssh.Password(password)},
		HostKeyCallback: ssh.FixedHostKey(d.hostKey.PublicKey()),
		Timeout:         testTimeout,
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, name, config)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// mustSSH is dialSSH with the default credentials, closed at cleanup.
func mustSSH(t testing.TB, d *Driver, name string) *ssh.Client {
	t.Helper()
	client, err := dialSSH(t, d, name, defaultUser, defaultPasswd)
	if err != nil {
		t.Fatalf("ssh to %s: %v", name, err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// run runs command in a new session of client.
func run(t testing.TB, client *ssh.Client, command string, stdin io.Reader) (stdout, stderr string, err error) {
	t.Helper()
	sess, err := client.NewSession()
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	defer sess.Close()
	var out, errOut bytes.Buffer
	sess.Stdout, sess.Stderr, sess.Stdin = &out, &errOut, stdin
	err = sess.Run(command)
	return out.String(), errOut.String(), err
}

// mustRun runs command and fails the test unless it exits 0.
func mustRun(t testing.TB, client *ssh.Client, command string) string {
	t.Helper()
	out, errOut, err := run(t, client, command, nil)
	if err != nil {
		t.Fatalf("run %q: %v (stderr %q)", command, err, errOut)
	}
	return out
}

// processAlive reports whether pid is a live process; a zombie is dead
// (only its parent's wait, perhaps never, removes it).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	if runtime.GOOS != "linux" {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || (stat[i+2] != 'Z' && stat[i+2] != 'X')
}

// parsePIDs reads one pid per line and arranges for the test to kill any
// that survive it, so that a failing test leaves no process behind.
func parsePIDs(t testing.TB, out string) []int {
	t.Helper()
	var pids []int
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		pid, err := strconv.Atoi(line)
		if err != nil || pid <= 1 {
			t.Fatalf("not a pid: %q in %q", line, out)
		}
		pids = append(pids, pid)
	}
	t.Cleanup(func() {
		for _, pid := range pids {
			if processAlive(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return pids
}

// waitExited waits for the exited channel of Start to report, and checks
// that it reports once and closes.
func waitExited(t testing.TB, exited <-chan error) error {
	t.Helper()
	select {
	case err, ok := <-exited:
		if !ok {
			t.Fatal("exited closed without a value")
		}
		select {
		case _, ok := <-exited:
			if ok {
				t.Fatal("exited received a second value")
			}
		case <-time.After(testTimeout):
			t.Fatal("exited not closed after its value")
		}
		return err
	case <-time.After(testTimeout):
		t.Fatal("the VM did not stop")
	}
	return nil
}

func running(t testing.TB, d *Driver, name string) bool {
	t.Helper()
	list, err := d.List(testContext(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, inst := range list {
		if inst.Name == name {
			return inst.Running
		}
	}
	t.Fatalf("List has no %s: %v", name, list)
	return false
}

func vmName(i int) string { return fmt.Sprintf("orchard-vm-%d", i) }
