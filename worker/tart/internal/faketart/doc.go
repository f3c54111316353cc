// Command faketart is a test double of the Tart CLI (tart 2.32) for Linux
// hosts: it keeps VMs in Tart's $TART_HOME layout, takes exactly Tart's
// subcommands and flags, rejects everything Tart rejects, and answers
// with Tart's outputs, messages and exit codes. There is no virtual
// machine: a "running VM" is a `tart run` process that holds the VM's lock
// and waits for a signal.
//
// # Building
//
// Tests build it into a temporary directory, named tart, and point the
// code under test at it (as a path, or by putting the directory first on
// PATH):
//
//	go build -o "$DIR/tart" github.com/orchardci/orchard/worker/tart/internal/faketart
//
// Give every test its own TART_HOME (default ~/.tart, created when
// missing).
//
// # What it keeps, where
//
//	$TART_HOME/vms/NAME/{config.json,disk.img,nvram.bin}   a local VM
//	$TART_HOME/vms/NAME/state.vzvmsave                     saved state of a suspended VM
//	$TART_HOME/cache/OCIs/HOST/NAMESPACE/sha256:HEX/       a pulled image
//	$TART_HOME/cache/OCIs/HOST/NAMESPACE/TAG -> sha256:HEX the tag, a symlink
//	$TART_HOME/tmp/                                        work in progress (flocked)
//	$TART_HOME/faketart/invocations.log                    one JSON line per invocation
//	$TART_HOME/faketart/leases/MAC, faketart/arp/MAC        the DHCP lease and ARP tables
//
// config.json has Tart's keys (os, cpuCount, memorySize in bytes,
// macAddress, ...). Disk images are sparse files of the VM's disk size and
// hold no data, so cloning is instant.
//
// A VM runs while its `tart run` process holds an fcntl F_WRLCK on its
// config.json, exactly like Tart: `tart stop` finds the PID with F_GETLK,
// sends SIGINT, polls every 100 ms and sends SIGKILL after --timeout.
//
// # Behaviour worth knowing
//
//   - Images: any remote name (host/namespace[:tag|@sha256:...]) exists in
//     the fake registry, except names containing "missing": pulling one
//     fails after "pulling manifest..." with a 404 error, exit 1. Names
//     containing ubuntu, debian, fedora or linux are Linux guests (20 GB
//     disk), others macOS guests (50 GB; "xcode" images 140 GB), all 4 CPUs;
//     macOS images refuse fewer than 4 CPUs or 4096 MB.
//   - pull prints, with or without CI set, Tart's CI-style lines:
//     "pulling NAME...", "pulling manifest...", "pulling disk (25.3 GB
//     compressed)...", "0%" to "100%" in steps of 20, "pulling NVRAM...";
//     a cached image prints "NAME@sha256:... image is already cached and
//     linked!". clone pulls a missing image first, with the same lines
//     except the first, then copies it; cloning onto an existing name
//     replaces it. The image's MAC address is kept unless another local VM
//     has it (as Tart), so run `tart set --random-mac`.
//   - run refuses a third running macOS guest: exit 1, "The number of VMs
//     exceeds the system limit (other running VMs: a, b)". Linux guests are
//     not limited. --net-softnet (and -allow, -block, -expose, --net-host)
//     need an executable named softnet on PATH, or fail with exit 1
//     "Softnet failed: softnet not found in PATH". --net-bridged takes only
//     interfaces in FAKETART_BRIDGE_INTERFACES.
//   - The guest "boots" FAKETART_BOOT_DELAY after run started: then its
//     lease appears (keyed by MAC address, it outlives the VM, as a real
//     DHCP lease does) and its guest agent answers. The guest's address is
//     127.100.X.Y, derived from the VM name (FNV-1a 32: X = bits 8-15,
//     Y = hash % 254 + 1), so a test can listen on it (Linux routes all of
//     127.0.0.0/8 to loopback). `tart ip` reads the DHCP table by default,
//     the ARP table with --resolver arp (bridged VMs are only in that one)
//     and asks the guest with --resolver agent. Like Tart it tries once a
//     second until --wait runs out and sleeps one second before giving up.
//   - run ends with exit 0 on SIGINT ("Stopping VM..."), on SIGUSR2 (a
//     guest stop request) and when the file vms/NAME/guest-shutdown appears
//     ("guest has stopped the virtual machine"; with text in the file,
//     "... due to error: TEXT"). The file is removed. On SIGUSR1 (what
//     `tart suspend` sends) a VM run with --suspendable writes
//     state.vzvmsave and exits 0; one without prints the failure on stdout
//     and exits 1, as Tart does.
//
// # Environment
//
//	TART_HOME                  the root, as for Tart
//	CI                         recorded in the invocation log (output is CI-style either way)
//	FAKETART_VERSION           what --version prints (default 2.32.1)
//	FAKETART_PULL_STEP_DELAY   pause after each progress line of a pull (Go duration, default 10ms)
//	FAKETART_START_DELAY       time run takes before it locks (starts) the VM; SIGINT cancels it (exit 1)
//	FAKETART_BOOT_DELAY        time from the VM's start to an IP address (Go duration, default 0)
//	FAKETART_NO_AGENT          set: --resolver agent never answers
//	FAKETART_IGNORE_SIGINT     set: run ignores SIGINT, so only SIGKILL (tart stop's timeout) ends it
//	FAKETART_BRIDGE_INTERFACES the host's bridgeable interfaces (comma-separated, default en0)
//
// # The invocation log
//
// Every invocation appends {"args":[...],"pid":N,"ci":true|false} to
// faketart/invocations.log, args without the program name. Nothing else
// of the environment is recorded.
//
// Not emulated (exit 1, "faketart does not emulate ..."): login, logout,
// exec, push, import, export, prune, rename. create takes --linux or
// --from-ipsw (any value makes a macOS VM).
package main
