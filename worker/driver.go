package worker

import (
	"context"
	"net"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Driver runs VM instances on this host. The worker's reconcile loop is its
// only caller. Every name passed in is a local name,
// orchard-<vm>-<uid>-<restarts> (v1.LocalNameFor): unique per VM and per
// restart, so a driver never sees two incarnations under one name.
//
// Methods are safe for concurrent use. The lifecycle methods (Create,
// Start, Stop, Suspend, Delete) are never called concurrently for one
// name; IP and Dial may come at any time, concurrently with them, and
// fail cleanly when the instance is not (or no longer) running.
type Driver interface {
	// Kind is v1.DriverTart or v1.DriverLocal.
	Kind() string

	// List returns the instances the driver holds whose names start with
	// "orchard-", running or not, including ones left by a previous run of
	// the worker.
	List(ctx context.Context) ([]Instance, error)

	// Create makes the instance from vm.Image (pulling when
	// vm.ImagePullPolicy or a missing image asks for it) and configures it
	// from vm (AssignedCPU, AssignedMemory, DiskSize, a random MAC address,
	// RandomSerial). It does not start it. progress receives human-readable
	// lines such as pull percentages; it may be called from any goroutine
	// until Create returns. It returns the image's fully qualified name
	// when the driver knows it.
	Create(ctx context.Context, name string, vm *v1.VM, progress func(line string)) (imageFQN string, err error)

	// Start boots the instance with the run-time options in vm (softnet,
	// bridged networking, nested virtualization, host directories,
	// suspendable) and returns once it is started. If it is already running
	// (left by a previous worker run) Start adopts it instead of starting a
	// second copy. The returned channel receives exactly one value when the
	// instance stops for any reason, nil for a clean stop (Stop, or a guest
	// shutdown), and is then closed.
	Start(ctx context.Context, name string, vm *v1.VM) (exited <-chan error, err error)

	// Stop stops a running instance gracefully (never SIGKILL first) and
	// returns once it has stopped. Stopping a stopped instance is not an
	// error.
	Stop(ctx context.Context, name string) error

	// Suspend saves a running instance's state and stops it.
	Suspend(ctx context.Context, name string) error

	// Delete stops the instance if it runs and removes it. Deleting a
	// missing instance is not an error.
	Delete(ctx context.Context, name string) error

	// IP returns the instance's IPv4 address, waiting until it has one or
	// ctx is done.
	IP(ctx context.Context, name string) (string, error)

	// Dial connects to a TCP port of the running instance (22 for SSH,
	// 5900 for VNC, anything else for port-forward).
	Dial(ctx context.Context, name string, port uint16) (net.Conn, error)

	// Ignored names the fields of vm that the driver accepts but does not
	// honour, in the VM JSON's spelling; the worker records them in the VM's
	// events.
	Ignored(vm *v1.VM) []string
}

// Instance is one VM instance as its driver reports it.
type Instance struct {
	Name    string
	Running bool
}
