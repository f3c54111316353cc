package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func vmIsNotRunning(name string) error {
	return &runtimeError{code: 2, msg: `VM "` + name + `" is not running`}
}

// errCancelled is how a Swift task cancelled by SIGINT surfaces.
var errCancelled = errors.New("CancellationError()")

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return errCancelled
	case <-t.C:
		return nil
	}
}

func runCreate(env *environment, inv *invocation) error {
	name := inv.args[0]
	_, fromIPSW := inv.value("from-ipsw")
	if !fromIPSW && !inv.flag("linux") {
		return &usageError{cmd: inv.cmd, msg: "Please specify either a --from-ipsw or --linux option!"}
	}
	diskSize, _, err := inv.uint("disk-size", 16, 50)
	if err != nil {
		return err
	}
	if _, err := inv.oneOf("disk-format", "raw", "raw", "asif"); err != nil {
		return err
	}
	guestOS := "darwin"
	if inv.flag("linux") {
		guestOS = "linux"
	}
	tmp, release, err := env.home.newTemp()
	if err != nil {
		return err
	}
	defer release()
	if err := newVMFiles(tmp, guestOS, int64(diskSize), randomMAC()); err != nil {
		return err
	}
	return replaceDir(env.home, tmp, env.home.local(name).path)
}

func runPull(env *environment, inv *invocation) error {
	if _, _, err := inv.uint("concurrency", 64, 4); err != nil {
		return err
	}
	name := inv.args[0]
	if env.home.local(name).initialized() {
		fmt.Fprintf(env.stdout, "\"%s\" is a local image, nothing to pull here!\n", name)
		return nil
	}
	r, ok := parseRemote(name)
	if !ok {
		return &runtimeError{code: 1, msg: "failed to parse remote name: " + name}
	}
	fmt.Fprintf(env.stdout, "pulling %s...\n", r)
	return pullImage(env, r)
}

// pullImage fetches r from the fake registry into the OCI cache, printing
// what Tart prints with CI set. Names containing "missing" do not exist in
// the registry; FAKETART_PULL_STEP_DELAY paces the progress lines.
func pullImage(env *environment, r remoteName) error {
	// One pull per registry host at a time, as in Tart.
	locks := filepath.Join(env.home.fakeDir(), "locks")
	if err := os.MkdirAll(locks, 0o755); err != nil {
		return err
	}
	lockPath := filepath.Join(locks, r.host)
	if err := os.WriteFile(lockPath, nil, 0o644); err != nil {
		return err
	}
	unlock, err := tryFlock(lockPath)
	if err != nil {
		fmt.Fprintln(env.stdout, "waiting for lock...")
		if unlock, err = flock(lockPath, true); err != nil {
			return err
		}
	}
	defer unlock()

	fmt.Fprintln(env.stdout, "pulling manifest...")
	if strings.Contains(r.String(), "missing") {
		return errors.New(`UnexpectedHTTPStatusCode(when: "pulling manifest", code: 404, details: "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest unknown\"}]}")`)
	}
	digest := r.registryDigest()
	digestDir := filepath.Join(env.home.repoDir(r), digest)
	byDigest := remoteName{host: r.host, namespace: r.namespace, digest: digest}
	if (vmDir{path: digestDir}).initialized() {
		if err := linkTag(r, digestDir); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "%s image is already cached and linked!\n", byDigest)
		return nil
	}

	repo := env.home.repoDir(r)
	if err := os.MkdirAll(repo, 0o755); err != nil {
		return err
	}
	spec := specFor(r.namespace)
	delay := 10 * time.Millisecond
	if s := env.getenv("FAKETART_PULL_STEP_DELAY"); s != "" {
		if delay, err = time.ParseDuration(s); err != nil {
			return fmt.Errorf("FAKETART_PULL_STEP_DELAY: %w", err)
		}
	}
	tmp, release, err := env.home.newTemp()
	if err != nil {
		return err
	}
	defer release()
	defer os.RemoveAll(tmp) // a no-op once renamed into the cache

	fmt.Fprintf(env.stdout, "pulling disk (%.1f GB compressed)...\n", spec.compressed)
	for _, percent := range []int{0, 20, 40, 60, 80, 100} {
		fmt.Fprintf(env.stdout, "%d%%\n", percent)
		if err := sleepCtx(env.ctx, delay); err != nil {
			return err
		}
	}
	fmt.Fprintln(env.stdout, "pulling NVRAM...")
	if err := newVMFiles(tmp, spec.os, spec.diskGB, imageMAC(r.host+"/"+r.namespace)); err != nil {
		return err
	}
	if err := os.Rename(tmp, digestDir); err != nil {
		return err
	}
	return linkTag(r, digestDir)
}

// linkTag points the tag symlink at the digest directory.
func linkTag(r remoteName, digestDir string) error {
	if r.digest != "" {
		return nil
	}
	link := filepath.Join(filepath.Dir(digestDir), r.tag)
	os.Remove(link)
	return os.Symlink(digestDir, link)
}

func runClone(env *environment, inv *invocation) error {
	source, target := inv.args[0], inv.args[1]
	if strings.Contains(target, "/") {
		return &usageError{cmd: inv.cmd, msg: "<new-name> should be a local name"}
	}
	if _, _, err := inv.uint("concurrency", 64, 4); err != nil {
		return err
	}
	if _, _, err := inv.uint("prune-limit", 64, 100); err != nil {
		return err
	}

	from := env.home.local(source)
	if r, ok := parseRemote(source); ok {
		from = env.home.oci(r)
		if !from.initialized() {
			if err := pullImage(env, r); err != nil {
				return err
			}
		}
	}
	if !from.initialized() {
		return vmDoesNotExist(source)
	}
	cfg, err := from.readConfig()
	if err != nil {
		return err
	}

	tmp, release, err := env.home.newTemp()
	if err != nil {
		return err
	}
	defer release()
	defer os.RemoveAll(tmp)
	unlock, err := env.home.lockStorage()
	if err != nil {
		return err
	}
	defer unlock()

	// Tart regenerates the MAC only when a local VM already has it.
	sameMAC := false
	locals, err := env.home.localVMs()
	if err != nil {
		return err
	}
	for _, l := range locals {
		if c, err := l.readConfig(); err == nil && c.MACAddress == cfg.MACAddress {
			sameMAC = true
		}
	}
	if err := from.copyTo(tmp, sameMAC && from.state() != "suspended"); err != nil {
		return err
	}
	to := env.home.local(target)
	if err := replaceDir(env.home, tmp, to.path); err != nil {
		return err
	}
	to.touch()
	return nil
}

func runSet(env *environment, inv *invocation) error {
	d := env.home.local(inv.args[0])
	cpu, hasCPU, err := inv.uint("cpu", 16, 0)
	if err != nil {
		return err
	}
	memory, hasMemory, err := inv.uint("memory", 64, 0)
	if err != nil {
		return err
	}
	diskSize, hasDiskSize, err := inv.uint("disk-size", 16, 0)
	if err != nil {
		return err
	}
	if !d.initialized() {
		return vmDoesNotExist(d.name)
	}
	cfg, err := d.readConfig()
	if err != nil {
		return err
	}
	if hasCPU {
		if cfg.OS == "darwin" && int(cpu) < cfg.CPUCountMin {
			return fmt.Errorf("VM should have %d CPU cores at minimum (requested %d)", cfg.CPUCountMin, cpu)
		}
		if cpu < 1 {
			return fmt.Errorf("VM should have 1 CPU cores at minimum (requested %d)", cpu)
		}
		cfg.CPUCount = int(cpu)
	}
	if hasMemory {
		bytes := memory << 20
		if cfg.OS == "darwin" && bytes < cfg.MemorySizeMin {
			return fmt.Errorf("VM should have %d bytes of memory at minimum (requested %d)", cfg.MemorySizeMin, bytes)
		}
		cfg.MemorySize = bytes
	}
	if display, ok := inv.value("display"); ok {
		w, h := parseDisplay(display)
		if w > 0 {
			cfg.Display.Width = w
		}
		if h > 0 {
			cfg.Display.Height = h
		}
	}
	if inv.flag("random-mac") {
		cfg.MACAddress = randomMAC()
	}
	if inv.flag("random-serial") && cfg.OS == "darwin" {
		cfg.ECID = randomHex(8)
	}
	if err := d.writeConfig(cfg); err != nil {
		return err
	}
	if disk, ok := inv.value("disk"); ok {
		b, err := os.ReadFile(disk)
		if err != nil {
			return err
		}
		if err := os.WriteFile(d.diskPath(), b, 0o644); err != nil {
			return err
		}
	}
	if hasDiskSize {
		want, have := int64(diskSize)*1e9, d.diskBytes()
		if want < have {
			return &runtimeError{code: 1, msg: fmt.Sprintf("new disk size of %s should be larger than the current disk size of %s", gigabytes(want), gigabytes(have))}
		}
		if err := os.Truncate(d.diskPath(), want); err != nil {
			return err
		}
	}
	return nil
}

// parseDisplay reads WxH with an optional pt/px unit; like Tart, parts
// that are not numbers count as 0 (unchanged).
func parseDisplay(s string) (w, h int) {
	s = strings.TrimSuffix(strings.TrimSuffix(s, "pt"), "px")
	ws, hs, _ := strings.Cut(s, "x")
	w, _ = strconv.Atoi(ws)
	h, _ = strconv.Atoi(hs)
	return w, h
}

func runGet(env *environment, inv *invocation) error {
	format, err := inv.oneOf("format", "text", "text", "json")
	if err != nil {
		return err
	}
	d := env.home.local(inv.args[0])
	if !d.initialized() {
		return vmDoesNotExist(d.name)
	}
	cfg, err := d.readConfig()
	if err != nil {
		return err
	}
	state := d.state()
	display := fmt.Sprintf("%dx%d%s", cfg.Display.Width, cfg.Display.Height, cfg.Display.Unit)
	size := fmt.Sprintf("%.3f", d.allocatedGB())
	if format == "json" {
		fmt.Fprintln(env.stdout, appleJSON(object{
			{"OS", cfg.OS}, {"CPU", cfg.CPUCount}, {"Memory", cfg.MemorySize >> 20},
			{"Disk", int(d.diskBytes() / 1e9)}, {"DiskFormat", cfg.DiskFormat}, {"Size", size},
			{"Display", display}, {"Running", state == "running"}, {"State", state},
		}))
		return nil
	}
	fmt.Fprintln(env.stdout, table(
		[]string{"OS", "CPU", "Memory", "Disk", "DiskFormat", "Size", "Display", "State"},
		[][]string{{cfg.OS, strconv.Itoa(cfg.CPUCount), fmt.Sprintf("%d MB", cfg.MemorySize>>20),
			fmt.Sprintf("%d GB", d.diskBytes()/1e9), cfg.DiskFormat, size + " GB", display, state}},
		[]bool{false, true, true, true, false, true, false, false}))
	return nil
}

func runList(env *environment, inv *invocation) error {
	source, hasSource := inv.value("source")
	if hasSource && source != "local" && source != "oci" {
		return &usageError{cmd: inv.cmd, msg: fmt.Sprintf("'%s' is not a valid <source>", source)}
	}
	format, err := inv.oneOf("format", "text", "text", "json")
	if err != nil {
		return err
	}
	type entry struct {
		source string
		dir    vmDir
	}
	var entries []entry
	if !hasSource || source == "local" {
		locals, err := env.home.localVMs()
		if err != nil {
			return err
		}
		for _, d := range locals {
			entries = append(entries, entry{"local", d})
		}
	}
	if !hasSource || source == "oci" {
		images, err := env.home.ociImages()
		if err != nil {
			return err
		}
		for _, d := range images {
			entries = append(entries, entry{"OCI", d})
		}
	}

	if inv.flag("quiet") {
		for _, e := range entries {
			fmt.Fprintln(env.stdout, e.dir.name)
		}
		return nil
	}
	if format == "json" {
		out := []object{}
		for _, e := range entries {
			state := e.dir.state()
			out = append(out, object{
				{"Source", e.source}, {"Name", e.dir.name}, {"Disk", e.dir.sizeGB()},
				{"Size", int(e.dir.allocatedGB())},
				{"Accessed", e.dir.accessed().UTC().Format("2006-01-02T15:04:05Z")},
				{"Running", state == "running"}, {"State", state},
			})
		}
		fmt.Fprintln(env.stdout, appleJSON(out))
		return nil
	}
	var rows [][]string
	now := time.Now()
	for _, e := range entries {
		rows = append(rows, []string{e.source, e.dir.name, strconv.Itoa(e.dir.sizeGB()),
			strconv.Itoa(int(e.dir.allocatedGB())), relative(e.dir.accessed(), now), e.dir.state()})
	}
	fmt.Fprintln(env.stdout, table([]string{"Source", "Name", "Disk", "Size", "Accessed", "State"}, rows,
		[]bool{false, false, true, true, false, false}))
	return nil
}

// runIP resolves like Tart: once a second until --wait runs out, always
// sleeping once before giving up. dhcp and arp read the fake's lease
// tables (keyed by MAC, written when a guest boots); agent asks the
// running guest itself unless FAKETART_NO_AGENT is set.
func runIP(env *environment, inv *invocation) error {
	wait, _, err := inv.uint("wait", 16, 0)
	if err != nil {
		return err
	}
	resolver, err := inv.oneOf("resolver", "dhcp", "dhcp", "arp", "agent")
	if err != nil {
		return err
	}
	d := env.home.local(inv.args[0])
	if !d.initialized() {
		return vmDoesNotExist(d.name)
	}
	cfg, err := d.readConfig()
	if err != nil {
		return err
	}
	resolve := func() string {
		switch resolver {
		case "dhcp":
			return readLease(env.home.leaseDir(), cfg.MACAddress)
		case "arp":
			return readLease(env.home.arpDir(), cfg.MACAddress)
		default:
			if env.getenv("FAKETART_NO_AGENT") != "" || !d.running() {
				return ""
			}
			if _, err := os.Stat(d.agentPath()); err != nil {
				return ""
			}
			return guestIP(d.name)
		}
	}
	deadline := time.Now().Add(time.Duration(wait) * time.Second)
	for {
		if ip := resolve(); ip != "" {
			fmt.Fprintln(env.stdout, ip)
			return nil
		}
		if err := sleepCtx(env.ctx, time.Second); err != nil {
			return err
		}
		if !time.Now().Before(deadline) {
			break
		}
	}
	msg := "no IP address found"
	if !d.running() {
		msg += ", is your VM running?"
	}
	if resolver == "agent" {
		msg += " (also make sure that Guest agent for Tart is running inside of a VM)"
	} else if resolver == "arp" && cfg.OS == "linux" {
		msg += " (not all Linux distributions are compatible with the ARP resolver)"
	}
	return &runtimeError{code: 1, msg: msg}
}

// runStop sends SIGINT to the `tart run` process holding the VM's lock,
// polls every 100 ms and sends SIGKILL when --timeout runs out.
func runStop(env *environment, inv *invocation) error {
	timeout, _, err := inv.uint("timeout", 64, 30)
	if err != nil {
		return err
	}
	d := env.home.local(inv.args[0])
	if !d.initialized() {
		return vmDoesNotExist(d.name)
	}
	switch d.state() {
	case "suspended":
		os.Remove(d.statePath())
		return nil
	case "stopped":
		return vmIsNotRunning(d.name)
	}
	pid, err := d.lockHolder()
	if err != nil {
		return err
	}
	if pid == 0 {
		return vmIsNotRunning(d.name)
	}
	syscall.Kill(pid, syscall.SIGINT)
	for left := time.Duration(timeout) * time.Second; left > 0; left -= 100 * time.Millisecond {
		if pid, err = d.lockHolder(); err == nil && pid == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return &runtimeError{code: 1, msg: fmt.Sprintf(`failed to forcefully terminate the VM "%s": %v`, d.name, err)}
	}
	return nil
}

func runSuspend(env *environment, inv *invocation) error {
	d := env.home.local(inv.args[0])
	if !d.initialized() {
		return vmDoesNotExist(d.name)
	}
	pid, err := d.lockHolder()
	if err != nil {
		return err
	}
	if pid == 0 {
		return vmIsNotRunning(d.name)
	}
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return &runtimeError{code: 1, msg: fmt.Sprintf(`Failed to suspend the VM: failed to send SIGUSR1 signal to the "tart run" process running VM "%s"`, d.name)}
	}
	return nil
}

// runDelete deletes local VMs and OCI cache entries, stopping at the first
// name that fails.
func runDelete(env *environment, inv *invocation) error {
	for _, name := range inv.args {
		if r, ok := parseRemote(name); ok {
			d := env.home.oci(r)
			st, err := os.Lstat(d.path)
			if err != nil {
				return vmDoesNotExist(name)
			}
			if st.Mode()&os.ModeSymlink != 0 {
				err = os.Remove(d.path)
			} else {
				err = os.RemoveAll(d.path)
			}
			if err != nil {
				return err
			}
			continue
		}
		d := env.home.local(name)
		if !d.initialized() {
			return vmDoesNotExist(name)
		}
		if d.running() {
			return &runtimeError{code: 1, msg: `VM "` + name + `" is running`}
		}
		if err := os.RemoveAll(d.path); err != nil {
			return err
		}
	}
	return nil
}

func runFQN(env *environment, inv *invocation) error {
	name := inv.args[0]
	r, ok := parseRemote(name)
	if !ok {
		fmt.Fprintln(env.stdout, name)
		return nil
	}
	if r.digest == "" {
		target, err := os.Readlink(env.home.oci(r).path)
		if err != nil {
			return fmt.Errorf("The file “%s” couldn’t be opened because there is no such file.", r.tag)
		}
		r.tag, r.digest = "", filepath.Base(target)
	}
	fmt.Fprintln(env.stdout, r)
	return nil
}
