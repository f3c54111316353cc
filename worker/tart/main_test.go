package tart

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// fakeTartPath is the fake tart built once for the package's tests.
var fakeTartPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "faketart-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fakeTartPath = filepath.Join(dir, "tart")
	build := exec.Command("go", "build", "-o", fakeTartPath, "github.com/orchardci/orchard/worker/tart/internal/faketart")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build fake tart: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	macOSImage = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
	linuxImage = "ghcr.io/cirruslabs/ubuntu:latest"
)

// harness is one test's TART_HOME, the fake tart and a Driver on it.
type harness struct {
	t    *testing.T
	home string
	env  []string // what the driver and direct fake invocations get
	d    *Driver
}

// newHarness makes a driver on a fresh TART_HOME. After the test it closes
// the driver and fails the test if any VM is still running there.
func newHarness(t *testing.T, env []string, configure func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, home: t.TempDir()}
	h.env = append([]string{"TART_HOME=" + h.home}, env...)
	opts := Options{Binary: fakeTartPath, Env: h.env, Logger: testLogger(t)}
	if configure != nil {
		configure(&opts)
	}
	d, err := New(context.Background(), opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.d = d
	t.Cleanup(h.assertNothingRuns)
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// assertNothingRuns checks that no `tart run` survived the test, and kills
// any that did so that none outlives it.
func (h *harness) assertNothingRuns() {
	entries, _ := os.ReadDir(filepath.Join(h.home, "vms"))
	for _, e := range entries {
		pid, err := lockHolder(filepath.Join(h.home, "vms", e.Name(), "config.json"))
		if err == nil && pid != 0 {
			h.t.Errorf("vm %s is still running (pid %d) after the test", e.Name(), pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// tart runs the fake directly, as a person at a terminal would.
func (h *harness) tart(args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	return runFake(h.t, h.env, args...)
}

func runFake(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(fakeTartPath, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	default:
		t.Fatalf("run fake tart %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// mustTart runs the fake and fails the test unless it exits 0.
func (h *harness) mustTart(args ...string) string {
	h.t.Helper()
	out, errOut, code := h.tart(args...)
	if code != 0 {
		h.t.Fatalf("tart %v: exit %d: %s", args, code, errOut)
	}
	return out
}

// invocation is one line of the fake's invocation log.
type invocation struct {
	Args []string `json:"args"`
	PID  int      `json:"pid"`
	CI   bool     `json:"ci"`
}

func (h *harness) invocations() []invocation {
	h.t.Helper()
	f, err := os.Open(filepath.Join(h.home, "faketart", "invocations.log"))
	if err != nil {
		h.t.Fatalf("invocation log: %v", err)
	}
	defer f.Close()
	var out []invocation
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var inv invocation
		if err := json.Unmarshal(sc.Bytes(), &inv); err != nil {
			h.t.Fatalf("invocation log line %q: %v", sc.Text(), err)
		}
		out = append(out, inv)
	}
	return out
}

// invoked returns the argument lists of invocations of subcommand sub.
func (h *harness) invoked(sub string) [][]string {
	var out [][]string
	for _, inv := range h.invocations() {
		if len(inv.Args) > 0 && inv.Args[0] == sub {
			out = append(out, inv.Args)
		}
	}
	return out
}

// vmInfo is `tart get NAME --format json`.
type vmInfo struct {
	OS      string
	CPU     int
	Memory  int
	Disk    int
	Running bool
	State   string
}

func (h *harness) get(name string) vmInfo {
	h.t.Helper()
	var info vmInfo
	if err := json.Unmarshal([]byte(h.mustTart("get", name, "--format", "json")), &info); err != nil {
		h.t.Fatalf("tart get %s: %v", name, err)
	}
	return info
}

// localNames is `tart list --source local -q`.
func (h *harness) localNames() []string {
	return strings.Fields(h.mustTart("list", "--source", "local", "-q"))
}

func (h *harness) config(dir string) map[string]any {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		h.t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		h.t.Fatal(err)
	}
	return cfg
}

func (h *harness) create(name, image string) {
	h.t.Helper()
	if _, err := h.d.Create(context.Background(), name, &v1.VM{Image: image, Headless: true}, nil); err != nil {
		h.t.Fatalf("Create %s: %v", name, err)
	}
}

func (h *harness) start(name string, vm *v1.VM) <-chan error {
	h.t.Helper()
	exited, err := h.d.Start(context.Background(), name, vm)
	if err != nil {
		h.t.Fatalf("Start %s: %v", name, err)
	}
	return exited
}

// startElsewhere starts `tart run` for name as another process would (a
// previous worker run), waits until the VM runs and returns a function
// that waits for that process's end. The process is stopped after the test
// if it still runs then.
func (h *harness) startElsewhere(name string, args ...string) (wait func() error) {
	h.t.Helper()
	cmd := exec.Command(fakeTartPath, append(append([]string{"run", "--no-graphics"}, args...), name)...)
	cmd.Env = append(append(os.Environ(), h.env...), "CI=1")
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	exited := make(chan struct{})
	var err error
	go func() { err = cmd.Wait(); close(exited) }()
	h.t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		<-exited
	})
	waitUntil(h.t, "vm "+name+" runs", func() bool { return h.d.running(name) })
	return func() error { <-exited; return err }
}

// waitUntil polls cond; the bound only keeps a broken test from hanging.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// receive takes the one value of an exited channel and checks that the
// channel is closed after it.
func receive(t *testing.T, exited <-chan error) error {
	t.Helper()
	select {
	case err, ok := <-exited:
		if !ok {
			t.Fatal("exited channel closed without a value")
		}
		if _, ok := <-exited; ok {
			t.Fatal("exited channel delivered a second value")
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("gave up waiting for the vm to exit")
		return nil
	}
}

func contains(list [][]string, want []string) bool {
	return slices.ContainsFunc(list, func(args []string) bool { return slices.Equal(args, want) })
}

// syncBuffer is a log destination tests can read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var _ io.Writer = (*syncBuffer)(nil)
