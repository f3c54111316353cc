// Package tart is the worker's driver for Tart (github.com/cirruslabs/tart):
// it runs Orchard VMs on a Mac by running the tart command line, the way
// Orchard's own worker does.
//
// Every method is one or a few tart invocations, with CI=1 in their
// environment so that pulls print plain progress lines:
//
//	Create   tart pull IMAGE (ImagePullPolicy Always), tart clone IMAGE NAME,
//	         tart set NAME --random-mac [--random-serial],
//	         tart set NAME --cpu N --memory MB --disk-size GB, tart fqn IMAGE
//	Start    tart run --no-graphics [network, --nested, --suspendable, --dir...] NAME
//	Stop     tart stop --timeout 5 NAME
//	Suspend  tart suspend NAME
//	Delete   Stop, then tart delete NAME
//	IP       tart ip --wait 60 NAME (bridged: --resolver agent, then arp)
//	Dial     IP, then TCP to IP:port
//	List     tart list --format json --source local
//
// `tart run` blocks for as long as the VM runs, so Start keeps it as a
// child process and reports its end on a channel: nil when it exits 0 (a
// guest shutdown, or a stop the driver asked for), otherwise an *Error
// carrying tart's stderr. Children are never killed first: cancellation
// sends SIGINT, which Tart answers by stopping the VM cleanly, and only
// InterruptGrace later SIGKILL.
//
// Tart marks a running VM by an fcntl lock its `tart run` process holds on
// $TART_HOME/vms/NAME/config.json. The driver reads that lock (never takes
// it) to learn when its child has started the VM, and to adopt a VM a
// previous worker process left running: Start then runs no second copy
// and watches the lock once a PollInterval until the VM stops. Close ends
// the children it started and leaves adopted VMs running for the next
// worker.
//
// Failed commands become *Error values that name the command, its exit
// status and its stderr; errors.Is with ErrNotExist, ErrNotRunning,
// ErrAlreadyRunning and ErrNoIPAddress tells Tart's conditions apart. The
// environment, which may hold registry credentials, is never logged or
// put into an error.
//
// Tests run against a fake tart built from internal/faketart.
package tart
