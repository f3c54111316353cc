package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

// exitStatus ends the process with a code after the command has already
// said what went wrong (on stdout, as Tart's suspend failure does).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// macOSGuestLimit is Apple's limit of concurrently running macOS guests.
const macOSGuestLimit = 2

// runRun is `tart run NAME`: validate like Tart's validate(), lock the VM,
// then "run the guest" until SIGINT, a guest shutdown (the hook file),
// SIGUSR2 (a guest stop request) or SIGUSR1 (suspend).
func runRun(env *environment, inv *invocation) error {
	// Tart handles these signals from its first instruction; installing the
	// handlers before the VM's lock becomes visible means `tart stop` can
	// never kill a half-started process by accident.
	signals := make(chan os.Signal, 4)
	if env.getenv("FAKETART_IGNORE_SIGINT") != "" {
		signal.Ignore(os.Interrupt)
	} else {
		signal.Notify(signals, os.Interrupt)
	}
	signal.Notify(signals, syscall.SIGUSR1, syscall.SIGUSR2)

	name := inv.args[0]
	usage := func(msg string) error { return &usageError{cmd: inv.cmd, msg: msg} }
	bridged := inv.values["net-bridged"]
	_, allow := inv.value("net-softnet-allow")
	_, block := inv.value("net-softnet-block")
	_, expose := inv.value("net-softnet-expose")
	softnet := inv.flag("net-softnet") || allow || block || expose
	netFlags := 0
	for _, set := range []bool{len(bridged) > 0, softnet, inv.flag("net-host")} {
		if set {
			netFlags++
		}
	}
	noGraphics, vnc, vncExperimental := inv.flag("no-graphics"), inv.flag("vnc"), inv.flag("vnc-experimental")
	switch {
	case vnc && vncExperimental:
		return usage("--vnc and --vnc-experimental are mutually exclusive")
	case netFlags > 1:
		return usage("--net-bridged, --net-softnet and --net-host are mutually exclusive")
	case inv.flag("graphics") && noGraphics:
		return usage("--graphics and --no-graphics are mutually exclusive")
	case inv.flag("capture-system-keys") && (noGraphics || vnc || vncExperimental):
		return usage("--captures-system-keys can only be used with the default VM view")
	}

	d := env.home.local(name)
	if !d.initialized() {
		// Tart opens the VM inside validate(), which turns its RuntimeError
		// into a plain error: exit 1 with "Error: ".
		return errors.New(vmDoesNotExist(name).Error())
	}
	// Read the config before locking: closing a descriptor of config.json
	// would drop this process's fcntl lock on it.
	cfg, err := d.readConfig()
	if err != nil {
		return err
	}
	resume := d.state() == "suspended"
	suspendable := inv.flag("suspendable") || resume
	dirs := inv.values["dir"]
	if suspendable && cfg.OS != "darwin" {
		return usage("You can only suspend macOS VMs")
	}
	if suspendable && len(dirs) > 0 {
		return usage("Suspending VMs with shared directories is not supported")
	}
	for _, disk := range inv.values["disk"] {
		if strings.HasSuffix(disk, "-amd64.iso") {
			return usage("Seems you have a disk targeting x86 architecture (hence amd64 in the name). Please use an 'arm64' version of the disk.")
		}
	}
	if err := checkDirShares(dirs); err != nil {
		return usage(err.Error())
	}

	// Tart builds the VM's configuration before it locks the VM; that can
	// take a while, and SIGINT cancels it.
	if s := env.getenv("FAKETART_START_DELAY"); s != "" {
		delay, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("FAKETART_START_DELAY: %w", err)
		}
		select {
		case <-time.After(delay):
		case s := <-signals:
			if s == os.Interrupt {
				return errCancelled
			}
		}
	}

	unlockStorage, err := env.home.lockStorage()
	if err != nil {
		return err
	}
	defer unlockStorage()
	locals, err := env.home.localVMs()
	if err != nil {
		return err
	}
	for _, other := range locals {
		if other.name == name || !other.running() {
			continue
		}
		if c, err := other.readConfig(); err == nil && c.MACAddress == cfg.MACAddress {
			fmt.Fprintln(env.stdout, "There is already a running VM with the same MAC address!")
			fmt.Fprintln(env.stdout, "Resetting VM to assign a new MAC address...")
			cfg.MACAddress = randomMAC()
			if err := d.writeConfig(cfg); err != nil {
				return err
			}
			break
		}
	}
	if softnet || inv.flag("net-host") {
		if _, err := exec.LookPath("softnet"); err != nil {
			return &runtimeError{code: 1, msg: "Softnet failed: softnet not found in PATH"}
		}
	}
	if err := checkBridges(env, bridged); err != nil {
		return usage(err.Error())
	}

	lock, err := lockVM(d)
	if err != nil {
		return err
	}
	defer lock.Close()

	// Apple's limit, checked under the storage lock so that concurrent
	// starts count each other exactly once.
	if cfg.OS == "darwin" {
		var others []string
		for _, other := range locals {
			if other.name == name || !other.running() {
				continue
			}
			if c, err := other.readConfig(); err == nil && c.OS == "darwin" {
				others = append(others, other.name)
			}
		}
		if len(others) >= macOSGuestLimit {
			sort.Strings(others)
			return &runtimeError{code: 1, msg: fmt.Sprintf("The number of VMs exceeds the system limit (other running VMs: %s)", strings.Join(others, ", "))}
		}
	}
	unlockStorage()
	d.touch()

	err = guestLoop(env, d, cfg, guestOptions{resume: resume, suspendable: suspendable, bridged: len(bridged) > 0}, signals)
	os.Remove(d.agentPath())
	runtime.KeepAlive(lock)
	return err
}

type guestOptions struct {
	resume, suspendable, bridged bool
}

// guestLoop is the running guest. It "boots" after FAKETART_BOOT_DELAY:
// its lease appears (DHCP, or ARP for bridged networking) and its guest
// agent answers.
func guestLoop(env *environment, d vmDir, cfg vmConfig, opts guestOptions, signals <-chan os.Signal) error {
	if opts.resume {
		fmt.Fprintln(env.stdout, "restoring VM state from a snapshot...")
		os.Remove(d.statePath())
		fmt.Fprintln(env.stdout, "resuming VM...")
	}
	var bootDelay time.Duration
	if s := env.getenv("FAKETART_BOOT_DELAY"); s != "" {
		var err error
		if bootDelay, err = time.ParseDuration(s); err != nil {
			return fmt.Errorf("FAKETART_BOOT_DELAY: %w", err)
		}
	}
	booted := time.After(bootDelay)
	hook := time.NewTicker(50 * time.Millisecond)
	defer hook.Stop()
	for {
		select {
		case <-booted:
			booted = nil
			table := env.home.leaseDir()
			if opts.bridged {
				table = env.home.arpDir()
			}
			if err := writeLease(table, cfg.MACAddress, guestIP(d.name)); err != nil {
				return err
			}
			if err := os.WriteFile(d.agentPath(), nil, 0o644); err != nil {
				return err
			}
		case <-hook.C:
			reason, err := os.ReadFile(d.guestShutdownPath())
			if err != nil {
				continue
			}
			os.Remove(d.guestShutdownPath())
			if r := strings.TrimSpace(string(reason)); r != "" {
				fmt.Fprintf(env.stdout, "guest has stopped the virtual machine due to error: %s\n", r)
			} else {
				fmt.Fprintln(env.stdout, "guest has stopped the virtual machine")
			}
			return nil
		case s := <-signals:
			switch s {
			case os.Interrupt:
				fmt.Fprintln(env.stdout, "Stopping VM...")
				return nil
			case syscall.SIGUSR2:
				fmt.Fprintln(env.stdout, "Requesting guest OS to stop...")
				fmt.Fprintln(env.stdout, "guest has stopped the virtual machine")
				return nil
			case syscall.SIGUSR1:
				return suspend(env.stdout, d, opts.suspendable)
			}
		}
	}
}

// suspend saves the guest's state as Tart does on SIGUSR1; a VM started
// without --suspendable fails validateSaveRestoreSupport and exits 1,
// having printed the reason on stdout.
func suspend(stdout io.Writer, d vmDir, suspendable bool) error {
	if !suspendable {
		fmt.Fprintln(stdout, "Failed to suspend the VM: The virtual machine configuration does not support saving and restoring; start it with --suspendable.")
		return exitStatus(1)
	}
	fmt.Fprintln(stdout, "pausing VM to take a snapshot...")
	fmt.Fprintln(stdout, "creating a snapshot...")
	if err := os.WriteFile(d.statePath(), []byte("faketart saved state\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "snapshot created successfully! shutting down the VM...")
	return nil
}

// lockVM takes the fcntl write lock on config.json that marks the VM
// running; the kernel drops it when this process exits.
func lockVM(d vmDir) (*os.File, error) {
	f, err := os.OpenFile(d.configPath(), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
		f.Close()
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
			return nil, &runtimeError{code: 2, msg: `VM "` + d.name + `" is already running!`}
		}
		return nil, fmt.Errorf("failed to lock %s: %w", d.configPath(), err)
	}
	return f, nil
}

// checkDirShares applies Tart's rule for --dir values ([name:]path[:ro]
// [,tag=TAG]) that share a mount tag: then each must be named.
func checkDirShares(dirs []string) error {
	shares, unnamed := map[string]int{}, map[string]int{}
	for _, raw := range dirs {
		tag, named := parseDirShare(raw)
		shares[tag]++
		if !named {
			unnamed[tag]++
		}
	}
	for tag, n := range shares {
		if n > 1 && unnamed[tag] > 0 {
			return errors.New("invalid --dir syntax: for multiple directory shares each one of them should be named")
		}
	}
	return nil
}

func parseDirShare(raw string) (tag string, named bool) {
	tag = "com.apple.virtio-fs.automount"
	parts := strings.Split(raw, ":")
	found := false
	for _, o := range strings.Split(parts[len(parts)-1], ",") {
		if o == "ro" {
			found = true
		} else if t, ok := strings.CutPrefix(o, "tag="); ok {
			tag, found = t, true
		}
	}
	if found {
		parts = parts[:len(parts)-1]
	}
	rest := strings.Join(parts, ":")
	if strings.HasPrefix(rest, "http:") || strings.HasPrefix(rest, "https:") {
		return tag, false
	}
	return tag, strings.Contains(rest, ":")
}

// checkBridges checks --net-bridged interfaces against the host's, which
// FAKETART_BRIDGE_INTERFACES lists (comma-separated, default "en0").
func checkBridges(env *environment, requested []string) error {
	available := []string{"en0"}
	if s := env.getenv("FAKETART_BRIDGE_INTERFACES"); s != "" {
		available = strings.Split(s, ",")
	}
	for _, want := range requested {
		found := false
		for _, a := range available {
			found = found || a == want
		}
		if !found {
			return fmt.Errorf(`no bridge interfaces matched "%s", available interfaces: %s`, swiftArray(requested), swiftArray(available))
		}
	}
	return nil
}

func swiftArray(items []string) string {
	quoted := make([]string, len(items))
	for i, s := range items {
		quoted[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}
