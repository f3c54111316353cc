package fleet

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

func worker(name string, opts ...func(*v1.Worker)) *v1.Worker {
	w := &v1.Worker{Resources: v1.Resources{v1.ResourceTartVMs: 2}, Arch: v1.ArchARM64, Runtime: v1.RuntimeTart, Driver: v1.DriverTart, Meta: v1.Meta{Name: name}}
	for _, o := range opts {
		o(w)
	}
	return w
}

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func pendingVM(name string, age int, opts ...func(*v1.VM)) *v1.VM {
	vm := &v1.VM{Status: v1.VMStatusPending, OS: v1.OSDarwin, Arch: v1.ArchARM64, Runtime: v1.RuntimeTart,
		Resources: v1.Resources{v1.ResourceTartVMs: 1}, UID: name, Meta: v1.Meta{Name: name, CreatedAt: t0.Add(-time.Duration(age) * time.Minute)}}
	for _, o := range opts {
		o(vm)
	}
	return vm
}

func runningOn(name, w string) *v1.VM {
	vm := pendingVM(name, 100)
	vm.Status, vm.Worker = v1.VMStatusRunning, w
	return vm
}

func TestPlan(t *testing.T) {
	all := func(string) bool { return true }
	tests := []struct {
		name      string
		vms       []*v1.VM
		workers   []*v1.Worker
		connected func(string) bool
		profile   v1.SchedulerProfile
		want      map[string]string // vm -> worker
		why       map[string]string // vm -> substring of the reason
	}{
		{
			name:    "packs onto the busiest worker that fits",
			vms:     []*v1.VM{runningOn("r", "b"), pendingVM("p", 1)},
			workers: []*v1.Worker{worker("a"), worker("b")},
			want:    map[string]string{"p": "b"},
		},
		{
			name:    "spreads with distribute-load",
			vms:     []*v1.VM{runningOn("r", "b"), pendingVM("p", 1)},
			workers: []*v1.Worker{worker("a"), worker("b")},
			profile: v1.SchedulerProfileDistributeLoad,
			want:    map[string]string{"p": "a"},
		},
		{
			name:    "two macOS VMs per host, oldest first",
			vms:     []*v1.VM{pendingVM("young", 1), pendingVM("old", 3), pendingVM("middle", 2)},
			workers: []*v1.Worker{worker("a")},
			want:    map[string]string{"old": "a", "middle": "a"},
			why:     map[string]string{"young": "1 worker has too little org.cirruslabs.tart-vms free"},
		},
		{
			name:    "failed and stopped VMs give their slot back",
			vms:     []*v1.VM{failedOn("f", "a"), stoppedOn("s", "a"), pendingVM("p1", 2), pendingVM("p2", 1)},
			workers: []*v1.Worker{worker("a")},
			want:    map[string]string{"p1": "a", "p2": "a"},
		},
		{
			name:    "only requested resources count",
			vms:     []*v1.VM{pendingVM("cores", 1, func(vm *v1.VM) { vm.Resources = v1.Resources{v1.ResourceLogicalCores: 8}; vm.CPU = 64 })},
			workers: []*v1.Worker{worker("small", func(w *v1.Worker) { w.Resources[v1.ResourceLogicalCores] = 4 }), worker("big", func(w *v1.Worker) { w.Resources[v1.ResourceLogicalCores] = 8 })},
			want:    map[string]string{"cores": "big"},
		},
		{
			name:    "labels must all match",
			vms:     []*v1.VM{pendingVM("gpu", 1, func(vm *v1.VM) { vm.Labels = v1.Labels{"gpu": "yes", "model": "m2"} })},
			workers: []*v1.Worker{worker("a", func(w *v1.Worker) { w.Labels = v1.Labels{"gpu": "yes"} }), worker("b", func(w *v1.Worker) { w.Labels = v1.Labels{"gpu": "yes", "model": "m2", "x": "y"} })},
			want:    map[string]string{"gpu": "b"},
		},
		{
			name:    "platform must match, except on local workers",
			vms:     []*v1.VM{pendingVM("lin", 1, func(vm *v1.VM) { vm.Arch, vm.Runtime, vm.OS = v1.ArchAMD64, v1.RuntimeVetu, v1.OSLinux })},
			workers: []*v1.Worker{worker("mac"), worker("dev", func(w *v1.Worker) { w.Driver = v1.DriverLocal })},
			want:    map[string]string{"lin": "dev"},
		},
		{
			name:      "offline and paused workers take nothing, and the reason says so",
			vms:       []*v1.VM{pendingVM("p", 1, func(vm *v1.VM) { vm.Labels = v1.Labels{"k": "v"} })},
			workers:   []*v1.Worker{worker("off"), worker("paused", func(w *v1.Worker) { w.SchedulingPaused = true }), worker("nolabel"), worker("lin", func(w *v1.Worker) { w.Arch = v1.ArchAMD64 })},
			connected: func(name string) bool { return name != "off" },
			want:      map[string]string{},
			why:       map[string]string{"p": "1 worker is offline, 1 worker is paused, 1 worker lacks label k=v, 1 worker runs amd64/tart, not arm64/tart"},
		},
		{
			name: "no workers at all",
			vms:  []*v1.VM{pendingVM("p", 1)},
			want: map[string]string{},
			why:  map[string]string{"p": "none is registered"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			connected := tt.connected
			if connected == nil {
				connected = all
			}
			placements, reasons := plan(tt.vms, tt.workers, connected, tt.profile)
			got := map[string]string{}
			for _, p := range placements {
				got[p.vm.Name] = p.worker.Name
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("placements = %v, want %v", got, tt.want)
			}
			for vm, want := range tt.why {
				if !strings.Contains(reasons[vm], want) {
					t.Errorf("reason for %s = %q, want it to contain %q", vm, reasons[vm], want)
				}
			}
			if len(tt.why) == 0 && len(reasons) > 0 {
				t.Errorf("unexpected reasons %v", reasons)
			}
		})
	}
}

func failedOn(name, w string) *v1.VM {
	vm := runningOn(name, w)
	vm.Status = v1.VMStatusFailed
	return vm
}

func stoppedOn(name, w string) *v1.VM {
	vm := runningOn(name, w)
	vm.PowerState = v1.PowerStateStopped
	vm.SetCondition(v1.ConditionRunning, false)
	return vm
}

// BenchmarkPlan1000x1000 places 1,000 pending VMs onto 1,000 workers.
func BenchmarkPlan1000x1000(b *testing.B) {
	var workers []*v1.Worker
	for i := range 1000 {
		workers = append(workers, worker(fmt.Sprintf("w%04d", i)))
	}
	var vms []*v1.VM
	for i := range 1000 {
		vms = append(vms, pendingVM(fmt.Sprintf("vm%04d", i), i))
	}
	connected := func(string) bool { return true }
	for b.Loop() {
		placements, _ := plan(vms, workers, connected, v1.SchedulerProfileDistributeLoad)
		if len(placements) != 1000 {
			b.Fatalf("placed %d", len(placements))
		}
	}
}
