package local

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// instance is one local VM.
type instance struct {
	name     string
	dir      string
	marker   string // markerVar=<driver id>/<name>, in every process's environment
	username string
	password string

	mu         sync.Mutex
	srv        *server // nil while stopped
	addr       netip.AddrPort
	exited     chan error
	groups     map[int]bool  // process groups led by the VM's commands
	ranCommand bool          // since the last stop; without, a stop skips the process scan
	stopping   chan struct{} // closed when the stop in progress completes
}

// How long a stop lets commands be.
const (
	// guestShutdownSettle is how long a guest shutdown lets running
	// commands end by themselves: a script whose last line is "sudo
	// shutdown -h now" then reports its own exit status instead of being
	// terminated by the shutdown it asked for.
	guestShutdownSettle = 2 * time.Second
	// exitReportTimeout bounds the wait for the exit of stopped commands
	// to reach their clients before the connections close; a client that
	// reads nothing would otherwise hold the stop.
	exitReportTimeout = 2 * time.Second
)

// stopping is a stop in progress: the server accepts nothing new, the
// processes are still to end.
type stopping struct {
	inst   *instance
	srv    *server
	addr   netip.AddrPort
	exited chan error
	groups map[int]bool
	ran    bool
	done   chan struct{}
}

// stop stops inst and returns once its processes are gone. A stop already
// in progress (a guest shutdown) is waited for. Commands get up to settle
// to end by themselves before they are signalled.
func (d *Driver) stop(ctx context.Context, inst *instance, settle time.Duration) error {
	st, wait := d.beginStop(inst)
	if wait != nil {
		select {
		case <-wait:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if st == nil {
		return d.endLeftovers(ctx, inst)
	}
	if settle > 0 {
		st.srv.waitCommandsReported(settle)
	}
	var err error
	if st.ran {
		err = d.reaper.end(ctx, processMatch{marker: inst.marker, groups: st.groups})
	}
	d.finishStop(st, err == nil)
	return err
}

// endLeftovers ends the processes of a stopped VM whose stop could not
// end them all (one stuck in the kernel, say), so that Stop and Delete try
// again.
func (d *Driver) endLeftovers(ctx context.Context, inst *instance) error {
	inst.mu.Lock()
	ran := inst.ranCommand
	groups := maps.Clone(inst.groups)
	inst.mu.Unlock()
	if !ran {
		return nil
	}
	if err := d.reaper.end(ctx, processMatch{marker: inst.marker, groups: groups}); err != nil {
		return err
	}
	inst.mu.Lock()
	if inst.srv == nil && inst.stopping == nil {
		inst.ranCommand = false
		clear(inst.groups)
	}
	inst.mu.Unlock()
	return nil
}

// beginStop stops inst's server from accepting connections and starting
// commands; its connections stay until finishStop. It returns nil, nil
// when inst is not running, and the done channel of the stop in progress
// when there is one.
func (d *Driver) beginStop(inst *instance) (*stopping, chan struct{}) {
	inst.mu.Lock()
	if inst.stopping != nil {
		wait := inst.stopping
		inst.mu.Unlock()
		return nil, wait
	}
	if inst.srv == nil {
		inst.mu.Unlock()
		return nil, nil
	}
	st := &stopping{
		inst:   inst,
		srv:    inst.srv,
		addr:   inst.addr,
		exited: inst.exited,
		groups: maps.Clone(inst.groups),
		ran:    inst.ranCommand,
		done:   make(chan struct{}),
	}
	inst.srv = nil
	inst.exited = nil
	inst.stopping = st.done
	inst.mu.Unlock()

	st.srv.stopAccepting()
	return st, nil
}

// finishStop closes the server's connections, waits for its goroutines
// (they end once the processes have: a session waits for its command) and
// reports the stop on the exited channel.
func (d *Driver) finishStop(st *stopping, processesGone bool) {
	if processesGone {
		// Let the clients learn how their commands ended.
		st.srv.waitCommandsReported(exitReportTimeout)
	}
	st.srv.closeConns()
	if processesGone {
		st.srv.wait()
	} else {
		d.log.Warn("vm stopped with processes still running", "vm", st.inst.name)
	}
	d.mu.Lock()
	if d.inUse[st.addr.Addr()] == st.inst.name {
		delete(d.inUse, st.addr.Addr())
	}
	d.mu.Unlock()

	inst := st.inst
	inst.mu.Lock()
	inst.stopping = nil
	if processesGone {
		// Otherwise the next stop tries again.
		inst.ranCommand = false
		clear(inst.groups)
	}
	inst.mu.Unlock()
	st.exited <- nil
	close(st.exited)
	close(st.done)
	d.log.Debug("vm stopped", "vm", inst.name)
}

// guestShutdown is called when a shim in the VM asked for a shutdown.
func (d *Driver) guestShutdown(name string) {
	d.mu.Lock()
	inst, ok := d.vms[name]
	closed := d.closed
	d.mu.Unlock()
	if !ok || closed {
		return
	}
	d.log.Info("guest shutdown requested", "vm", name)
	// The shim's own process is among those to end, and the stop takes up
	// to the SIGTERM grace: do it beside the FIFO reader.
	go func() {
		if err := d.stop(context.Background(), inst, guestShutdownSettle); err != nil {
			d.log.Warn("guest shutdown", "vm", name, "err", err)
		}
	}()
}

// startCommand calls start, which starts a command of inst and returns
// its pid, unless srv is no longer inst's server (the VM is stopping).
// Every command leads a process group of its own; it is recorded so that
// stopping the VM ends the group.
func (inst *instance) startCommand(srv *server, start func() (pid int, err error)) (int, error) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.srv != srv {
		return 0, errors.New("vm is stopping")
	}
	inst.pruneGroups()
	pid, err := start()
	if err != nil {
		return 0, err
	}
	inst.groups[pid] = true
	inst.ranCommand = true
	// Counted under inst.mu, so a stop (which begins under it) never
	// misses a command; the session's waiter marks it done.
	srv.commands.Add(1)
	return pid, nil
}

// commandEnded forgets the group led by a command that exited, unless
// (where processes cannot be found by their environment) other processes
// still belong to it.
func (inst *instance) commandEnded(pgid int) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if keepOrphanedGroups && syscall.Kill(-pgid, 0) == nil {
		return
	}
	delete(inst.groups, pgid)
}

// pruneGroups drops the groups that have no process left, so that a group
// id the system reused is never signalled.
func (inst *instance) pruneGroups() {
	for g := range inst.groups {
		if syscall.Kill(-g, 0) != nil {
			delete(inst.groups, g)
		}
	}
}

// environment is what every command of inst starts with; nothing comes
// from the worker's own environment but PATH.
func (d *Driver) environment(inst *instance, term string, accepted []string) []string {
	env := []string{
		"HOME=" + inst.dir,
		"USER=" + inst.username,
		"LOGNAME=" + inst.username,
		"SHELL=/bin/sh",
		"PATH=" + filepath.Join(inst.dir, shimDir) + ":" + d.hostPath,
		inst.marker,
	}
	if term != "" {
		env = append(env, "TERM="+term)
	}
	return append(env, accepted...)
}
