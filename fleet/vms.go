package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Defaults for what a create request leaves out, the values Orchard's CLI
// sends: the Cirrus Labs images' credentials, and a macOS guest on Apple
// Silicon.
const (
	DefaultUsername = "admin"
	DefaultPassword = "admin"
	// DefaultCPU and DefaultMemory are assigned when neither the VM nor its
	// worker says otherwise.
	DefaultCPU    = 4
	DefaultMemory = 8192
)

// MaxVMSize bounds a VM's JSON, startup script included, so that a VM
// always fits in one store transaction and one tunnel message.
const MaxVMSize = 1 << 20

// maxEventsPerAppend bounds one append of log lines.
const maxEventsPerAppend = 10000

// CreateVM validates vm, fills in what it leaves out and stores it as a
// new pending VM, which the scheduler then places. It returns the VM as
// stored.
func (c *Controller) CreateVM(ctx context.Context, vm *v1.VM) (*v1.VM, error) {
	if err := v1.ValidateName("VM", vm.Name); err != nil {
		return nil, errorf(http.StatusPreconditionFailed, "%s", err)
	}
	if strings.TrimSpace(vm.Image) == "" {
		return nil, errorf(http.StatusPreconditionFailed, "VM image is empty")
	}
	vm = vm.Clone()
	if vm.RestartPolicy == "" {
		vm.RestartPolicy = v1.RestartPolicyNever
	}
	if !vm.RestartPolicy.Valid() {
		return nil, errorf(http.StatusPreconditionFailed, "unsupported restart policy: %q (want Never or OnFailure)", vm.RestartPolicy)
	}
	if vm.ImagePullPolicy == "" {
		vm.ImagePullPolicy = v1.ImagePullPolicyIfNotPresent
	}
	if !vm.ImagePullPolicy.Valid() {
		return nil, errorf(http.StatusPreconditionFailed, "unsupported image pull policy: %q (want IfNotPresent or Always)", vm.ImagePullPolicy)
	}
	if vm.OS == "" {
		vm.OS = v1.OSDarwin
	}
	if vm.Arch == "" {
		vm.Arch = v1.ArchARM64
	}
	if vm.Runtime == "" {
		vm.Runtime = v1.RuntimeTart
	}
	if vm.Username == "" {
		vm.Username = DefaultUsername
	}
	if vm.Password == "" {
		vm.Password = DefaultPassword
	}
	if vm.OS == v1.OSDarwin && vm.Runtime == v1.RuntimeTart {
		if vm.Resources == nil {
			vm.Resources = v1.Resources{}
		}
		if _, set := vm.Resources[v1.ResourceTartVMs]; !set {
			vm.Resources[v1.ResourceTartVMs] = 1
		}
	}
	if vm.Softnet() {
		vm.NetSoftnet, vm.NetSoftnetKebab = true, true
	}

	now := time.Now().UTC()
	vm.Status = v1.VMStatusPending
	vm.StatusMessage = ""
	vm.Worker = ""
	vm.UID = newUUID()
	vm.CreatedAt = now
	vm.PowerState = v1.PowerStateRunning
	vm.Generation, vm.ObservedGeneration = 0, 0
	vm.RestartCount, vm.RestartedAt = 0, time.Time{}
	vm.ScheduledAt, vm.StartedAt = time.Time{}, time.Time{}
	vm.AssignedCPU, vm.AssignedMemory = 0, 0
	vm.ImageFQN = ""
	vm.Conditions = []v1.Condition{{Type: v1.ConditionScheduled, State: v1.ConditionFalse}}
	vm.LocalName = v1.LocalNameFor(vm.Name, vm.UID, 0)
	vm.TartName = vm.LocalName
	if encoded, err := json.Marshal(vm); err != nil || len(encoded) > MaxVMSize {
		return nil, errorf(http.StatusRequestEntityTooLarge, "the VM is %d bytes as JSON, over the %d-byte limit (a large startup script?)", len(encoded), MaxVMSize)
	}

	err := c.store.Update(func(tx *store.Tx) error {
		if _, exists := tx.VM(vm.Name); exists {
			return errorf(http.StatusConflict, "VM with this name already exists")
		}
		if err := checkHostDirs(vm.HostDirs, tx.Settings().HostDirPolicies); err != nil {
			return err
		}
		tx.PutVM(vm)
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.metrics.vmsCreated.Inc()
	return vm.Clone(), nil // vm itself now belongs to the store
}

// checkHostDirs allows a host directory only under a cluster policy's
// prefix, read-only where the policy says so. No policy, no host
// directories.
func checkHostDirs(dirs []v1.HostDir, policies []v1.HostDirPolicy) error {
	for _, d := range dirs {
		if d.Name == "" || !filepath.IsAbs(d.Path) {
			return errorf(http.StatusBadRequest, "host directory %q: needs a name and an absolute path", d.Name)
		}
		under := func(p v1.HostDirPolicy) bool {
			prefix, path := filepath.Clean(p.PathPrefix), filepath.Clean(d.Path)
			return path == prefix || strings.HasPrefix(path, strings.TrimSuffix(prefix, "/")+"/")
		}
		if slices.ContainsFunc(policies, func(p v1.HostDirPolicy) bool { return under(p) && (!p.ReadOnly || d.ReadOnly) }) {
			continue
		}
		if slices.ContainsFunc(policies, under) {
			return errorf(http.StatusBadRequest, "host directory %q (%s) may only be shared read-only under the cluster's policy: add :ro", d.Name, d.Path)
		}
		return errorf(http.StatusBadRequest, "host directory %q (%s) is not allowed by the cluster's host directory policies (orchard cluster-settings get shows them)", d.Name, d.Path)
	}
	return nil
}

// VM returns the VM named name. Do not modify the result.
func (c *Controller) VM(name string) (*v1.VM, error) {
	vm, ok := c.store.VM(name)
	if !ok {
		return nil, notFound("VM", name)
	}
	return vm, nil
}

// VMs returns the VMs keep accepts (all when nil), by name. Do not modify
// the results.
func (c *Controller) VMs(keep func(*v1.VM) bool) []*v1.VM { return c.store.VMs(keep) }

// UpdateVMSpec applies the changeable part of a VM's spec, as PUT
// /v1/vms/{name} does: softnet settings, suspendable and power state.
// Other fields of spec are ignored, as in Orchard; os, arch and runtime
// must be empty or unchanged. A change bumps the generation, which the
// worker acknowledges in observedGeneration once applied.
func (c *Controller) UpdateVMSpec(ctx context.Context, name string, spec *v1.VM) (*v1.VM, error) {
	var out *v1.VM
	err := c.store.Update(func(tx *store.Tx) error {
		vm, ok := tx.VM(name)
		if !ok {
			return notFound("VM", name)
		}
		if vm.Terminal() {
			return errorf(http.StatusPreconditionFailed, "cannot update VM in a terminal state")
		}
		for _, f := range []struct {
			name      string
			have, got string
		}{{"os", string(vm.OS), string(spec.OS)}, {"arch", string(vm.Arch), string(spec.Arch)}, {"runtime", string(vm.Runtime), string(spec.Runtime)}} {
			if f.got != "" && f.got != f.have {
				return errorf(http.StatusPreconditionFailed, "cannot change the VM's %s from %q to %q", f.name, f.have, f.got)
			}
		}
		if spec.Suspendable != vm.Suspendable {
			return errorf(http.StatusPreconditionFailed, "suspendable cannot be changed after the VM is created")
		}
		power := spec.PowerState
		if power == "" {
			power = vm.PowerState
		}
		if !power.Valid() {
			return errorf(http.StatusPreconditionFailed, "unsupported power state %q (want running, stopped or suspended)", power)
		}
		if power != vm.PowerState {
			if vm.PowerState != v1.PowerStateRunning {
				return errorf(http.StatusPreconditionFailed, "cannot change the power state of a VM that is %s", vm.PowerState)
			}
			if power == v1.PowerStateSuspended && !vm.Suspendable {
				return errorf(http.StatusPreconditionFailed, "cannot suspend a VM that is not suspendable")
			}
		}
		softnet := spec.Softnet()
		changed := power != vm.PowerState || softnet != vm.Softnet() ||
			!slices.Equal(spec.NetSoftnetAllow, vm.NetSoftnetAllow) || !slices.Equal(spec.NetSoftnetBlock, vm.NetSoftnetBlock)
		if !changed {
			out = vm
			return nil
		}
		vm.PowerState = power
		vm.NetSoftnet, vm.NetSoftnetKebab = softnet, softnet
		vm.NetSoftnetAllow = slices.Clone(spec.NetSoftnetAllow)
		vm.NetSoftnetBlock = slices.Clone(spec.NetSoftnetBlock)
		vm.Generation++
		tx.PutVM(vm)
		out = vm.Clone()
		return nil
	})
	return out, err
}

// DeleteVM deletes the VM named name; its worker then stops and removes
// the instance.
func (c *Controller) DeleteVM(ctx context.Context, name string) error {
	return c.store.Update(func(tx *store.Tx) error {
		if _, ok := tx.VM(name); !ok {
			return notFound("VM", name)
		}
		tx.DeleteVM(name)
		return nil
	})
}

// VMEvents returns a page of the VM's log.
func (c *Controller) VMEvents(name string, q store.EventsQuery) ([]v1.Event, string, error) {
	vm, err := c.VM(name)
	if err != nil {
		return nil, "", err
	}
	events, next, err := c.store.Events(vm.UID, q)
	if err == store.ErrBadCursor {
		return nil, "", errorf(http.StatusBadRequest, "invalid cursor")
	}
	return events, next, err
}

// AppendVMEvents appends lines to the VM's log.
func (c *Controller) AppendVMEvents(name string, events []v1.Event) error {
	if len(events) > maxEventsPerAppend {
		return errorf(http.StatusRequestEntityTooLarge, "%d events in one request; at most %d", len(events), maxEventsPerAppend)
	}
	vm, err := c.VM(name)
	if err != nil {
		return err
	}
	chunks := slices.Collect(slices.Chunk(events, 100))
	return c.updateEach(len(chunks), func(tx *store.Tx, i int) {
		if cur, ok := tx.VM(name); ok && cur.UID == vm.UID {
			tx.AppendEvents(cur, chunks[i])
		}
	})
}

// WaitVM waits until done accepts the VM named name, and returns it. done
// sees nil when the VM is deleted. It reacts to the change feed, so it
// returns as soon as the VM changes; ctx bounds the wait.
func (c *Controller) WaitVM(ctx context.Context, name string, done func(vm *v1.VM) (bool, error)) (*v1.VM, error) {
	sub := c.store.Subscribe()
	defer func() { sub.Close() }() // sub may be replaced below
	for {
		vm, _ := c.store.VM(name)
		if ok, err := done(vm); err != nil || ok {
			return vm, err
		}
		select {
		case <-ctx.Done():
			return vm, ctx.Err()
		case <-c.ctx.Done():
			return vm, errClosed
		case <-sub.Ready():
			// Drain whatever arrived; the loop re-reads the current state.
			if _, ok := sub.Drain(); !ok {
				sub.Close()
				sub = c.store.Subscribe()
			}
		}
	}
}

// running is a WaitVM condition: the VM runs; it is gone or failed is an
// error.
func running(name string) func(*v1.VM) (bool, error) {
	return func(vm *v1.VM) (bool, error) {
		switch {
		case vm == nil:
			return false, notFound("VM", name)
		case vm.Status == v1.VMStatusFailed:
			return false, errorf(http.StatusExpectationFailed, "VM is in a terminal state 'failed': %s", vm.StatusMessage)
		default:
			return vm.Status == v1.VMStatusRunning && vm.Condition(v1.ConditionRunning) != v1.ConditionFalse, nil
		}
	}
}

// waitRunning waits up to wait for the VM to run. A VM that does not run
// in time is a 408, as in Orchard.
func (c *Controller) waitRunning(ctx context.Context, name string, wait time.Duration) (*v1.VM, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	vm, err := c.WaitVM(ctx, name, running(name))
	if err == context.DeadlineExceeded {
		where := "any worker"
		if vm != nil && vm.Worker != "" {
			where = fmt.Sprintf("'%s' worker", vm.Worker)
		}
		return nil, errorf(http.StatusRequestTimeout, "VM is not running on %s", where)
	}
	return vm, err
}
