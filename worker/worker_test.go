package worker_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchardci/orchard/fleet"
	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
	"github.com/orchardci/orchard/worker"
	"github.com/orchardci/orchard/worker/local"
	"github.com/orchardci/orchard/worker/tart"
)

// cluster is a controller on loopback (plain HTTP) and the means to run
// workers against it.
type cluster struct {
	t     testing.TB
	dir   string
	c     *fleet.Controller
	url   string
	token v1.BootstrapToken
	stop  func()
}

func newCluster(t testing.TB, dir string, offline time.Duration) *cluster {
	return newClusterOn(t, dir, offline, false, "127.0.0.1:0")
}

// newClusterTLS is newCluster, serving TLS with a generated certificate
// that the workers' token pins when withTLS is set.
func newClusterTLS(t testing.TB, dir string, offline time.Duration, withTLS bool) *cluster {
	return newClusterOn(t, dir, offline, withTLS, "127.0.0.1:0")
}

// newClusterOn serves on addr; a fixed address lets a test restart the
// controller where its workers look for it.
func newClusterOn(t testing.TB, dir string, offline time.Duration, withTLS bool, addr string) *cluster {
	t.Helper()
	c, err := fleet.Open(fleet.Config{DataDir: dir, WorkerOfflineTimeout: offline, RestartDelay: 100 * time.Millisecond, HeartbeatInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.EnsureBootstrapAdmin(context.Background(), "test-token"); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	waitUntil(t, "the address to be free", func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	var cert *fleet.Certificate
	scheme := "http://"
	if withTLS {
		generated, _, err := fleet.LoadOrCreateCertificate(dir)
		if err != nil {
			t.Fatal(err)
		}
		cert, scheme = &generated, "https://"
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { _ = c.Serve(ctx, ln, cert); close(served) }()
	cl := &cluster{t: t, dir: dir, c: c, url: scheme + ln.Addr().String(),
		token: v1.BootstrapToken{ServiceAccountName: fleet.BootstrapAdmin, ServiceAccountToken: "test-token"}}
	if cert != nil {
		cl.token.CertificatePEM = cert.PEM
	}
	var once sync.Once
	cl.stop = func() { once.Do(func() { cancel(); <-served; c.Close() }) }
	t.Cleanup(cl.stop)
	return cl
}

// runWorker runs a worker with driver until the returned stop is called.
func (cl *cluster) runWorker(name string, driver worker.Driver) (stop func()) {
	return cl.runWorkerWith(name, driver, v1.Resources{v1.ResourceTartVMs: 4})
}

func (cl *cluster) runWorkerWith(name string, driver worker.Driver, res v1.Resources) (stop func()) {
	cl.t.Helper()
	w, err := worker.New(worker.Config{ControllerURL: cl.url, Token: cl.token, Name: name, MachineID: "m-" + name,
		Resources: res, Driver: driver, BootTimeout: 20 * time.Second})
	if err != nil {
		cl.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	cl.t.Cleanup(stop)
	return stop
}

func localDriver(t testing.TB, dir string) *local.Driver {
	t.Helper()
	d, err := local.New(context.Background(), local.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func (cl *cluster) create(vm *v1.VM) {
	cl.t.Helper()
	if vm.Image == "" {
		vm.Image = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
	}
	if _, err := cl.c.CreateVM(context.Background(), vm); err != nil {
		cl.t.Fatal(err)
	}
}

func (cl *cluster) wait(name string, cond func(*v1.VM) bool) *v1.VM {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := cl.c.WaitVM(ctx, name, func(vm *v1.VM) (bool, error) { return vm != nil && cond(vm), nil })
	if err != nil {
		cl.t.Fatalf("VM %s: %v (last: %+v)", name, err, vm)
	}
	return vm
}

func (cl *cluster) logs(name string) string {
	cl.t.Helper()
	evs, _, err := cl.c.VMEvents(name, store.EventsQuery{})
	if err != nil {
		cl.t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range evs {
		b.WriteString(e.Payload + "\n")
	}
	return b.String()
}

// ssh runs command in the VM through the controller's DialVM, the path the
// autoscaler takes.
func (cl *cluster) ssh(name, command string) (string, error) {
	conn, err := cl.c.DialVMWait(context.Background(), name, 22, 10*time.Second)
	if err != nil {
		return "", err
	}
	var out lockedBuffer
	err = tunnel.RunSSH(context.Background(), conn, tunnel.SSHLogin{User: "admin", Password: "admin"}, tunnel.SSHCommand{Command: command, Stdout: &out, Stderr: &out})
	return out.String(), err
}

// lockedBuffer takes stdout and stderr, which SSH copies concurrently.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func running(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning }
func failed(vm *v1.VM) bool  { return vm.Status == v1.VMStatusFailed }

func TestLifecycleWithLocalDriver(t *testing.T) {
	cl := newCluster(t, t.TempDir(), time.Minute)
	d := localDriver(t, t.TempDir())
	cl.runWorker("w1", d)

	cl.create(&v1.VM{StartupScript: &v1.VMScript{ScriptContent: "echo \"hello $GREETING\"\necho to-stderr >&2", Env: map[string]string{"GREETING": "it's me"}},
		Meta: v1.Meta{Name: "vm"}})
	vm := cl.wait("vm", func(vm *v1.VM) bool { return running(vm) && vm.StatusMessage == "the startup script finished" })
	if vm.Worker != "w1" || vm.StartedAt.IsZero() || vm.Condition(v1.ConditionRunning) != v1.ConditionTrue {
		t.Errorf("running VM = worker %q started %v running %q", vm.Worker, vm.StartedAt, vm.Condition(v1.ConditionRunning))
	}
	waitLog(t, cl, "vm", "hello it's me")
	waitLog(t, cl, "vm", "to-stderr")
	waitLog(t, cl, "vm", "ignores these settings: image")

	out, err := cl.ssh("vm", "echo $HOME")
	if err != nil || !strings.Contains(out, vm.LocalName) {
		t.Errorf("ssh: %q, %v", out, err)
	}
	_, err = cl.ssh("vm", "exit 5")
	if exit, ok := err.(*tunnel.ExitError); !ok || exit.Status != 5 {
		t.Errorf("exit status through the tunnel: %v", err)
	}
	ip, err := cl.c.VMIP(context.Background(), "vm", 0)
	if err != nil || !strings.HasPrefix(ip, "127.") {
		t.Errorf("ip = %q, %v", ip, err)
	}

	if err := cl.c.DeleteVM(context.Background(), "vm"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the worker to delete the VM", func() bool {
		list, _ := d.List(context.Background())
		return len(list) == 0
	})
}

func TestFailingStartupScript(t *testing.T) {
	cl := newCluster(t, t.TempDir(), time.Minute)
	cl.runWorker("w1", localDriver(t, t.TempDir()))
	cl.create(&v1.VM{StartupScript: &v1.VMScript{ScriptContent: "echo about to fail\nfalse\necho never"}, Meta: v1.Meta{Name: "vm"}})
	vm := cl.wait("vm", failed)
	if vm.StatusMessage != "startup script failed with exit status 1" {
		t.Errorf("status message = %q", vm.StatusMessage)
	}
	waitLog(t, cl, "vm", "about to fail")
	if strings.Contains(cl.logs("vm"), "never") {
		t.Error("the script went on after a failing command (set -e)")
	}
}

func TestPowerStateStop(t *testing.T) {
	cl := newCluster(t, t.TempDir(), time.Minute)
	cl.runWorker("w1", localDriver(t, t.TempDir()))
	cl.create(&v1.VM{Meta: v1.Meta{Name: "vm"}})
	vm := cl.wait("vm", running)
	spec := vm.Clone()
	spec.PowerState = v1.PowerStateStopped
	if _, err := cl.c.UpdateVMSpec(context.Background(), "vm", spec); err != nil {
		t.Fatal(err)
	}
	stopped := cl.wait("vm", func(vm *v1.VM) bool {
		return vm.ObservedGeneration == 1 && vm.Condition(v1.ConditionRunning) == v1.ConditionFalse
	})
	if stopped.Status != v1.VMStatusRunning || stopped.StatusMessage != "VM is stopped" {
		t.Errorf("stopped VM: %s %q", stopped.Status, stopped.StatusMessage)
	}
	if _, err := cl.c.DialVM(context.Background(), "vm", 22); err == nil {
		t.Error("dialed a stopped VM")
	}
}

// TestStoppedVMStaysStopped: a VM stopped on purpose is not booted again
// when its worker restarts.
func TestStoppedVMStaysStopped(t *testing.T) {
	cl := newCluster(t, t.TempDir(), time.Minute)
	vmDir := t.TempDir()
	d := localDriver(t, vmDir)
	stop := cl.runWorker("w1", d)
	cl.create(&v1.VM{Meta: v1.Meta{Name: "vm"}})
	vm := cl.wait("vm", running)
	spec := vm.Clone()
	spec.PowerState = v1.PowerStateStopped
	if _, err := cl.c.UpdateVMSpec(context.Background(), "vm", spec); err != nil {
		t.Fatal(err)
	}
	cl.wait("vm", func(vm *v1.VM) bool { return vm.Condition(v1.ConditionRunning) == v1.ConditionFalse })
	stop()
	d.Close()

	d2 := localDriver(t, vmDir)
	cl.runWorker("w1", d2)
	waitUntil(t, "the restarted worker to hold the VM", func() bool {
		list, _ := d2.List(context.Background())
		return len(list) == 1
	})
	time.Sleep(300 * time.Millisecond)
	list, _ := d2.List(context.Background())
	if len(list) != 1 || list[0].Running {
		t.Errorf("after a worker restart the stopped VM is %+v", list)
	}
	if vm, _ := cl.c.VM("vm"); vm.Status == v1.VMStatusFailed || vm.Condition(v1.ConditionRunning) != v1.ConditionFalse {
		t.Errorf("VM after the restart: %s, running=%s, %q", vm.Status, vm.Condition(v1.ConditionRunning), vm.StatusMessage)
	}
}

// TestWorkerRestart: local VMs live in the worker's process, so a worker
// restart loses them. The restarted worker says so in its hello; the
// controller fails them, and OnFailure ones come back.
func TestWorkerRestart(t *testing.T) {
	cl := newCluster(t, t.TempDir(), time.Minute)
	vmDir := t.TempDir()
	d := localDriver(t, vmDir)
	stop := cl.runWorker("w1", d)
	cl.create(&v1.VM{Meta: v1.Meta{Name: "once"}})
	cl.create(&v1.VM{RestartPolicy: v1.RestartPolicyOnFailure, Meta: v1.Meta{Name: "again"}})
	cl.wait("once", running)
	cl.wait("again", running)
	stop()
	d.Close()

	cl.runWorker("w1", localDriver(t, vmDir))
	once := cl.wait("once", failed)
	if !strings.Contains(once.StatusMessage, "lost track") {
		t.Errorf("reason = %q", once.StatusMessage)
	}
	again := cl.wait("again", func(vm *v1.VM) bool { return running(vm) && vm.RestartCount == 1 })
	if _, err := cl.ssh("again", "true"); err != nil {
		t.Errorf("ssh into the restarted VM: %v", err)
	}
	_ = again
}

// TestControllerRestart: the worker reconnects by itself; its VMs keep
// running, and the controller keeps them.
func TestControllerRestart(t *testing.T) {
	dir := t.TempDir()
	cl := newCluster(t, dir, 2*time.Second)
	url := cl.url
	cl.runWorker("w1", localDriver(t, t.TempDir()))
	cl.create(&v1.VM{Meta: v1.Meta{Name: "vm"}})
	cl.wait("vm", running)
	cl.stop()

	// Same data, same address.
	cl2 := restartOn(t, dir, url)
	waitUntil(t, "the worker to reconnect", func() bool {
		w, err := cl2.c.Worker("w1")
		return err == nil && time.Since(w.LastSeen) < time.Second
	})
	time.Sleep(2500 * time.Millisecond) // past the offline timeout
	if vm, _ := cl2.c.VM("vm"); !running(vm) {
		t.Fatalf("VM after a controller restart: %s %q", vm.Status, vm.StatusMessage)
	}
	if _, err := cl2.ssh("vm", "true"); err != nil {
		t.Errorf("ssh after a controller restart: %v", err)
	}
	cl2.create(&v1.VM{Meta: v1.Meta{Name: "new"}})
	cl2.wait("new", running)
}

// restartOn opens the controller again on dir and the same address.
func restartOn(t *testing.T, dir, url string) *cluster {
	t.Helper()
	return newClusterOn(t, dir, 2*time.Second, false, strings.TrimPrefix(url, "http://"))
}

func TestTartDriverThroughTheWorker(t *testing.T) {
	bin := buildFakeTart(t)
	home := t.TempDir()
	d, err := tart.New(context.Background(), tart.Options{Binary: bin, Env: []string{"TART_HOME=" + home}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	cl := newCluster(t, t.TempDir(), time.Minute)
	cl.runWorker("mac", d)
	// A Tart worker takes VMs of its own architecture only.
	arch := v1.ArchARM64
	if runtime.GOARCH == "amd64" {
		arch = v1.ArchAMD64
	}
	cl.create(&v1.VM{CPU: 6, Memory: 6144, Arch: arch, Meta: v1.Meta{Name: "vm"}})
	vm := cl.wait("vm", running)
	if vm.AssignedCPU != 6 {
		t.Errorf("assigned CPU = %d", vm.AssignedCPU)
	}
	ip, err := cl.c.VMIP(context.Background(), "vm", 10)
	if err != nil || net.ParseIP(ip) == nil {
		t.Errorf("ip = %q, %v", ip, err)
	}
	list, err := d.List(context.Background())
	if err != nil || len(list) != 1 || list[0].Name != vm.LocalName || !list[0].Running {
		t.Fatalf("tart holds %+v, %v", list, err)
	}
	if err := cl.c.DeleteVM(context.Background(), "vm"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "tart delete", func() bool {
		list, _ := d.List(context.Background())
		return len(list) == 0
	})
}

func buildFakeTart(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tart")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/orchardci/orchard/worker/tart/internal/faketart").CombinedOutput()
	if err != nil {
		t.Fatalf("build the fake tart: %v\n%s", err, out)
	}
	return bin
}

func waitLog(t *testing.T, cl *cluster, vm, want string) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%q in the log of %s", want, vm), func() bool { return strings.Contains(cl.logs(vm), want) })
}

// waitUntil polls what the test can only observe from outside.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
