package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/orchardci/orchard/fleet"
	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// env is a controller serving real TLS on loopback, with its admin client.
type env struct {
	t     testing.TB
	c     *fleet.Controller
	cert  fleet.Certificate
	url   string
	admin *client.Client
	dir   string
	stop  func()
}

type envOptions struct {
	dir            string
	offlineTimeout time.Duration
	restartDelay   time.Duration
	noTLS          bool
}

func newEnv(t testing.TB, opts ...envOptions) *env {
	t.Helper()
	var o envOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	c, err := fleet.Open(fleet.Config{DataDir: o.dir, WorkerOfflineTimeout: o.offlineTimeout, RestartDelay: o.restartDelay, HeartbeatInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := fleet.LoadOrCreateCertificate(o.dir)
	if err != nil {
		t.Fatal(err)
	}
	_, token, err := c.EnsureBootstrapAdmin(context.Background(), "admin-token-for-tests")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	scheme, tlsCert, pin := "https", &cert, cert.PEM
	if o.noTLS {
		scheme, tlsCert, pin = "http", nil, nil
	}
	go func() { served <- c.Serve(ctx, ln, tlsCert) }()
	e := &env{t: t, c: c, cert: cert, dir: o.dir, url: fmt.Sprintf("%s://%s", scheme, ln.Addr())}
	e.admin = e.client(fleet.BootstrapAdmin, token, pin)
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			<-served
			c.Close()
		})
	}
	t.Cleanup(e.stop)
	return e
}

func (e *env) client(name, token string, pin []byte) *client.Client {
	e.t.Helper()
	if pin == nil && e.url[:5] == "https" {
		pin = e.cert.PEM
	}
	c, err := client.New(client.Config{URL: e.url, ServiceAccountName: name, ServiceAccountToken: token, CertificatePEM: pin})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// account creates a service account with roles and returns its client.
func (e *env) account(name string, roles ...v1.Role) *client.Client {
	e.t.Helper()
	sa, err := e.admin.CreateServiceAccount(context.Background(), &v1.ServiceAccount{Roles: roles, Meta: v1.Meta{Name: name}})
	if err != nil {
		e.t.Fatal(err)
	}
	return e.client(name, sa.Token, nil)
}

// fakeWorker speaks the tunnel protocol like a worker whose VMs start
// instantly: it reports every VM it is given as running, and answers
// dials by connecting to dialTarget (when set).
type fakeWorker struct {
	t         testing.TB
	name      string
	mux       *yamux.Session
	control   tunnel.Stream
	mu        sync.Mutex
	vms       map[string]*v1.VM
	sets      int
	dial      func(req tunnel.Request) (net.Conn, error)
	autoStart bool
	changed   chan struct{}
}

type workerOptions struct {
	machineID string
	resources v1.Resources
	labels    v1.Labels
	driver    string
	instances []tunnel.Instance
	dial      func(req tunnel.Request) (net.Conn, error)
	noStart   bool
}

func (e *env) connectWorker(name string, o workerOptions) (*fakeWorker, error) {
	if o.machineID == "" {
		o.machineID = "machine-" + name
	}
	if o.driver == "" {
		o.driver = v1.DriverLocal
	}
	if o.resources == nil {
		o.resources = v1.Resources{v1.ResourceTartVMs: 2}
	}
	c := e.admin
	h := c.AuthHeader()
	h.Set(fleet.MachineIDHeader, o.machineID)
	conn, err := tunnel.Dial(context.Background(), c.URL("/v1/workers/"+name+"/tunnel"), c.StreamHTTPClient(), h)
	if err != nil {
		return nil, err
	}
	mux, err := tunnel.NewWorker(conn)
	if err != nil {
		return nil, err
	}
	control, err := tunnel.OpenStream(mux)
	if err != nil {
		return nil, err
	}
	hello := &tunnel.Message{Type: tunnel.TypeHello, Hello: &tunnel.Hello{
		Protocol: 1, Name: name, MachineID: o.machineID, Driver: o.driver, Arch: v1.ArchARM64, Runtime: v1.RuntimeTart,
		Resources: o.resources, Labels: o.labels, Instances: o.instances,
	}}
	if err := tunnel.WriteMessage(control, hello); err != nil {
		return nil, err
	}
	m, err := tunnel.ReadMessage(control)
	if err != nil {
		return nil, err
	}
	if m.Type != tunnel.TypeWelcome {
		return nil, fmt.Errorf("got %s instead of welcome: %+v", m.Type, m.Error)
	}
	w := &fakeWorker{t: e.t, name: name, mux: mux, control: control, vms: map[string]*v1.VM{}, dial: o.dial, autoStart: !o.noStart, changed: make(chan struct{}, 1)}
	go w.readLoop()
	go w.serveStreams()
	go w.heartbeat()
	e.t.Cleanup(w.close)
	return w, nil
}

func (w *fakeWorker) close() { w.mux.Close() }

func (w *fakeWorker) heartbeat() {
	for {
		select {
		case <-w.mux.CloseChan():
			return
		case <-time.After(500 * time.Millisecond):
			_ = tunnel.WriteMessage(w.control, &tunnel.Message{Type: tunnel.TypeHeartbeat})
		}
	}
}

func (w *fakeWorker) readLoop() {
	for {
		m, err := tunnel.ReadMessage(w.control)
		if err != nil {
			return
		}
		if m.Type != tunnel.TypeVMSet {
			continue
		}
		w.mu.Lock()
		w.sets++
		if m.VMSet.Full {
			w.vms = map[string]*v1.VM{}
		}
		var started []*v1.VM
		for _, vm := range m.VMSet.VMs {
			w.vms[vm.Name] = vm
			if w.autoStart && vm.Status == v1.VMStatusPending {
				started = append(started, vm)
			}
		}
		for _, name := range m.VMSet.Deleted {
			delete(w.vms, name)
		}
		w.mu.Unlock()
		for _, vm := range started {
			w.report(vm, v1.VMStatusRunning, "VM started")
		}
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
}

func (w *fakeWorker) report(vm *v1.VM, status v1.VMStatus, message string) {
	_ = tunnel.WriteMessage(w.control, &tunnel.Message{Type: tunnel.TypeVMStatus, VMStatus: &tunnel.VMStatus{
		Name: vm.Name, UID: vm.UID, RestartCount: vm.RestartCount, Status: status, StatusMessage: message,
		Running: status == v1.VMStatusRunning, ObservedGeneration: vm.Generation,
	}})
}

func (w *fakeWorker) has(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.vms[name]
	return ok
}

func (w *fakeWorker) serveStreams() {
	for {
		st, err := tunnel.AcceptStream(context.Background(), w.mux)
		if err != nil {
			return
		}
		go func() {
			req, err := tunnel.ReadRequest(st)
			if err != nil {
				st.Close()
				return
			}
			if req.Op == tunnel.OpIP {
				_ = tunnel.WriteResponse(st, tunnel.Response{Code: tunnel.CodeOK, Message: "127.0.0.1"})
				st.Close()
				return
			}
			if w.dial == nil {
				_ = tunnel.WriteResponse(st, tunnel.Response{Code: tunnel.CodeNoSuchVM, Message: "no dialer"})
				st.Close()
				return
			}
			conn, err := w.dial(req)
			if err != nil {
				_ = tunnel.WriteResponse(st, tunnel.Response{Code: tunnel.CodeUnreachable, Message: err.Error()})
				st.Close()
				return
			}
			_ = tunnel.WriteResponse(st, tunnel.Response{Code: tunnel.CodeOK})
			tunnel.Splice(st, conn)
		}()
	}
}

// waitFor polls cond, for state that the test can only observe from
// outside; it fails the test after a generous bound.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitVM waits until the VM satisfies cond, using the controller's watch.
func (e *env) waitVM(name string, cond func(*v1.VM) bool) *v1.VM {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vm, err := e.c.WaitVM(ctx, name, func(vm *v1.VM) (bool, error) { return vm != nil && cond(vm), nil })
	if err != nil {
		e.t.Fatalf("waiting for VM %s: %v (last state %+v)", name, err, vm)
	}
	return vm
}

func apiStatus(err error) int {
	var ae *client.APIError
	if errors.As(err, &ae) {
		return ae.StatusCode
	}
	return 0
}
