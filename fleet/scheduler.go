package fleet

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// runScheduler places pending VMs whenever the dispatcher says something
// changed that could make room: a new VM, a freed slot, a new or resumed
// worker. Kicks coalesce, so a burst of creates costs a few passes.
func (c *Controller) runScheduler() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.kickScheduler:
			c.schedule()
		}
	}
}

// placement is one decision: vm goes to worker.
type placement struct {
	vm     *v1.VM
	worker *v1.Worker
}

// candidate is a worker as the planner sees it: what is left of its
// resources and how many VMs it runs.
type candidate struct {
	w     *v1.Worker
	free  v1.Resources
	count int
	// skip says why the worker takes no VM at all ("offline", "paused"),
	// "" when it is eligible.
	skip string
}

// consumes reports whether a placed VM holds its worker's resources:
// failed VMs and VMs stopped on purpose give them back.
func consumes(vm *v1.VM) bool {
	if vm.Worker == "" || vm.Status == v1.VMStatusFailed {
		return false
	}
	if vm.PowerState == v1.PowerStateStopped || vm.PowerState == v1.PowerStateSuspended {
		return vm.Condition(v1.ConditionRunning) == v1.ConditionTrue
	}
	return true
}

func unplaced(vm *v1.VM) bool { return vm.Status == v1.VMStatusPending && vm.Worker == "" }

// plan places pending VMs, oldest first, each on the best worker that
// fits, and says for each VM that fits nowhere why. It is a pure function
// of its inputs; usage is derived from the VMs every time, so it can never
// leak a slot.
func plan(vms []*v1.VM, workers []*v1.Worker, connected func(name string) bool, profile v1.SchedulerProfile) ([]placement, map[string]string) {
	byName := make(map[string]*candidate, len(workers))
	cands := make([]*candidate, 0, len(workers))
	for _, w := range workers {
		c := &candidate{w: w, free: maps.Clone(w.Resources)}
		if c.free == nil {
			c.free = v1.Resources{}
		}
		switch {
		case !connected(w.Name):
			c.skip = "offline"
		case w.SchedulingPaused:
			c.skip = "paused"
		}
		byName[w.Name] = c
		cands = append(cands, c)
	}
	var pending []*v1.VM
	for _, vm := range vms {
		if unplaced(vm) {
			pending = append(pending, vm)
			continue
		}
		if c, ok := byName[vm.Worker]; ok && consumes(vm) {
			c.free.Sub(vm.Resources)
			c.count++
		}
	}
	slices.SortStableFunc(pending, func(a, b *v1.VM) int {
		if c := queuedAt(a).Compare(queuedAt(b)); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})

	var placements []placement
	reasons := map[string]string{}
	for _, vm := range pending {
		var best *candidate
		d := demandOf(vm)
		for _, c := range cands {
			if c.takes(vm, d) && (best == nil || better(c, best, profile)) {
				best = c
			}
		}
		if best == nil {
			// Only now spend the time to say why, worker by worker.
			var why rejections
			for _, c := range cands {
				why.add(c.rejects(vm))
			}
			reasons[vm.Name] = why.message(len(cands))
			continue
		}
		best.free.Sub(vm.Resources)
		best.count++
		placements = append(placements, placement{vm: vm, worker: best.w})
	}
	return placements, reasons
}

// queuedAt is when a VM started waiting: its creation, or its last
// restart.
func queuedAt(vm *v1.VM) time.Time {
	if vm.RestartedAt.After(vm.CreatedAt) {
		return vm.RestartedAt
	}
	return vm.CreatedAt
}

// better reports whether a beats b under profile; names break ties so
// plans are deterministic.
func better(a, b *candidate, profile v1.SchedulerProfile) bool {
	if a.count != b.count {
		if profile == v1.SchedulerProfileDistributeLoad {
			return a.count < b.count
		}
		return a.count > b.count
	}
	return a.w.Name < b.w.Name
}

// demand is a VM's resources and labels as slices: the planner checks them
// against every worker, and ranging over small slices is far cheaper than
// ranging over maps.
type demand struct {
	resources []need
	labels    [][2]string
}

type need struct {
	name   string
	amount uint64
}

func demandOf(vm *v1.VM) demand {
	var d demand
	for name, amount := range vm.Resources {
		d.resources = append(d.resources, need{name, amount})
	}
	for k, v := range vm.Labels {
		d.labels = append(d.labels, [2]string{k, v})
	}
	return d
}

// takes reports whether c can take vm; rejects says why not.
func (c *candidate) takes(vm *v1.VM, d demand) bool {
	if c.skip != "" || c.w.Driver != v1.DriverLocal && (c.w.Arch != vm.Arch || c.w.Runtime != vm.Runtime) {
		return false
	}
	for _, l := range d.labels {
		if v, ok := c.w.Labels[l[0]]; !ok || v != l[1] {
			return false
		}
	}
	for _, r := range d.resources {
		if c.free[r.name] < r.amount {
			return false
		}
	}
	return true
}

// reason is why a worker turns a VM down, phrased for one worker and for
// several: "1 worker lacks label gpu=true", "3 workers lack label gpu=true".
type reason struct{ one, many string }

func because(format string, args ...any) reason {
	verbs := strings.NewReplacer("{is}", "is", "{lacks}", "lacks", "{has}", "has", "{runs}", "runs")
	plurals := strings.NewReplacer("{is}", "are", "{lacks}", "lack", "{has}", "have", "{runs}", "run")
	s := fmt.Sprintf(format, args...)
	return reason{verbs.Replace(s), plurals.Replace(s)}
}

// rejects says why c cannot take vm; takes says whether it can.
func (c *candidate) rejects(vm *v1.VM) reason {
	if c.skip != "" {
		return because("{is} %s", c.skip)
	}
	// A local-driver worker stands in for any platform.
	if c.w.Driver != v1.DriverLocal && (c.w.Arch != vm.Arch || c.w.Runtime != vm.Runtime) {
		return because("{runs} %s/%s, not %s/%s", orUnknown(string(c.w.Arch)), orUnknown(string(c.w.Runtime)), vm.Arch, vm.Runtime)
	}
	if missing, ok := c.w.Labels.Contains(vm.Labels); !ok {
		return because("{lacks} label %s", missing)
	}
	missing, _ := c.free.Fits(vm.Resources)
	return because("{has} too little %s free (the VM needs %d)", missing, vm.Resources[missing])
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// rejections counts why workers turned a VM down.
type rejections struct {
	order  []reason
	counts map[reason]int
}

func (r *rejections) add(why reason) {
	if r.counts == nil {
		r.counts = map[reason]int{}
	}
	if r.counts[why] == 0 {
		r.order = append(r.order, why)
	}
	r.counts[why]++
}

// message explains, in the VM's status_message, why it waits:
// "waiting for a worker that fits: 2 workers are offline, 1 worker lacks
// label gpu=true".
func (r *rejections) message(workers int) string {
	if workers == 0 {
		return "waiting for a worker: none is registered"
	}
	parts := make([]string, 0, len(r.order))
	for _, why := range r.order {
		if n := r.counts[why]; n == 1 {
			parts = append(parts, "1 worker "+why.one)
		} else {
			parts = append(parts, fmt.Sprintf("%d workers %s", n, why.many))
		}
	}
	return "waiting for a worker that fits: " + strings.Join(parts, ", ")
}

// schedule runs one pass: plan from a snapshot, then commit the placements
// in transactions that re-check each VM and worker, so that a VM deleted
// or changed meanwhile, or a worker paused, is left for the next pass.
func (c *Controller) schedule() {
	start := time.Now()
	vms := c.store.VMs(nil)
	if !slices.ContainsFunc(vms, unplaced) {
		return
	}
	workers := c.store.Workers()
	c.mu.Lock()
	online := make(map[string]bool, len(c.sessions))
	for name := range c.sessions {
		online[name] = true
	}
	c.mu.Unlock()
	placements, reasons := plan(vms, workers, func(name string) bool { return online[name] }, c.store.Settings().Profile())

	now := time.Now().UTC()
	err := c.updateEach(len(placements), func(tx *store.Tx, i int) {
		p := placements[i]
		vm, ok := tx.VM(p.vm.Name)
		if !ok || vm.UID != p.vm.UID || vm.RestartCount != p.vm.RestartCount || !unplaced(vm) {
			return
		}
		w, ok := tx.Worker(p.worker.Name)
		if !ok || w.Version != p.worker.Version || w.SchedulingPaused {
			return
		}
		vm.Worker = w.Name
		vm.ScheduledAt = now
		vm.StatusMessage = ""
		vm.SetCondition(v1.ConditionScheduled, true)
		vm.AssignedCPU = firstNonZero(vm.CPU, w.DefaultCPU, DefaultCPU)
		vm.AssignedMemory = firstNonZero(vm.Memory, w.DefaultMemory, DefaultMemory)
		tx.PutVM(vm)
	})
	if err != nil {
		c.logger.Error("commit VM placements", "err", err)
	}
	for _, p := range placements {
		if vm, ok := c.store.VM(p.vm.Name); ok && vm.UID == p.vm.UID && vm.Worker == p.worker.Name && vm.ScheduledAt.Equal(now) {
			c.metrics.placements.Inc()
			c.metrics.schedulingLatency.Observe(now.Sub(queuedAt(vm)).Seconds())
		}
	}

	names := slices.Sorted(maps.Keys(reasons))
	err = c.updateEach(len(names), func(tx *store.Tx, i int) {
		vm, ok := tx.VM(names[i])
		if !ok || !unplaced(vm) || vm.StatusMessage == reasons[names[i]] {
			return
		}
		vm.StatusMessage = reasons[names[i]]
		tx.PutVM(vm)
	})
	if err != nil {
		c.logger.Error("record why VMs wait", "err", err)
	}
	c.metrics.schedulerPass.Observe(time.Since(start).Seconds())
}

func firstNonZero(vs ...uint64) uint64 {
	for _, v := range vs {
		if v != 0 {
			return v
		}
	}
	return 0
}
