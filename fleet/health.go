package fleet

import (
	"time"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Reasons a VM fails without its worker saying so.
const (
	reasonWorkerGone    = "VM is assigned to a worker that doesn't exist anymore"
	reasonWorkerOffline = "VM is assigned to a worker that lost connection with the controller"
)

// runHealth fails the VMs of workers that have been away longer than the
// offline timeout and restarts failed OnFailure VMs after the restart
// delay. It sleeps until the next such deadline or a kick.
func (c *Controller) runHealth() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := c.checkHealth(time.Now())
		timer.Reset(max(time.Until(next), time.Millisecond))
		select {
		case <-c.ctx.Done():
			return
		case <-c.kickHealth:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}

// checkHealth does what is due at now and returns when to look again.
func (c *Controller) checkHealth(now time.Time) (next time.Time) {
	next = now.Add(time.Hour)
	soonest := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}

	offline := map[string]bool{}
	workers := map[string]bool{}
	for _, w := range c.store.Workers() {
		workers[w.Name] = true
		deadline := c.seen(w, now).Add(c.cfg.WorkerOfflineTimeout)
		if !deadline.After(now) {
			offline[w.Name] = true
		} else if !c.connected(w.Name) {
			soonest(deadline)
		}
	}

	type failure struct{ name, uid, reason string }
	var failures []failure
	var restarts []string
	for _, vm := range c.store.VMs(nil) {
		switch {
		case vm.Status != v1.VMStatusFailed && vm.Worker != "" && !workers[vm.Worker]:
			failures = append(failures, failure{vm.Name, vm.UID, reasonWorkerGone})
		case vm.Status != v1.VMStatusFailed && offline[vm.Worker]:
			failures = append(failures, failure{vm.Name, vm.UID, reasonWorkerOffline})
		case vm.Status == v1.VMStatusFailed && vm.RestartPolicy == v1.RestartPolicyOnFailure:
			due := c.failedSince(vm.UID, now).Add(c.cfg.RestartDelay)
			if due.After(now) {
				soonest(due)
			} else {
				restarts = append(restarts, vm.Name)
			}
		}
	}
	if len(failures) == 0 && len(restarts) == 0 {
		return next
	}

	err := c.updateEach(len(failures)+len(restarts), func(tx *store.Tx, i int) {
		if i < len(failures) {
			f := failures[i]
			vm, ok := tx.VM(f.name)
			if !ok || vm.UID != f.uid || vm.Status == v1.VMStatusFailed {
				return
			}
			vm.Status = v1.VMStatusFailed
			vm.StatusMessage = f.reason
			vm.SetCondition(v1.ConditionRunning, false)
			tx.PutVM(vm)
			c.logger.Info("VM failed", "vm", vm.Name, "worker", vm.Worker, "reason", f.reason)
			return
		}
		vm, ok := tx.VM(restarts[i-len(failures)])
		if !ok || vm.Status != v1.VMStatusFailed || vm.RestartPolicy != v1.RestartPolicyOnFailure {
			return
		}
		restart(vm, now)
		tx.PutVM(vm)
		c.logger.Info("VM restarted", "vm", vm.Name, "restart_count", vm.RestartCount)
	})
	if err != nil {
		// Look again soon: what could not be written is still due.
		c.logger.Error("record VM health", "err", err)
		soonest(now.Add(time.Second))
	}
	c.metrics.restarts.Add(float64(len(restarts)))
	return next
}

// failedSince returns when the VM was first seen failed. VMs found failed
// at start count from the start.
func (c *Controller) failedSince(uid string, now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.failedAt[uid]
	if !ok {
		t = now
		c.failedAt[uid] = t
	}
	return t
}

// restart turns a failed VM back into a pending one, as a new incarnation
// that may land on another worker.
func restart(vm *v1.VM, now time.Time) {
	vm.Status = v1.VMStatusPending
	vm.StatusMessage = ""
	vm.Worker = ""
	vm.AssignedCPU, vm.AssignedMemory = 0, 0
	vm.RestartedAt = now.UTC()
	vm.RestartCount++
	vm.ScheduledAt, vm.StartedAt = time.Time{}, time.Time{}
	vm.PowerState = v1.PowerStateRunning
	vm.ImageFQN = ""
	vm.ObservedGeneration = 0
	vm.LocalName = v1.LocalNameFor(vm.Name, vm.UID, vm.RestartCount)
	vm.TartName = vm.LocalName
	vm.Conditions = []v1.Condition{{Type: v1.ConditionScheduled, State: v1.ConditionFalse}}
}
