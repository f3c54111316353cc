package worker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// Config configures a Worker.
type Config struct {
	// ControllerURL is the controller's base URL. Without a scheme it is
	// https:// when Token carries a certificate, http:// otherwise.
	ControllerURL string
	// Token carries the service account and the controller certificate.
	Token v1.BootstrapToken
	// Name is the worker's name (default: the host name).
	Name string
	// MachineID identifies the host; a second worker of the same name on
	// another machine is refused.
	MachineID string
	Labels    v1.Labels
	// Resources are what the worker offers; see DefaultResources.
	Resources v1.Resources
	// DefaultCPU and DefaultMemory are assigned to VMs that ask for none.
	DefaultCPU, DefaultMemory uint64
	Driver                    Driver
	Logger                    *slog.Logger
	Version                   string
	// BootTimeout bounds how long a VM may take to accept SSH for its
	// startup script. Default 10m.
	BootTimeout time.Duration
}

// Worker runs VMs for a controller. See the package documentation.
type Worker struct {
	cfg    Config
	api    *client.Client
	logger *slog.Logger

	mu sync.Mutex
	// desired is the controller's wish, by VM name. haveFull says a full
	// set arrived since start: only then may the worker delete anything.
	// partial collects a full set that arrives in parts.
	desired  map[string]*v1.VM
	haveFull bool
	partial  map[string]*v1.VM
	// instances are the VMs this worker runs, by local name.
	instances map[string]*instance
	// leftovers are driver instances found at start that no VM claims
	// yet; after the first full set the unclaimed ones are deleted.
	leftovers map[string]bool
	out       *outbox

	kick chan struct{}
	wg   sync.WaitGroup
}

// New checks cfg and makes a worker; Run starts it.
func New(cfg Config) (*Worker, error) {
	if cfg.Driver == nil {
		return nil, errors.New("worker: no driver")
	}
	if err := v1.ValidateName("worker", cfg.Name); err != nil {
		return nil, fmt.Errorf("worker: %w (use --name)", err)
	}
	if cfg.MachineID == "" {
		return nil, errors.New("worker: no machine id")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 10 * time.Minute
	}
	if cfg.DefaultCPU == 0 {
		cfg.DefaultCPU = 4
	}
	if cfg.DefaultMemory == 0 {
		cfg.DefaultMemory = 8192
	}
	url := cfg.ControllerURL
	if !strings.Contains(url, "://") {
		scheme := "http://"
		if len(cfg.Token.CertificatePEM) > 0 {
			scheme = "https://"
		}
		url = scheme + url
	}
	api, err := client.New(client.Config{
		URL:                 url,
		ServiceAccountName:  cfg.Token.ServiceAccountName,
		ServiceAccountToken: cfg.Token.ServiceAccountToken,
		CertificatePEM:      cfg.Token.CertificatePEM,
		UserAgent:           "orchard-worker/" + cfg.Version,
	})
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	return &Worker{
		cfg: cfg, api: api,
		logger:    cfg.Logger.With("worker", cfg.Name),
		desired:   map[string]*v1.VM{},
		instances: map[string]*instance{},
		leftovers: map[string]bool{},
		out:       newOutbox(),
		kick:      make(chan struct{}, 1),
	}, nil
}

// Run connects to the controller and keeps connecting, with jittered
// backoff, until ctx is done; meanwhile it runs the VMs the controller
// wants. When it returns, every VM goroutine has stopped; the VMs
// themselves are the driver's to stop (its Close).
func (w *Worker) Run(ctx context.Context) error {
	held, err := w.cfg.Driver.List(ctx)
	if err != nil {
		return fmt.Errorf("list the VMs the %s driver holds: %w", w.cfg.Driver.Kind(), err)
	}
	w.mu.Lock()
	for _, in := range held {
		w.leftovers[in.Name] = in.Running
	}
	w.mu.Unlock()

	w.wg.Go(func() { w.reconcileLoop(ctx) })
	defer w.wg.Wait()

	backoff := newBackoff()
	for ctx.Err() == nil {
		start := time.Now()
		connected, err := w.session(ctx)
		if ctx.Err() != nil {
			break
		}
		if time.Since(start) > 30*time.Second {
			backoff.reset()
		}
		delay := backoff.next()
		var de *tunnel.DialError
		var unknownCA x509.UnknownAuthorityError
		var badHost x509.HostnameError
		switch {
		case errors.As(err, &de) && de.StatusCode >= 400 && de.StatusCode < 500:
			// Credentials, a name clash: an operator has to act, so retry slowly.
			delay = max(delay, 30*time.Second)
			w.logger.Error("the controller refused this worker", "err", err, "retry_in", delay.Round(time.Second))
		case errors.As(err, &unknownCA) || errors.As(err, &badHost):
			delay = max(delay, 30*time.Second)
			w.logger.Error("the controller's certificate is not trusted: use a bootstrap token that carries it (orchard bootstrap-token NAME, from a context that pins it)",
				"err", err, "retry_in", delay.Round(time.Second))
		case connected:
			w.logger.Warn("disconnected from the controller", "err", err, "retry_in", delay.Round(time.Millisecond))
		default:
			w.logger.Warn("cannot reach the controller", "url", w.api.Config().URL, "err", err, "retry_in", delay.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	return nil
}

// backoff grows from 250 ms to 30 s with full jitter, so that a fleet
// reconnecting after a controller restart does not arrive in one wave.
type backoff struct{ attempt int }

func newBackoff() *backoff { return &backoff{} }
func (b *backoff) reset()  { b.attempt = 0 }
func (b *backoff) next() time.Duration {
	ceiling := min(250*time.Millisecond<<min(b.attempt, 7), 30*time.Second)
	b.attempt++
	return ceiling/2 + rand.N(ceiling/2+1)
}

// session runs one tunnel from dial to disconnect. connected says it got
// as far as the controller's welcome.
func (w *Worker) session(ctx context.Context) (connected bool, err error) {
	header := w.api.AuthHeader()
	header.Set("X-Orchard-Machine-ID", w.cfg.MachineID)
	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := tunnel.Dial(dialCtx, w.api.URL("/v1/workers/"+w.cfg.Name+"/tunnel"), w.api.StreamHTTPClient(), header)
	cancel()
	if err != nil {
		return false, err
	}
	mux, err := tunnel.NewWorker(conn)
	if err != nil {
		conn.Close()
		return false, err
	}
	defer mux.Close()
	stop := context.AfterFunc(ctx, func() { mux.Close() })
	defer stop()

	control, err := tunnel.OpenStream(mux)
	if err != nil {
		return false, err
	}
	if err := tunnel.WriteMessage(control, &tunnel.Message{Type: tunnel.TypeHello, Hello: w.hello()}); err != nil {
		return false, err
	}
	_ = control.SetReadDeadline(time.Now().Add(30 * time.Second))
	m, err := tunnel.ReadMessage(control)
	if err != nil {
		return false, fmt.Errorf("read welcome: %w", err)
	}
	_ = control.SetReadDeadline(time.Time{})
	switch {
	case m.Type == tunnel.TypeError:
		return false, fmt.Errorf("the controller refused this worker: %s", m.Error.Message)
	case m.Type != tunnel.TypeWelcome:
		return false, fmt.Errorf("expected a welcome, got %q", m.Type)
	}
	heartbeat := time.Duration(m.Welcome.HeartbeatSeconds) * time.Second
	if heartbeat <= 0 {
		heartbeat = 10 * time.Second
	}
	w.logger.Info("connected to the controller", "url", w.api.Config().URL)

	sessionCtx, cancelSession := context.WithCancel(ctx)
	defer cancelSession()
	// Whichever part fails first ends the session, and closing the mux is
	// what unblocks the others' reads.
	endSession := context.AfterFunc(sessionCtx, func() { mux.Close() })
	defer endSession()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		defer cancelSession()
		w.out.send(sessionCtx, control, heartbeat)
	})
	wg.Go(func() {
		defer cancelSession()
		w.serveStreams(sessionCtx, mux)
	})
	err = w.readControl(sessionCtx, control)
	cancelSession()
	mux.Close()
	return true, err
}

func (w *Worker) hello() *tunnel.Hello {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := &tunnel.Hello{
		Protocol: tunnel.ProtocolVersion, Name: w.cfg.Name, MachineID: w.cfg.MachineID, Version: w.cfg.Version,
		Driver: w.cfg.Driver.Kind(), Resources: w.cfg.Resources, Labels: w.cfg.Labels,
		DefaultCPU: w.cfg.DefaultCPU, DefaultMemory: w.cfg.DefaultMemory,
	}
	h.Arch, h.Runtime = platform(w.cfg.Driver.Kind())
	for name, inst := range w.instances {
		h.Instances = append(h.Instances, tunnel.Instance{LocalName: name, Running: inst.isRunning()})
	}
	for name, running := range w.leftovers {
		h.Instances = append(h.Instances, tunnel.Instance{LocalName: name, Running: running})
	}
	return h
}

// platform is what the worker reports in Orchard's vocabulary. A local
// worker stays within Orchard's known values too: its clients reject
// others.
func platform(driver string) (v1.Arch, v1.Runtime) {
	arch := v1.ArchAMD64
	if runtime.GOARCH == "arm64" {
		arch = v1.ArchARM64
	}
	if driver == v1.DriverTart || runtime.GOOS == "darwin" {
		return arch, v1.RuntimeTart
	}
	return arch, v1.RuntimeVetu
}

// readControl applies the controller's desired sets until the session
// ends.
func (w *Worker) readControl(ctx context.Context, control tunnel.Stream) error {
	for {
		m, err := tunnel.ReadMessage(control)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read from the controller: %w", err)
		}
		switch m.Type {
		case tunnel.TypeVMSet:
			w.applySet(m.VMSet)
		case tunnel.TypeError:
			return fmt.Errorf("the controller ended the session: %s", m.Error.Message)
		default:
			return fmt.Errorf("unexpected %q message from the controller", m.Type)
		}
	}
}

func (w *Worker) applySet(set *tunnel.VMSet) {
	w.mu.Lock()
	if set.Full {
		if w.partial == nil {
			w.partial = map[string]*v1.VM{}
		}
		for _, vm := range set.VMs {
			w.partial[vm.Name] = vm
		}
		if set.Continues {
			w.mu.Unlock()
			return
		}
		w.desired, w.partial = w.partial, nil
		w.haveFull = true
		// The controller just learned everything anew: tell it where every
		// VM stands.
		for _, inst := range w.instances {
			w.out.status(inst.currentStatus())
		}
	} else {
		for _, vm := range set.VMs {
			w.desired[vm.Name] = vm
		}
		for _, name := range set.Deleted {
			delete(w.desired, name)
		}
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// reconcileLoop makes the instances match the desired set whenever
// either changes.
func (w *Worker) reconcileLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return // instances end through ctx too
		case <-w.kick:
			w.reconcile(ctx)
		}
	}
}

func (w *Worker) reconcile(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wanted := map[string]*v1.VM{}
	for _, vm := range w.desired {
		if vm.Worker == w.cfg.Name && vm.LocalName != "" {
			wanted[vm.LocalName] = vm
		}
	}
	for name, vm := range wanted {
		if inst, ok := w.instances[name]; ok {
			inst.update(vm)
			continue
		}
		// Adopt only what runs: an instance left stopped may be half made
		// (a worker killed between clone and configure); make it afresh.
		adopt := w.leftovers[name]
		delete(w.leftovers, name)
		inst := newInstance(w, name, vm, adopt)
		w.instances[name] = inst
		w.wg.Go(func() { inst.run(ctx) })
	}
	if !w.haveFull {
		return
	}
	for name, inst := range w.instances {
		if _, ok := wanted[name]; !ok {
			inst.remove()
		}
	}
	for name := range w.leftovers {
		delete(w.leftovers, name)
		w.wg.Go(func() {
			w.logger.Info("deleting a VM no one wants", "instance", name)
			if err := w.cfg.Driver.Delete(ctx, name); err != nil && ctx.Err() == nil {
				w.logger.Warn("delete a leftover VM", "instance", name, "err", err)
			}
		})
	}
}

// forget drops a removed instance.
func (w *Worker) forget(inst *instance) {
	w.mu.Lock()
	if w.instances[inst.name] == inst {
		delete(w.instances, inst.name)
	}
	w.mu.Unlock()
}

func (w *Worker) instance(name string) *instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.instances[name]
}

// serveStreams answers the controller's requests: dials to VM ports and
// IP lookups.
func (w *Worker) serveStreams(ctx context.Context, mux *yamux.Session) {
	for {
		st, err := tunnel.AcceptStream(ctx, mux)
		if err != nil {
			return
		}
		w.wg.Go(func() { w.serveStream(ctx, st) })
	}
}

func (w *Worker) serveStream(ctx context.Context, st tunnel.Stream) {
	_ = st.SetReadDeadline(time.Now().Add(15 * time.Second))
	req, err := tunnel.ReadRequest(st)
	if err != nil {
		_ = tunnel.WriteResponse(st, tunnel.Response{Code: tunnel.CodeBadRequest, Message: err.Error()})
		st.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	inst := w.instance(req.LocalName)
	if inst == nil || !inst.isRunning() {
		_ = tunnel.WriteResponse(st, tunnel.Response{Code: tunnel.CodeNoSuchVM, Message: fmt.Sprintf("this worker runs no VM %s", req.LocalName)})
		st.Close()
		return
	}
	reqCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch req.Op {
	case tunnel.OpIP:
		ip, err := w.cfg.Driver.IP(reqCtx, req.LocalName)
		resp := tunnel.Response{Code: tunnel.CodeOK, Message: ip}
		if err != nil {
			resp = tunnel.Response{Code: tunnel.CodeUnreachable, Message: err.Error()}
		}
		_ = tunnel.WriteResponse(st, resp)
		st.Close()
	case tunnel.OpDial:
		conn, err := w.cfg.Driver.Dial(reqCtx, req.LocalName, req.Port)
		if err != nil {
			_ = tunnel.WriteResponse(st, tunnel.Response{Code: tunnel.CodeUnreachable, Message: err.Error()})
			st.Close()
			return
		}
		if err := tunnel.WriteResponse(st, tunnel.Response{Code: tunnel.CodeOK}); err != nil {
			conn.Close()
			st.Close()
			return
		}
		cancel()
		tunnel.Splice(st, conn)
	}
}
