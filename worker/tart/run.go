package tart

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// instance is a VM this driver started (a `tart run` child) or adopted
// (running when Start was called, left by a previous worker process).
type instance struct {
	name        string
	bridged     bool
	suspendable bool
	child       *exec.Cmd // nil when adopted

	// stopping is set while the driver itself stops the VM, so that the
	// forced end of a stop it asked for still counts as a clean exit.
	stopping atomic.Bool
	wake     chan struct{} // an adopted VM's watcher looks now
	done     chan struct{} // closed once the VM stopped and exitErr is set
	exitErr  error
}

func (inst *instance) poke() {
	select {
	case inst.wake <- struct{}{}:
	default:
	}
}

// runArgs maps a VM's run-time options to `tart run`, as Orchard does.
func runArgs(name string, vm *v1.VM) ([]string, error) {
	args := []string{"run", "--no-graphics"}
	switch {
	case vm.NetBridged != "" && vm.Softnet():
		return nil, errors.New("net-bridged and net-softnet are mutually exclusive")
	case vm.NetBridged != "":
		args = append(args, "--net-bridged="+vm.NetBridged)
	case len(vm.NetSoftnetAllow) > 0 || len(vm.NetSoftnetBlock) > 0:
		if len(vm.NetSoftnetAllow) > 0 {
			args = append(args, "--net-softnet-allow="+strings.Join(vm.NetSoftnetAllow, ","))
		}
		if len(vm.NetSoftnetBlock) > 0 {
			args = append(args, "--net-softnet-block="+strings.Join(vm.NetSoftnetBlock, ","))
		}
	case vm.Softnet():
		args = append(args, "--net-softnet")
	}
	if vm.Nested {
		args = append(args, "--nested")
	}
	if vm.Suspendable {
		args = append(args, "--suspendable")
	}
	for _, dir := range vm.HostDirs {
		if dir.Path == "" {
			return nil, fmt.Errorf("host directory %q has no path", dir.Name)
		}
		if strings.Contains(dir.Name, ":") {
			return nil, fmt.Errorf("host directory name %q contains ':'", dir.Name)
		}
		spec := dir.Path
		if dir.Name != "" {
			spec = dir.Name + ":" + spec
		}
		if dir.ReadOnly {
			spec += ":ro"
		}
		args = append(args, "--dir="+spec)
	}
	return append(args, name), nil
}

// Start runs `tart run` for name as a child process and returns once tart
// holds the VM's lock (the VM is running) or has exited, whichever is
// first; an exit, with tart's stderr, is reported on the channel. A VM
// that already runs in another process is adopted instead.
func (d *Driver) Start(ctx context.Context, name string, vm *v1.VM) (<-chan error, error) {
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("start vm %q: %w", name, err)
	}
	if vm == nil {
		return nil, fmt.Errorf("start vm %q: no VM spec", name)
	}
	args, err := runArgs(name, vm)
	if err != nil {
		return nil, fmt.Errorf("start vm %q: %w", name, err)
	}
	// The worker never calls two methods for one name at once, so whether
	// the VM runs cannot change under us between here and `tart run`.
	holder, err := lockHolder(d.configPath(name))
	adopt := err == nil && holder != 0
	inst := &instance{
		name:        name,
		bridged:     vm.NetBridged != "",
		suspendable: vm.Suspendable,
		wake:        make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	var stderr *lineWriter
	if !adopt {
		inst.child = d.newCmd(d.ctx, args)
		inst.child.Stdout = &lineWriter{onLine: func(line string) {
			d.log.Info("tart run output", "vm", name, "line", line)
		}}
		stderr = &lineWriter{limit: stderrLimit, onLine: func(line string) {
			d.log.Warn("tart run error output", "vm", name, "line", line)
		}}
		inst.child.Stderr = stderr
	}

	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, fmt.Errorf("start vm %q: %w", name, ErrClosed)
	}
	if _, ok := d.instances[name]; ok {
		d.mu.Unlock()
		return nil, fmt.Errorf("start vm %q: already started by this driver", name)
	}
	d.instances[name] = inst
	d.wg.Add(1) // for the goroutine that reports the exit
	d.mu.Unlock()

	exited := make(chan error, 1)
	if adopt {
		d.log.Info("adopting running vm", "vm", name, "pid", holder)
		go d.watchAdopted(inst, exited)
		return exited, nil
	}

	cmd := inst.child
	d.log.Debug("running tart", "args", args)
	if err := cmd.Start(); err != nil {
		d.forget(inst)
		d.wg.Done()
		return nil, fmt.Errorf("start vm %q: %w", name, err)
	}
	go func() {
		defer d.wg.Done()
		err := cmd.Wait()
		d.finish(inst, exited, d.exitError(inst, args, err, stderr.String()))
	}()

	running, err := d.awaitLock(ctx, inst, cmd.Process.Pid)
	if err != nil {
		inst.stopping.Store(true)
		cmd.Process.Signal(os.Interrupt)
		return nil, fmt.Errorf("start vm %q: %w", name, err)
	}
	if running {
		d.log.Info("vm started", "vm", name, "pid", cmd.Process.Pid)
	}
	return exited, nil
}

// awaitLock waits until the child holds the VM's lock (true), or has
// exited (false).
func (d *Driver) awaitLock(ctx context.Context, inst *instance, pid int) (bool, error) {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		holder, err := lockHolder(d.configPath(inst.name))
		if errors.Is(err, errors.ErrUnsupported) || err == nil && holder == pid {
			return true, nil
		}
		select {
		case <-inst.done:
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		case <-tick.C:
		}
	}
}

// exitError turns how `tart run` ended into the exited channel's value.
func (d *Driver) exitError(inst *instance, args []string, err error, stderr string) error {
	if err == nil {
		return nil
	}
	if inst.stopping.Load() {
		// Our own stop: Close's interrupt ends Wait with the context's
		// error, and a VM `tart stop` had to kill dies of SIGKILL.
		var exitErr *exec.ExitError
		if errors.Is(err, context.Canceled) || errors.As(err, &exitErr) && !exitErr.Exited() {
			return nil
		}
	}
	return commandError(context.Background(), args, err, stderr)
}

// finish records that inst stopped and reports it, exactly once.
func (d *Driver) finish(inst *instance, exited chan<- error, err error) {
	inst.exitErr = err
	d.forget(inst)
	if err != nil {
		d.log.Warn("vm exited", "vm", inst.name, "error", err)
	} else {
		d.log.Info("vm stopped", "vm", inst.name)
	}
	exited <- err
	close(exited)
	close(inst.done)
}

func (d *Driver) forget(inst *instance) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.instances[inst.name] == inst {
		delete(d.instances, inst.name)
	}
}

func (d *Driver) instance(name string) *instance {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.instances[name]
}

// watchAdopted reports when an adopted VM stops: it asks every
// PollInterval (or when poked) whether some process still holds the VM's
// lock. Tart does not say how the other process ended, so a stop is nil.
func (d *Driver) watchAdopted(inst *instance, exited chan<- error) {
	defer d.wg.Done()
	tick := time.NewTicker(d.opts.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			d.finish(inst, exited, ErrClosed)
			return
		case <-tick.C:
		case <-inst.wake:
		}
		pid, err := lockHolder(d.configPath(inst.name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("cannot tell whether adopted vm runs", "vm", inst.name, "error", err)
			continue
		}
		if pid == 0 {
			d.finish(inst, exited, nil)
			return
		}
	}
}

// running reports whether some process holds name's lock; where locks
// cannot be inspected it assumes so.
func (d *Driver) running(name string) bool {
	pid, err := lockHolder(d.configPath(name))
	if errors.Is(err, errors.ErrUnsupported) {
		return true
	}
	return err == nil && pid != 0
}

// Stop runs `tart stop --timeout N` (SIGINT, then SIGKILL after N
// seconds) and waits for the VM to be gone. A VM that is not running is
// not an error; one that does not exist is (ErrNotExist).
func (d *Driver) Stop(ctx context.Context, name string) error {
	inst := d.instance(name)
	if inst != nil {
		inst.stopping.Store(true)
	}
	timeout := strconv.Itoa(int((d.opts.StopTimeout + time.Second - 1) / time.Second))
	_, err := d.command(ctx, nil, "stop", "--timeout", timeout, name)
	switch {
	case err == nil:
	case errors.Is(err, ErrNotRunning):
		// Nothing holds the lock: a child of ours is on its way out, or
		// never got that far; make sure it ends.
		if inst != nil && inst.child != nil {
			inst.child.Process.Signal(os.Interrupt)
		}
	default:
		if inst != nil {
			inst.stopping.Store(false)
		}
		return fmt.Errorf("stop vm %q: %w", name, err)
	}
	if inst == nil {
		return nil
	}
	inst.poke()
	select {
	case <-inst.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop vm %q: %w", name, ctx.Err())
	}
}

// Suspend runs `tart suspend` (the VM saves its state and stops), waits
// for the VM to stop and checks that tart now reports it suspended. A VM
// this driver started without suspendable is refused: Tart would stop it
// without saving anything.
func (d *Driver) Suspend(ctx context.Context, name string) error {
	inst := d.instance(name)
	if inst != nil && inst.child != nil && !inst.suspendable {
		return fmt.Errorf("suspend vm %q: it was started without suspendable", name)
	}
	if inst != nil {
		inst.stopping.Store(true)
	}
	if _, err := d.command(ctx, nil, "suspend", name); err != nil {
		if inst != nil {
			inst.stopping.Store(false)
		}
		return fmt.Errorf("suspend vm %q: %w", name, err)
	}
	if inst != nil {
		inst.poke()
		select {
		case <-inst.done:
		case <-ctx.Done():
			return fmt.Errorf("suspend vm %q: %w", name, ctx.Err())
		}
		if inst.exitErr != nil {
			return fmt.Errorf("suspend vm %q: %w", name, inst.exitErr)
		}
	} else if err := d.awaitUnlocked(ctx, name); err != nil {
		return fmt.Errorf("suspend vm %q: %w", name, err)
	}
	state, err := d.state(ctx, name)
	if err != nil {
		return fmt.Errorf("suspend vm %q: %w", name, err)
	}
	if state != "suspended" {
		return fmt.Errorf("suspend vm %q: it stopped without saving its state (tart reports %q)", name, state)
	}
	return nil
}

// awaitUnlocked waits for a VM this driver does not track to stop.
func (d *Driver) awaitUnlocked(ctx context.Context, name string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for d.running(name) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// Delete stops the VM if it runs and deletes it; a VM that does not exist
// is not an error.
func (d *Driver) Delete(ctx context.Context, name string) error {
	if err := d.Stop(ctx, name); err != nil && !errors.Is(err, ErrNotExist) {
		return fmt.Errorf("delete vm %q: %w", name, err)
	}
	if _, err := d.command(ctx, nil, "delete", name); err != nil && !errors.Is(err, ErrNotExist) {
		return fmt.Errorf("delete vm %q: %w", name, err)
	}
	return nil
}
