// Package local is the development driver: it runs Orchard "VMs" on hosts
// without Tart (Linux laptops, CI machines) so that orchard dev, SSH,
// port-forwarding and runner scripts work end to end.
//
// # It isolates nothing
//
// A local VM is a directory on the host plus an SSH server that the worker
// process serves on a loopback address of its own. Commands run over SSH
// are ordinary host processes, running as the worker's user (root, in CI)
// with the host's /bin/sh. They can read and write anything the worker can,
// see every other VM, and reach every host port. Use the local driver only
// for code you would run on the host anyway.
//
// # How data flows
//
// [New] takes a directory that the driver owns. It locks it (one driver per
// directory), loads or generates the SSH host key kept there
// (ssh_host_ed25519_key, one key for every VM of the driver), ends
// processes that a previous run of the worker left behind, and removes VM
// directories that previous run left: VMs live in the worker process, so
// after a restart there is nothing to adopt.
//
// [Driver.Create] makes Dir/<name> with a few shims in <vm dir>/.orchard/bin
// (hard links to one script in Dir, which are cheap to make).
// [Driver.Start] claims a loopback address by binding the VM's SSH listener
// on it and serves SSH there: one accept loop per VM, plus goroutines per
// live connection and session. [Driver.Dial] with port
// 22 reaches that server; any other port is dialled on the VM's address, so
// a service that a command in the VM started on that address (or on
// 0.0.0.0) answers there. [Driver.Stop] and [Driver.Delete] close the server
// and end every process the VM started; Delete then removes the directory.
//
// # Addresses
//
// On Linux all of 127.0.0.0/8 reaches the loopback interface, so every VM
// gets an address picked at random from 127.64.0.0/10. The address is
// claimed by binding the SSH listener on it, at port 22 when the process
// may bind it and at 2222 otherwise; a busy address (another VM, in this
// process or another worker on the host) makes the driver pick another.
// Where only 127.0.0.1 routes (macOS), every VM listens on 127.0.0.1 with a
// port of its own, and IP returns 127.0.0.1 for all of them.
//
// # The SSH server
//
// Password authentication against the VM's username and password (default
// admin/admin). Session channels support exec (/bin/sh -c), shell
// (/bin/sh -i on a terminal, else /bin/sh -l reading stdin), pty-req and window-change, signal, and env, which like
// macOS's sshd accepts only LANG and LC_*: nothing may rely on passing
// secrets as SSH environment. direct-tcpip channels (ssh -L) dial the
// target from the host, as given ("localhost" is the host's). Commands
// start in the VM directory with an environment built from scratch (HOME
// is the VM directory; PATH starts with <vm dir>/.orchard/bin;
// ORCHARD_LOCAL_VM names the VM): nothing of the worker's own environment,
// which may hold tokens, reaches them.
//
// Like OpenSSH's, a session without a pty lasts while anything (a
// background job) holds its stdout or stderr; with a pty it ends with its
// command.
//
// # Ending processes
//
// Every command starts in a process group of its own. On Linux the driver
// also finds the VM's processes by the ORCHARD_LOCAL_VM variable that every
// descendant inherits, so daemons that left the group (nohup, setsid, a
// double fork) end too: SIGTERM first, SIGKILL after a short grace, and
// Stop returns once they are gone. The SSH connections stay up meanwhile,
// so clients learn how their commands ended. A process that both cleared
// its environment and left its group escapes. On other systems only
// process groups are known: there a daemon that called setsid outlives
// its VM, and so do processes of a previous run of the worker.
//
// # Guest shutdown, and sudo
//
// Runner scripts end with "sudo shutdown -h now". On a CI machine running
// as root the real command would stop the host, so the VM's PATH starts
// with shims: shutdown, halt and poweroff ask the driver (through a FIFO in
// Dir) to stop the VM and return, as macOS's shutdown does. The driver
// gives running commands up to two seconds to end by themselves (so that
// the script reports its own exit status), then stops the VM as Stop
// does, and the exited channel of Start receives nil. A reboot is refused. The sudo
// shim runs its command as the same user, since there is no privilege to
// gain; it sends "sudo /sbin/shutdown" and friends to the shims too. A
// script that calls /sbin/shutdown directly, without sudo, bypasses the
// shims and reaches the host's command.
//
// # VM fields
//
// The VM spec's image, CPU, memory, disk, networking, nesting, host
// directories and serial number mean nothing for a directory; Ignored
// names them so that the worker can record it. Suspend is Stop.
package local
