package tart

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/worker"
)

var _ worker.Driver = (*Driver)(nil)

// ErrClosed is returned by Start after Close, and sent on the exited
// channel of a VM the driver adopted and left running when it closed.
var ErrClosed = errors.New("tart driver closed")

// Options configure a Driver. The zero value runs "tart" from PATH with
// Orchard's timeouts.
type Options struct {
	// Binary is the path or name of tart; default "tart", looked up on PATH.
	Binary string
	// Env is added to the process environment of every tart command, e.g.
	// TART_HOME=... or TART_REGISTRY_USERNAME/PASSWORD. CI=1 is always
	// added so that pulls print plain progress lines. Values are never
	// logged.
	Env []string
	// Logger receives the driver's logs; default slog.Default().
	Logger *slog.Logger

	// IPWait is how long one `tart ip --wait` waits for a booting VM
	// (default 60s, as Orchard). IP keeps asking while the VM runs and its
	// context allows.
	IPWait time.Duration
	// StopTimeout is passed as `tart stop --timeout` (default 5s, as
	// Orchard): how long a VM has after SIGINT before tart kills it.
	StopTimeout time.Duration
	// InterruptGrace is how long a tart process has to exit after the
	// driver interrupted it (its context ended, or Close) before it is
	// killed (default 30s).
	InterruptGrace time.Duration
	// PollInterval is how often the driver looks whether a VM it adopted
	// from a previous worker run still runs (default 1s).
	PollInterval time.Duration
}

func (o *Options) setDefaults() {
	if o.Binary == "" {
		o.Binary = "tart"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.IPWait <= 0 {
		o.IPWait = 60 * time.Second
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 5 * time.Second
	}
	if o.InterruptGrace <= 0 {
		o.InterruptGrace = 30 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
}

// Driver runs VMs with the Tart CLI. Its methods may be called
// concurrently for different names.
type Driver struct {
	opts     Options
	binary   string   // resolved path of tart
	env      []string // the environment of every tart process
	tartHome string   // where tart keeps VMs, to see which one runs
	version  string
	log      *slog.Logger

	// ctx lives until Close; `tart run` children and watchers of adopted
	// VMs hang off it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	instances map[string]*instance // started or adopted, until they stop
}

// New finds tart and checks that it runs (`tart --version`).
func New(ctx context.Context, opts Options) (*Driver, error) {
	opts.setDefaults()
	binary, err := exec.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("tart driver: find tart %q: %w", opts.Binary, err)
	}
	env := append(append(os.Environ(), opts.Env...), "CI=1")
	d := &Driver{
		opts:      opts,
		binary:    binary,
		env:       env,
		tartHome:  tartHome(env),
		log:       opts.Logger.With("driver", v1.DriverTart),
		instances: map[string]*instance{},
	}
	out, err := d.command(ctx, nil, "--version")
	if err != nil {
		return nil, fmt.Errorf("tart driver: %s does not run: %w", binary, err)
	}
	d.version = strings.TrimSpace(out)
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.log.Info("using tart", "path", binary, "version", d.version, "tart_home", d.tartHome)
	return d, nil
}

// tartHome is where tart keeps its VMs: TART_HOME (the last one set in
// env wins, as for a child process) or ~/.tart.
func tartHome(env []string) string {
	home := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "TART_HOME="); ok {
			home = v
		}
	}
	if home != "" {
		return home
	}
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "HOME="); ok && v != "" {
			home = v
		}
	}
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	return filepath.Join(home, ".tart")
}

// Version is what `tart --version` printed.
func (d *Driver) Version() string { return d.version }

// Kind is v1.DriverTart.
func (d *Driver) Kind() string { return v1.DriverTart }

// Ignored names what of vm this driver does not honour: it always runs
// VMs without a window (a daemon has no display), so a VM that asks for
// graphics (headless false) is run headless anyway.
func (d *Driver) Ignored(vm *v1.VM) []string {
	if !vm.Headless {
		return []string{"headless"}
	}
	return nil
}

// Close stops every `tart run` it started (SIGINT, as Ctrl-C would) and
// waits for them to exit. VMs it adopted from a previous worker run keep
// running, for the next one to adopt; their exited channels get
// ErrClosed.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	for _, inst := range d.instances {
		if inst.child != nil {
			inst.stopping.Store(true)
		}
	}
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
	return nil
}

func (d *Driver) configPath(name string) string {
	return filepath.Join(d.tartHome, "vms", name, "config.json")
}

// checkName rejects names tart would not take as a local VM name.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("invalid local VM name %q", name)
	}
	return nil
}
