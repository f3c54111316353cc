package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/worker"
)

var _ worker.Driver = (*Driver)(nil)

const (
	// markerVar is in the environment of every process of a VM, as
	// <driver id>/<vm name>: how the driver finds them, daemons included.
	markerVar = "ORCHARD_LOCAL_VM"

	defaultUser   = "admin"
	defaultPasswd = "admin"
	maxNameLength = 200

	// closeTimeout bounds how long Close waits for the processes of all
	// VMs to end.
	closeTimeout = 30 * time.Second
)

// Options configure a Driver.
type Options struct {
	// Dir is the directory the driver owns: each VM gets Dir/<name>, and
	// the driver keeps its host key and lock there. Required.
	Dir string
	// Logger receives the driver's logs; nil discards them.
	Logger *slog.Logger
}

// Driver runs local VMs. Create one per directory with New; it is safe for
// concurrent use.
type Driver struct {
	dir      string
	id       string // identifies this driver's processes in markerVar, stable across runs on Dir
	hostPath string // the host's PATH, the tail of every VM's PATH
	log      *slog.Logger
	hostKey  ssh.Signer
	lock     *os.File
	addrs    addressing
	reaper   *reaper
	shutdown *shutdownListener
	shimSrc  string // the shim script that VMs' shims link to

	mu       sync.Mutex
	vms      map[string]*instance
	creating map[string]bool       // names whose Create is under way
	inUse    map[netip.Addr]string // addresses of running VMs, to keep port-0 fallbacks distinct
	closed   bool
}

// New opens (creating if needed) the driver directory opts.Dir, ends what
// a previous run of a driver on it left behind, and returns the driver.
func New(ctx context.Context, opts Options) (*Driver, error) {
	if opts.Dir == "" {
		return nil, errors.New("local driver: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("local driver: resolve %q: %w", opts.Dir, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("driver", v1.DriverLocal)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("local driver: create %s: %w", dir, err)
	}

	lock, err := lockDir(filepath.Join(dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("local driver: %w", err)
	}
	d := &Driver{
		dir:      dir,
		hostPath: os.Getenv("PATH"),
		log:      log,
		lock:     lock,
		reaper:   newReaper(),
		vms:      make(map[string]*instance),
		creating: make(map[string]bool),
		inUse:    make(map[netip.Addr]string),
	}
	if d.hostPath == "" {
		d.hostPath = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
	}
	if err := d.open(ctx); err != nil {
		lock.Close()
		return nil, fmt.Errorf("local driver: %w", err)
	}
	return d, nil
}

// open does the part of New that needs the lock.
func (d *Driver) open(ctx context.Context) error {
	var err error
	if d.id, err = loadOrCreateID(filepath.Join(d.dir, driverIDFile)); err != nil {
		return err
	}
	if d.hostKey, err = loadOrCreateHostKey(filepath.Join(d.dir, hostKeyFile)); err != nil {
		return err
	}
	// Processes of a previous run carry our id; that run's VMs are gone
	// with its process, so its processes and directories go too.
	if err := d.reaper.end(ctx, processMatch{markerPrefix: markerVar + "=" + d.id + "/"}); err != nil {
		return fmt.Errorf("end processes left by a previous run: %w", err)
	}
	if err := d.removeStaleVMDirs(); err != nil {
		return err
	}
	d.addrs = detectAddressing()
	fifo := filepath.Join(d.dir, shutdownFIFO)
	if d.shimSrc, err = installShimSource(d.dir, fifo); err != nil {
		return err
	}
	d.shutdown, err = listenShutdowns(fifo, d.id, d.log, d.guestShutdown)
	return err
}

// Kind reports v1.DriverLocal.
func (d *Driver) Kind() string { return v1.DriverLocal }

// List returns the VMs created by this driver, sorted by name. VMs of a
// previous run of the worker are never listed: New removed them.
func (d *Driver) List(ctx context.Context) ([]worker.Instance, error) {
	d.mu.Lock()
	insts := make([]*instance, 0, len(d.vms))
	for _, inst := range d.vms {
		insts = append(insts, inst)
	}
	d.mu.Unlock()

	list := make([]worker.Instance, 0, len(insts))
	for _, inst := range insts {
		inst.mu.Lock()
		list = append(list, worker.Instance{Name: inst.name, Running: inst.srv != nil})
		inst.mu.Unlock()
	}
	slices.SortFunc(list, func(a, b worker.Instance) int { return strings.Compare(a.Name, b.Name) })
	return list, nil
}

// Create makes the VM's directory and remembers its credentials. A local VM
// has no image, so imageFQN is empty and progress is never called.
func (d *Driver) Create(ctx context.Context, name string, vm *v1.VM, progress func(line string)) (imageFQN string, err error) {
	if err := validName(name); err != nil {
		return "", fmt.Errorf("create vm %q: %w", name, err)
	}
	inst := &instance{
		name:     name,
		dir:      filepath.Join(d.dir, name),
		marker:   markerVar + "=" + d.id + "/" + name,
		username: defaultUser,
		password: defaultPasswd,
		groups:   make(map[int]bool),
	}
	if vm != nil && vm.Username != "" {
		inst.username = vm.Username
	}
	if vm != nil && vm.Password != "" {
		inst.password = vm.Password
	}

	// The name is reserved while the directory is made, outside the lock:
	// file system calls can take milliseconds.
	d.mu.Lock()
	switch {
	case d.closed:
		d.mu.Unlock()
		return "", fmt.Errorf("create vm %q: %w", name, errClosed)
	case d.vms[name] != nil || d.creating[name]:
		d.mu.Unlock()
		return "", fmt.Errorf("create vm %q: already exists", name)
	}
	d.creating[name] = true
	d.mu.Unlock()

	err = os.Mkdir(inst.dir, 0o700)
	if err == nil {
		if err = writeShims(inst.dir, d.shimSrc); err != nil {
			os.RemoveAll(inst.dir)
		}
	}
	d.mu.Lock()
	delete(d.creating, name)
	if err == nil {
		d.vms[name] = inst
	}
	d.mu.Unlock()
	if err != nil {
		return "", fmt.Errorf("create vm %q: %w", name, err)
	}
	return "", nil
}

var (
	errClosed   = errors.New("local driver is closed")
	errNoSuchVM = errors.New("no such vm")
)

// validName accepts names that are one safe path element and can be
// quoted into a shell script without surprises.
func validName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > maxNameLength {
		return fmt.Errorf("name longer than %d bytes", maxNameLength)
	}
	if name[0] == '.' || name[0] == '-' {
		return errors.New("name must not start with '.' or '-'")
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("name may only hold letters, digits, '-', '_' and '.', not %q", r)
		}
	}
	return nil
}

// lookup returns the named VM or an error saying it does not exist.
func (d *Driver) lookup(name string) (*instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	inst, ok := d.vms[name]
	if !ok {
		return nil, errNoSuchVM
	}
	return inst, nil
}

// Start serves SSH for the VM on a loopback address of its own. The
// returned channel receives nil when Stop, Suspend, Delete, Close or a
// guest shutdown stops the VM.
func (d *Driver) Start(ctx context.Context, name string, vm *v1.VM) (exited <-chan error, err error) {
	inst, err := d.lookup(name)
	if err != nil {
		return nil, fmt.Errorf("start vm %q: %w", name, err)
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.srv != nil || inst.stopping != nil {
		return nil, fmt.Errorf("start vm %q: already running", name)
	}
	// Checked under inst.mu: a Close that has not yet begun stops this VM
	// after Start returns, because it needs inst.mu to begin.
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("start vm %q: %w", name, errClosed)
	}
	ln, err := d.listen(inst.name, inst.addr)
	if err != nil {
		return nil, fmt.Errorf("start vm %q: %w", name, err)
	}
	inst.addr = netip.MustParseAddrPort(ln.Addr().String())
	inst.srv = newServer(d, inst, ln)
	inst.exited = make(chan error, 1)
	inst.srv.start()
	d.log.Debug("vm started", "vm", name, "address", inst.addr)
	return inst.exited, nil
}

// Stop closes the VM's SSH server and ends every process started in it,
// SIGTERM first. The directory stays.
func (d *Driver) Stop(ctx context.Context, name string) error {
	_, err := d.stopNamed(ctx, "stop", name)
	return err
}

// Suspend is Stop: a local VM has no state to save beyond its directory,
// which stays. Ignored reports powerState "suspended" for that reason.
func (d *Driver) Suspend(ctx context.Context, name string) error {
	_, err := d.stopNamed(ctx, "suspend", name)
	return err
}

// Delete stops the VM and removes its directory.
func (d *Driver) Delete(ctx context.Context, name string) error {
	inst, err := d.stopNamed(ctx, "delete", name)
	if err != nil || inst == nil {
		return err
	}
	if err := os.RemoveAll(inst.dir); err != nil {
		return fmt.Errorf("delete vm %q: %w", name, err)
	}
	d.mu.Lock()
	if d.vms[name] == inst {
		delete(d.vms, name)
	}
	d.mu.Unlock()
	return nil
}

// stopNamed stops the named VM for op; a VM that does not exist is
// already stopped, and reported as nil.
func (d *Driver) stopNamed(ctx context.Context, op, name string) (*instance, error) {
	inst, err := d.lookup(name)
	if errors.Is(err, errNoSuchVM) {
		return nil, nil
	}
	if err == nil {
		err = d.stop(ctx, inst, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("%s vm %q: %w", op, name, err)
	}
	return inst, nil
}

// IP returns the VM's loopback address while it runs.
func (d *Driver) IP(ctx context.Context, name string) (string, error) {
	inst, err := d.lookup(name)
	if err != nil {
		return "", fmt.Errorf("ip of vm %q: %w", name, err)
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.srv == nil {
		return "", fmt.Errorf("ip of vm %q: not running", name)
	}
	return inst.addr.Addr().String(), nil
}

// Dial connects to port of the running VM: 22 reaches its SSH server
// wherever that listens, any other port is dialled on the VM's address.
func (d *Driver) Dial(ctx context.Context, name string, port uint16) (net.Conn, error) {
	inst, err := d.lookup(name)
	if err != nil {
		return nil, fmt.Errorf("dial vm %q port %d: %w", name, port, err)
	}
	inst.mu.Lock()
	running := inst.srv != nil
	target := inst.addr
	inst.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("dial vm %q port %d: not running", name, port)
	}
	if port != 22 {
		target = netip.AddrPortFrom(target.Addr(), port)
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, fmt.Errorf("dial vm %q port %d: %w", name, port, err)
	}
	return conn, nil
}

// Ignored names the fields of vm that are set but mean nothing for a
// directory on the host, in the VM JSON's spelling. "image" is always
// there: a local VM has none.
func (d *Driver) Ignored(vm *v1.VM) []string {
	ignored := []string{"image"}
	add := func(set bool, field string) {
		if set {
			ignored = append(ignored, field)
		}
	}
	add(vm.ImagePullPolicy == v1.ImagePullPolicyAlways, "imagePullPolicy")
	add(vm.CPU != 0, "cpu")
	add(vm.Memory != 0, "memory")
	add(vm.DiskSize != 0, "diskSize")
	add(vm.NetBridged != "", "net-bridged")
	add(vm.NetSoftnet || vm.NetSoftnetKebab, "netSoftnet") // one setting, two spellings
	add(len(vm.NetSoftnetAllow) > 0, "netSoftnetAllow")
	add(len(vm.NetSoftnetBlock) > 0, "netSoftnetBlock")
	add(vm.Nested, "nested")
	add(len(vm.HostDirs) > 0, "hostDirs")
	add(vm.Suspendable, "suspendable")
	add(vm.RandomSerial, "randomSerial")
	add(vm.PowerState == v1.PowerStateSuspended, "powerState")
	return ignored
}

// Close stops every VM and ends their processes; the directories stay for
// Delete, or for the next New to remove. The driver is unusable afterwards.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	insts := make([]*instance, 0, len(d.vms))
	for _, inst := range d.vms {
		insts = append(insts, inst)
	}
	d.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()

	// Stop every server first, then end all the processes in one sweep
	// (one scan of the process table for any number of VMs).
	var stops []*stopping
	var waits []chan struct{}
	match := processMatch{markerPrefix: markerVar + "=" + d.id + "/", groups: make(map[int]bool)}
	for _, inst := range insts {
		st, wait := d.beginStop(inst)
		if wait != nil {
			waits = append(waits, wait)
		}
		if st == nil {
			continue
		}
		stops = append(stops, st)
		for g := range st.groups {
			match.groups[g] = true
		}
	}
	err := d.reaper.end(ctx, match)
	var finishing sync.WaitGroup
	for _, st := range stops {
		finishing.Go(func() { d.finishStop(st, err == nil) })
	}
	finishing.Wait()
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
		}
	}
	d.shutdown.close()
	if lerr := d.lock.Close(); lerr != nil && err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("close local driver: %w", err)
	}
	return nil
}
