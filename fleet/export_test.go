package fleet

import (
	"fmt"
	"time"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// SeedForBenchmark stores VMs made from template, running on workers
// that it stores too (or pending, when workers is 0), in large
// transactions: the state of a big fleet without the time to build it
// through the API.
func SeedForBenchmark(c *Controller, template *v1.VM, vms, workers int) error {
	const batch = 500
	for start := 0; start < max(vms, workers); start += batch {
		err := c.store.Update(func(tx *store.Tx) error {
			for i := start; i < min(start+batch, workers); i++ {
				tx.PutWorker(&v1.Worker{Resources: v1.Resources{v1.ResourceTartVMs: 20}, Arch: v1.ArchARM64, Runtime: v1.RuntimeTart,
					Driver: v1.DriverLocal, MachineID: fmt.Sprint(i), LastSeen: time.Now(), Meta: v1.Meta{Name: fmt.Sprintf("w%04d", i), CreatedAt: time.Now()}})
			}
			for i := start; i < min(start+batch, vms); i++ {
				vm := template.Clone()
				vm.Name = fmt.Sprintf("vm-%05d", i)
				vm.UID = newUUID()
				vm.LocalName = v1.LocalNameFor(vm.Name, vm.UID, 0)
				if workers > 0 {
					vm.Status = v1.VMStatusRunning
					vm.Worker = fmt.Sprintf("w%04d", i%workers)
				}
				tx.PutVM(vm)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// DeleteAllForBenchmark deletes every VM in one transaction.
func DeleteAllForBenchmark(c *Controller) error {
	return c.store.Update(func(tx *store.Tx) error {
		tx.EachVM(func(vm *v1.VM) bool { tx.DeleteVM(vm.Name); return true })
		return nil
	})
}
