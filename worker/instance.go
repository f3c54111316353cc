package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// instance runs one VM incarnation (one local name) from creation to
// deletion, in its own goroutine. The reconcile loop hands it spec
// updates and, when the controller no longer wants it, removes it.
type instance struct {
	w    *Worker
	name string
	// adopt: the driver already held this instance when the worker
	// started; it runs on instead of being created again.
	adopt bool

	mu      sync.Mutex
	vm      *v1.VM // the latest spec from the controller
	status  tunnel.VMStatus
	running bool // the driver instance is up: streams may reach it

	updated    chan struct{}
	removed    chan struct{}
	removeOnce sync.Once
}

func newInstance(w *Worker, name string, vm *v1.VM, adopt bool) *instance {
	i := &instance{w: w, name: name, adopt: adopt, vm: vm, updated: make(chan struct{}, 1), removed: make(chan struct{})}
	i.status = tunnel.VMStatus{Name: vm.Name, UID: vm.UID, RestartCount: vm.RestartCount, Status: vm.Status, StatusMessage: vm.StatusMessage}
	return i
}

func (i *instance) update(vm *v1.VM) {
	i.mu.Lock()
	i.vm = vm
	i.mu.Unlock()
	select {
	case i.updated <- struct{}{}:
	default:
	}
}

// remove asks the instance to delete its VM and end.
func (i *instance) remove() { i.removeOnce.Do(func() { close(i.removed) }) }

func (i *instance) spec() *v1.VM {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.vm
}

func (i *instance) isRunning() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.running
}

func (i *instance) currentStatus() *tunnel.VMStatus {
	i.mu.Lock()
	defer i.mu.Unlock()
	st := i.status
	return &st
}

// report records and queues the VM's state for the controller.
func (i *instance) report(status v1.VMStatus, message string, observed uint64) {
	i.mu.Lock()
	vm := i.vm
	i.status = tunnel.VMStatus{
		Name: vm.Name, UID: vm.UID, RestartCount: vm.RestartCount,
		Status: status, StatusMessage: message, ImageFQN: i.status.ImageFQN,
		ObservedGeneration: observed, Running: i.running,
	}
	st := i.status
	i.mu.Unlock()
	i.w.out.status(&st)
}

func (i *instance) setRunning(running bool) {
	i.mu.Lock()
	i.running = running
	i.mu.Unlock()
}

// note writes a line of the worker's own into the VM's log.
func (i *instance) note(format string, args ...any) {
	i.w.out.log(i.spec(), []v1.Event{{Kind: v1.EventKindLogLine, Timestamp: time.Now().Unix(), Payload: "[orchard worker] " + fmt.Sprintf(format, args...)}})
}

// errFailedByController: the controller marked the VM failed (its worker
// was presumed lost, say); the instance stops and waits for removal.
var errFailedByController = errors.New("the controller marked the VM failed")

// run is the instance's goroutine.
func (i *instance) run(ctx context.Context) {
	logger := i.w.logger.With("vm", i.spec().Name, "instance", i.name)
	liveCtx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-i.removed:
		case <-liveCtx.Done():
		}
		cancel()
	}()
	err := i.live(liveCtx)
	cancel()

	select {
	case <-i.removed:
	default:
		if ctx.Err() != nil {
			return // the worker is stopping
		}
		if !errors.Is(err, errFailedByController) {
			logger.Warn("VM failed", "err", err)
			i.setRunning(false)
			i.report(v1.VMStatusFailed, err.Error(), i.spec().Generation)
		}
		// A failed VM is stopped but kept, for inspection, until the
		// controller deletes or restarts it.
		i.stop(ctx)
		select {
		case <-i.removed:
		case <-ctx.Done():
			return
		}
	}
	i.setRunning(false)
	delCtx, cancelDel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancelDel()
	if err := i.w.cfg.Driver.Delete(delCtx, i.name); err != nil {
		logger.Warn("delete VM", "err", err)
	}
	i.w.forget(i)
}

func (i *instance) stop(ctx context.Context) {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := i.w.cfg.Driver.Stop(stopCtx, i.name); err != nil {
		i.w.logger.Debug("stop VM", "instance", i.name, "err", err)
	}
}

// live creates and starts the VM, runs its startup script and follows
// it. It returns when the VM fails (the error says why) or ctx ends.
func (i *instance) live(ctx context.Context) error {
	vm := i.spec()
	if vm.Status == v1.VMStatusFailed {
		return errFailedByController
	}
	d := i.w.cfg.Driver
	if !i.adopt {
		i.report(v1.VMStatusPending, "creating the VM", 0)
		fqn, err := d.Create(ctx, i.name, vm, func(line string) { i.report(v1.VMStatusPending, line, 0) })
		if err != nil {
			return fmt.Errorf("create the VM: %w", err)
		}
		i.mu.Lock()
		i.status.ImageFQN = fqn
		i.mu.Unlock()
		if ignored := d.Ignored(vm); len(ignored) > 0 {
			i.note("the %s driver ignores these settings: %s", d.Kind(), strings.Join(ignored, ", "))
		}
	}
	if vm.PowerState == v1.PowerStateStopped || vm.PowerState == v1.PowerStateSuspended {
		// Stopped on purpose (before it first started, or before this
		// worker restarted): keep it down. Power states are one-way.
		if i.adopt {
			if err := d.Stop(ctx, i.name); err != nil {
				return fmt.Errorf("stop the VM: %w", err)
			}
		}
		i.setRunning(false)
		i.report(v1.VMStatusRunning, "VM is "+string(vm.PowerState), vm.Generation)
		<-ctx.Done()
		return ctx.Err()
	}
	exited, err := d.Start(ctx, i.name, vm)
	if err != nil {
		return fmt.Errorf("start the VM: %w", err)
	}
	i.setRunning(true)
	observed := vm.Generation
	i.report(v1.VMStatusRunning, "VM is running", observed)

	var script <-chan error
	if vm.StartupScript != nil && !i.adopt {
		done := make(chan error, 1)
		script = done
		i.report(v1.VMStatusRunning, "running the startup script", observed)
		go func() { done <- i.runStartupScript(ctx, vm) }()
	}

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-script:
			script = nil
			var exit *tunnel.ExitError
			switch {
			case errors.As(err, &exit):
				return fmt.Errorf("startup script failed with %s", exit)
			case err != nil:
				return fmt.Errorf("startup script: %w", err)
			}
			i.report(v1.VMStatusRunning, "the startup script finished", observed)
		case err := <-exited:
			i.setRunning(false)
			if err != nil {
				return fmt.Errorf("the VM stopped: %w", err)
			}
			return errors.New("the VM stopped on its own (the guest shut down)")
		case <-i.updated:
			next := i.spec()
			if next.Status == v1.VMStatusFailed {
				return errFailedByController
			}
			if next.Generation == observed {
				continue
			}
			var err error
			if exited, err = i.apply(ctx, vm, next, exited); err != nil {
				return err
			}
			vm, observed = next, next.Generation
			if exited == nil {
				// Stopped or suspended on purpose: nothing more can happen
				// but removal (power states are one-way).
				i.report(v1.VMStatusRunning, "VM is "+string(next.PowerState), observed)
				<-ctx.Done()
				return ctx.Err()
			}
			i.report(v1.VMStatusRunning, "VM is running", observed)
		}
	}
}

// apply makes a running VM match a new generation of its spec: stop or
// suspend it, or restart it so that new run options (softnet) apply. It
// returns the new exit channel, nil when the VM is now down on purpose.
func (i *instance) apply(ctx context.Context, old, next *v1.VM, exited <-chan error) (<-chan error, error) {
	d := i.w.cfg.Driver
	switch next.PowerState {
	case v1.PowerStateStopped, v1.PowerStateSuspended:
		i.report(v1.VMStatusRunning, "stopping the VM", old.Generation)
		verb, err := "stop", error(nil)
		if next.PowerState == v1.PowerStateSuspended {
			verb, err = "suspend", d.Suspend(ctx, i.name)
		} else {
			err = d.Stop(ctx, i.name)
		}
		if err != nil {
			return nil, fmt.Errorf("%s the VM: %w", verb, err)
		}
		<-exited
		i.setRunning(false)
		return nil, nil
	default:
		i.report(v1.VMStatusRunning, "restarting the VM to apply its new settings", old.Generation)
		if err := d.Stop(ctx, i.name); err != nil {
			return nil, fmt.Errorf("stop the VM to apply new settings: %w", err)
		}
		<-exited
		i.setRunning(false)
		restarted, err := d.Start(ctx, i.name, next)
		if err != nil {
			return nil, fmt.Errorf("restart the VM with new settings: %w", err)
		}
		i.setRunning(true)
		return restarted, nil
	}
}
