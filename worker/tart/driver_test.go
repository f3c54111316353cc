package tart

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/worker"
)

func TestNew(t *testing.T) {
	t.Parallel()
	t.Run("missing binary", func(t *testing.T) {
		_, err := New(context.Background(), Options{Binary: filepath.Join(t.TempDir(), "tart")})
		if err == nil || !strings.Contains(err.Error(), "find tart") {
			t.Fatalf("New = %v, want a find tart error", err)
		}
	})
	t.Run("version fails", func(t *testing.T) {
		_, err := New(context.Background(), Options{Binary: "false", Logger: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "does not run") || !strings.Contains(err.Error(), "--version") {
			t.Fatalf("New = %v, want a failed --version", err)
		}
	})
	t.Run("version", func(t *testing.T) {
		h := newHarness(t, []string{"FAKETART_VERSION=2.99.0"}, nil)
		if got := h.d.Version(); got != "2.99.0" {
			t.Fatalf("Version = %q", got)
		}
		if got := h.d.Kind(); got != v1.DriverTart {
			t.Fatalf("Kind = %q", got)
		}
	})
}

func TestCreate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		vm      v1.VM
		setArgs [][]string // after NAME
		want    vmInfo
	}{
		{
			name: "assigned resources win",
			vm:   v1.VM{CPU: 4, Memory: 8192, AssignedCPU: 6, AssignedMemory: 12288, DiskSize: 80, RandomSerial: true},
			setArgs: [][]string{
				{"--random-mac", "--random-serial"},
				{"--cpu", "6", "--memory", "12288", "--disk-size", "80"},
			},
			want: vmInfo{OS: "darwin", CPU: 6, Memory: 12288, Disk: 80},
		},
		{
			name:    "spec resources",
			vm:      v1.VM{CPU: 5, Memory: 9000},
			setArgs: [][]string{{"--random-mac"}, {"--cpu", "5", "--memory", "9000"}},
			want:    vmInfo{OS: "darwin", CPU: 5, Memory: 9000, Disk: 50},
		},
		{
			name:    "image defaults",
			vm:      v1.VM{},
			setArgs: [][]string{{"--random-mac"}},
			want:    vmInfo{OS: "darwin", CPU: 4, Memory: 8192, Disk: 50},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, nil, nil)
			name := v1.LocalNameFor("vm", "uid", 0)
			vm := tt.vm
			vm.Image = macOSImage
			fqn, err := h.d.Create(context.Background(), name, &vm, nil)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}

			var ran [][]string
			for _, inv := range h.invocations() {
				if !inv.CI {
					t.Errorf("tart %v ran without CI set", inv.Args)
				}
				ran = append(ran, inv.Args)
			}
			want := [][]string{{"--version"}, {"clone", macOSImage, name}}
			for _, s := range tt.setArgs {
				want = append(want, append([]string{"set", name}, s...))
			}
			want = append(want, []string{"fqn", macOSImage})
			if !slices.EqualFunc(ran, want, slices.Equal[[]string]) {
				t.Errorf("tart ran\n%v\nwant\n%v", ran, want)
			}

			if !regexp.MustCompile(`^ghcr\.io/cirruslabs/macos-sequoia-base@sha256:[0-9a-f]{64}$`).MatchString(fqn) {
				t.Errorf("image FQN = %q", fqn)
			}
			if want := strings.TrimSpace(h.mustTart("fqn", macOSImage)); fqn != want {
				t.Errorf("image FQN = %q, tart fqn says %q", fqn, want)
			}
			got := h.get(name)
			got.Running, got.State = false, ""
			if got != tt.want {
				t.Errorf("tart get = %+v, want %+v", got, tt.want)
			}
			image := h.config(filepath.Join(h.home, "cache", "OCIs", "ghcr.io", "cirruslabs", "macos-sequoia-base", "latest"))
			clone := h.config(filepath.Join(h.home, "vms", name))
			if image["macAddress"] == clone["macAddress"] {
				t.Errorf("the clone kept the image's MAC address %v", image["macAddress"])
			}
		})
	}
}

func TestCreateProgress(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []string{"FAKETART_PULL_STEP_DELAY=1ms"}, nil)
	var mu sync.Mutex
	var lines []string
	progress := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, line)
	}
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := lines
		lines = nil
		return out
	}
	create := func(name string, policy v1.ImagePullPolicy) {
		t.Helper()
		vm := &v1.VM{Image: macOSImage, ImagePullPolicy: policy}
		if _, err := h.d.Create(context.Background(), name, vm, progress); err != nil {
			t.Fatalf("Create %s: %v", name, err)
		}
	}
	p := "pulling " + macOSImage + ": "

	create("orchard-first-u-0", "")
	want := []string{p + "manifest", p + "disk (25.3 GB compressed)", p + "0%", p + "20%", p + "40%",
		p + "60%", p + "80%", p + "100%", p + "NVRAM"}
	if got := take(); !slices.Equal(got, want) {
		t.Errorf("first create progress\n%q\nwant\n%q", got, want)
	}

	create("orchard-second-u-0", v1.ImagePullPolicyAlways)
	digest := strings.TrimSpace(h.mustTart("fqn", macOSImage))
	want = []string{"pulling " + macOSImage, p + "manifest", digest + " image is already cached and linked!"}
	if got := take(); !slices.Equal(got, want) {
		t.Errorf("Always progress\n%q\nwant\n%q", got, want)
	}

	create("orchard-third-u-0", v1.ImagePullPolicyIfNotPresent)
	if got := take(); len(got) != 0 {
		t.Errorf("IfNotPresent of a cached image reported progress %q", got)
	}

	var order []string
	for _, inv := range h.invocations() {
		if inv.Args[0] == "pull" || inv.Args[0] == "clone" {
			order = append(order, strings.Join(inv.Args, " "))
		}
	}
	wantOrder := []string{
		"clone " + macOSImage + " orchard-first-u-0",
		"pull " + macOSImage,
		"clone " + macOSImage + " orchard-second-u-0",
		"clone " + macOSImage + " orchard-third-u-0",
	}
	if !slices.Equal(order, wantOrder) {
		t.Errorf("pulls and clones\n%q\nwant\n%q", order, wantOrder)
	}
}

func TestCreateFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		vmName   string
		vm       v1.VM
		want     string // in the error
		wantIs   error
		exitCode int // of the *Error, 0 when none
	}{
		{name: "image not in registry", vm: v1.VM{Image: "ghcr.io/acme/missing-image:latest"},
			want: `code: 404`, exitCode: 1},
		{name: "local image does not exist", vm: v1.VM{Image: "no-such-vm"},
			want: `the specified VM "no-such-vm" does not exist`, wantIs: ErrNotExist, exitCode: 2},
		{name: "disk smaller than the image's", vm: v1.VM{Image: macOSImage, DiskSize: 10},
			want: "new disk size of 10 GB should be larger than the current disk size of 50 GB", exitCode: 1},
		{name: "fewer CPUs than macOS needs", vm: v1.VM{Image: macOSImage, AssignedCPU: 2},
			want: "VM should have 4 CPU cores at minimum (requested 2)", exitCode: 1},
		{name: "no image", vm: v1.VM{}, want: "no image"},
		{name: "name with a slash", vmName: "orchard/x", vm: v1.VM{Image: macOSImage}, want: "invalid local VM name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, nil, nil)
			name := tt.vmName
			if name == "" {
				name = "orchard-vm-u-0"
			}
			_, err := h.d.Create(context.Background(), name, &tt.vm, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Create = %v, want an error with %q", err, tt.want)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.wantIs)
			}
			var tartErr *Error
			if tt.exitCode != 0 && (!errors.As(err, &tartErr) || tartErr.ExitCode != tt.exitCode) {
				t.Errorf("error %v: want a tart exit code %d", err, tt.exitCode)
			}
			if names := h.localNames(); len(names) != 0 {
				t.Errorf("a failed Create left %v behind", names)
			}
		})
	}
}

func TestStartIPDialStop(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	ctx := context.Background()
	name := v1.LocalNameFor("web", "u1", 0)
	h.create(name, linuxImage)
	exited := h.start(name, &v1.VM{Image: linuxImage})

	list, err := h.d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []worker.Instance{{Name: name, Running: true}}; !slices.Equal(list, want) {
		t.Errorf("List = %v, want %v", list, want)
	}

	ip, err := h.d.IP(ctx, name)
	if err != nil {
		t.Fatalf("IP: %v", err)
	}
	if !strings.HasPrefix(ip, "127.100.") || net.ParseIP(ip) == nil {
		t.Fatalf("IP = %q, want the fake's 127.100.x.y", ip)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	conn, err := h.d.Dial(ctx, name, uint16(ln.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	conn.Close()

	if err := h.d.Stop(ctx, name); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := receive(t, exited); err != nil {
		t.Fatalf("exited after Stop = %v, want nil", err)
	}
	if h.get(name).Running {
		t.Error("the VM still runs after Stop")
	}
	if !contains(h.invoked("run"), []string{"run", "--no-graphics", name}) {
		t.Errorf("runs: %v", h.invoked("run"))
	}
	if !contains(h.invoked("stop"), []string{"stop", "--timeout", "5", name}) {
		t.Errorf("stops: %v", h.invoked("stop"))
	}
	if _, err := h.d.Start(ctx, "orchard-nope-u-0", &v1.VM{NetBridged: "en0", NetSoftnet: true}); err == nil {
		t.Error("Start with bridged and softnet networking succeeded")
	}
}

func TestStartOptions(t *testing.T) {
	t.Parallel()
	// --net-softnet needs a softnet on PATH; the fake only checks it exists.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "softnet"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	shared, cache := t.TempDir(), t.TempDir()
	tests := []struct {
		name  string
		image string
		vm    v1.VM
		want  []string // between "--no-graphics" and NAME
	}{
		{name: "softnet", image: linuxImage, vm: v1.VM{NetSoftnet: true}, want: []string{"--net-softnet"}},
		{name: "softnet kebab", image: linuxImage, vm: v1.VM{NetSoftnetKebab: true}, want: []string{"--net-softnet"}},
		{name: "softnet rules", image: linuxImage,
			vm:   v1.VM{NetSoftnetAllow: []string{"10.0.0.0/8", "192.168.0.0/16"}, NetSoftnetBlock: []string{"0.0.0.0/0"}},
			want: []string{"--net-softnet-allow=10.0.0.0/8,192.168.0.0/16", "--net-softnet-block=0.0.0.0/0"}},
		{name: "bridged", image: linuxImage, vm: v1.VM{NetBridged: "en0"}, want: []string{"--net-bridged=en0"}},
		{name: "nested and suspendable", image: macOSImage, vm: v1.VM{Nested: true, Suspendable: true},
			want: []string{"--nested", "--suspendable"}},
		{name: "host directories", image: linuxImage,
			vm:   v1.VM{HostDirs: []v1.HostDir{{Name: "src", Path: shared, ReadOnly: true}, {Name: "cache", Path: cache}}},
			want: []string{"--dir=src:" + shared + ":ro", "--dir=cache:" + cache}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, []string{"PATH=" + bin + ":" + os.Getenv("PATH")}, nil)
			name := "orchard-opts-u-0"
			h.create(name, tt.image)
			tt.vm.Image = tt.image
			exited := h.start(name, &tt.vm)
			if !h.get(name).Running {
				t.Fatal("the VM does not run after Start")
			}
			want := append(append([]string{"run", "--no-graphics"}, tt.want...), name)
			if runs := h.invoked("run"); !slices.EqualFunc(runs, [][]string{want}, slices.Equal[[]string]) {
				t.Errorf("runs %v, want %v", runs, want)
			}
			if err := h.d.Stop(context.Background(), name); err != nil {
				t.Fatal(err)
			}
			if err := receive(t, exited); err != nil {
				t.Fatalf("exited = %v", err)
			}
		})
	}
}

func TestBridgedIP(t *testing.T) {
	t.Parallel()
	for _, agent := range []bool{true, false} {
		t.Run(map[bool]string{true: "guest agent", false: "arp"}[agent], func(t *testing.T) {
			t.Parallel()
			var env []string
			if !agent {
				env = append(env, "FAKETART_NO_AGENT=1")
			}
			h := newHarness(t, env, func(o *Options) { o.IPWait = time.Second })
			name := "orchard-bridged-u-0"
			h.create(name, linuxImage)
			exited := h.start(name, &v1.VM{Image: linuxImage, NetBridged: "en0"})
			ip, err := h.d.IP(context.Background(), name)
			if err != nil {
				t.Fatalf("IP: %v", err)
			}
			resolvers := []string{}
			for _, args := range h.invoked("ip") {
				if i := slices.Index(args, "--resolver"); i >= 0 {
					resolvers = append(resolvers, args[i+1])
				}
			}
			want := []string{"agent"}
			if !agent {
				want = []string{"agent", "arp"}
			}
			if !slices.Equal(resolvers, want) {
				t.Errorf("resolvers asked %v, want %v", resolvers, want)
			}
			if want := strings.TrimSpace(h.mustTart("ip", name, "--resolver", "arp")); ip != want {
				t.Errorf("IP = %q, the ARP table says %q", ip, want)
			}
			if _, _, code := h.tart("ip", name); code != 1 {
				t.Errorf("a bridged VM answered the DHCP resolver (exit %d)", code)
			}
			if err := h.d.Stop(context.Background(), name); err != nil {
				t.Fatal(err)
			}
			receive(t, exited)
		})
	}
}

func TestIPWaits(t *testing.T) {
	t.Parallel()
	t.Run("for the boot", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, []string{"FAKETART_BOOT_DELAY=1500ms"}, nil)
		name := "orchard-slow-u-0"
		h.create(name, linuxImage)
		exited := h.start(name, &v1.VM{Image: linuxImage})
		ip, err := h.d.IP(context.Background(), name)
		if err != nil || !strings.HasPrefix(ip, "127.100.") {
			t.Fatalf("IP = %q, %v", ip, err)
		}
		h.d.Stop(context.Background(), name)
		receive(t, exited)
	})
	t.Run("until the context ends", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, []string{"FAKETART_BOOT_DELAY=1h"}, nil)
		name := "orchard-never-u-0"
		h.create(name, linuxImage)
		exited := h.start(name, &v1.VM{Image: linuxImage})
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		_, err := h.d.IP(ctx, name)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("IP = %v, want the context's deadline", err)
		}
		h.d.Stop(context.Background(), name)
		receive(t, exited)
	})
	t.Run("not for a stopped VM", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, nil, nil)
		name := "orchard-off-u-0"
		h.create(name, linuxImage)
		_, err := h.d.IP(context.Background(), name)
		if !errors.Is(err, ErrNoIPAddress) || !strings.Contains(err.Error(), "is your VM running?") {
			t.Fatalf("IP = %v, want no IP address", err)
		}
		if runs := h.invoked("ip"); !contains(runs, []string{"ip", "--wait", "0", name}) {
			t.Errorf("ip invocations %v, want a single attempt", runs)
		}
	})
}

func TestGuestShutdown(t *testing.T) {
	t.Parallel()
	for _, reason := range []string{"", "kernel panic"} {
		t.Run("reason "+reason, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, nil, nil)
			name := "orchard-guest-u-0"
			h.create(name, linuxImage)
			exited := h.start(name, &v1.VM{Image: linuxImage})
			if err := os.WriteFile(filepath.Join(h.home, "vms", name, "guest-shutdown"), []byte(reason), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := receive(t, exited); err != nil {
				t.Fatalf("exited after a guest shutdown = %v, want nil", err)
			}
			if h.get(name).Running {
				t.Error("still running")
			}
		})
	}
}

func TestThirdMacOSVM(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	names := []string{"orchard-a-u-0", "orchard-b-u-0", "orchard-c-u-0"}
	for _, n := range names {
		h.create(n, macOSImage)
	}
	// All three at once: exactly one must lose, whichever it is.
	type exit struct {
		i   int
		err error
	}
	exits := make(chan exit, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			ch, err := h.d.Start(context.Background(), n, &v1.VM{Image: macOSImage})
			if err != nil {
				exits <- exit{i, err}
				return
			}
			go func() { exits <- exit{i, <-ch} }()
		})
	}
	wg.Wait()
	var first exit
	select {
	case first = <-exits:
	case <-time.After(30 * time.Second):
		t.Fatal("none of three macOS VMs failed to start")
	}
	var running []string
	for i, n := range names {
		if i != first.i {
			running = append(running, n)
			if !h.get(n).Running {
				t.Errorf("%s does not run", n)
			}
		}
	}
	want := "The number of VMs exceeds the system limit (other running VMs: " + strings.Join(running, ", ") + ")"
	var tartErr *Error
	if !errors.As(first.err, &tartErr) || tartErr.ExitCode != 1 || !strings.Contains(first.err.Error(), want) {
		t.Fatalf("exited = %v, want exit 1 with %q", first.err, want)
	}

	// Linux guests do not count.
	h.create("orchard-linux-u-0", linuxImage)
	linux := h.start("orchard-linux-u-0", &v1.VM{Image: linuxImage})
	if !h.get("orchard-linux-u-0").Running {
		t.Fatal("a Linux VM could not start beside two macOS VMs")
	}

	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, linux); err != nil {
		t.Errorf("exited after Close = %v, want nil", err)
	}
	for range running {
		if e := <-exits; e.err != nil {
			t.Errorf("exited after Close = %v, want nil", e.err)
		}
	}
}

func TestStopForcesAfterTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []string{"FAKETART_IGNORE_SIGINT=1"}, func(o *Options) { o.StopTimeout = time.Second })
	name := "orchard-stubborn-u-0"
	h.create(name, linuxImage)
	exited := h.start(name, &v1.VM{Image: linuxImage})
	if err := h.d.Stop(context.Background(), name); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := receive(t, exited); err != nil {
		t.Fatalf("exited after a forced Stop = %v, want nil", err)
	}
	if !contains(h.invoked("stop"), []string{"stop", "--timeout", "1", name}) {
		t.Errorf("stops: %v", h.invoked("stop"))
	}
}

func TestStopAndDeleteQuietCases(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	ctx := context.Background()
	name := "orchard-idle-u-0"
	h.create(name, linuxImage)
	if err := h.d.Stop(ctx, name); err != nil {
		t.Errorf("Stop of a stopped VM = %v", err)
	}
	if err := h.d.Stop(ctx, "orchard-missing-u-0"); !errors.Is(err, ErrNotExist) {
		t.Errorf("Stop of a missing VM = %v, want ErrNotExist", err)
	}
	if err := h.d.Delete(ctx, "orchard-missing-u-0"); err != nil {
		t.Errorf("Delete of a missing VM = %v", err)
	}

	exited := h.start(name, &v1.VM{Image: linuxImage})
	if err := h.d.Delete(ctx, name); err != nil {
		t.Fatalf("Delete of a running VM: %v", err)
	}
	if err := receive(t, exited); err != nil {
		t.Errorf("exited after Delete = %v", err)
	}
	if names := h.localNames(); len(names) != 0 {
		t.Errorf("left after Delete: %v", names)
	}
}

func TestSuspend(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	ctx := context.Background()
	name := "orchard-sleepy-u-0"
	h.create(name, macOSImage)
	vm := &v1.VM{Image: macOSImage, Suspendable: true}
	exited := h.start(name, vm)
	if err := h.d.Suspend(ctx, name); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if err := receive(t, exited); err != nil {
		t.Fatalf("exited after Suspend = %v", err)
	}
	if state := h.get(name).State; state != "suspended" {
		t.Fatalf("state after Suspend = %q", state)
	}
	list, err := h.d.List(ctx)
	if err != nil || !slices.Equal(list, []worker.Instance{{Name: name}}) {
		t.Errorf("List = %v, %v", list, err)
	}

	exited = h.start(name, vm) // resumes
	if state := h.get(name).State; state != "running" {
		t.Fatalf("state after resuming = %q", state)
	}
	h.d.Stop(ctx, name)
	receive(t, exited)

	other := "orchard-awake-u-0"
	h.create(other, macOSImage)
	exited = h.start(other, &v1.VM{Image: macOSImage})
	if err := h.d.Suspend(ctx, other); err == nil || !strings.Contains(err.Error(), "without suspendable") {
		t.Fatalf("Suspend of a VM started without suspendable = %v", err)
	}
	if !h.get(other).Running {
		t.Error("a refused Suspend stopped the VM")
	}
	h.d.Stop(ctx, other)
	receive(t, exited)
}

func TestAdoption(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	ctx := context.Background()
	a, b := "orchard-a-u-0", "orchard-b-u-0"
	h.mustTart("clone", linuxImage, a)
	h.mustTart("clone", linuxImage, b)
	h.mustTart("clone", linuxImage, "not-ours")

	previous := h.startElsewhere(a)
	h.startElsewhere("not-ours")

	list, err := h.d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []worker.Instance{{Name: a, Running: true}, {Name: b}}; !slices.Equal(list, want) {
		t.Fatalf("List = %v, want %v", list, want)
	}

	exited := h.start(a, &v1.VM{Image: linuxImage})
	if runs := h.invoked("run"); len(runs) != 2 {
		t.Fatalf("Start of a running VM ran tart again: %v", runs)
	}
	ip, err := h.d.IP(ctx, a)
	if err != nil || !strings.HasPrefix(ip, "127.100.") {
		t.Fatalf("IP of the adopted VM = %q, %v", ip, err)
	}
	if err := h.d.Stop(ctx, a); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := receive(t, exited); err != nil {
		t.Fatalf("exited = %v", err)
	}
	if err := previous(); err != nil {
		t.Errorf("the previous worker's tart run ended with %v, want exit 0", err)
	}

	// An adopted VM whose guest shuts down.
	h.startElsewhere(a)
	exited = h.start(a, &v1.VM{Image: linuxImage})
	if err := os.WriteFile(filepath.Join(h.home, "vms", a, "guest-shutdown"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, exited); err != nil {
		t.Fatalf("exited after a guest shutdown = %v", err)
	}

	// Closing the driver leaves adopted VMs running for the next worker.
	h.startElsewhere(a)
	exited = h.start(a, &v1.VM{Image: linuxImage})
	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := receive(t, exited); !errors.Is(err, ErrClosed) {
		t.Fatalf("exited after Close = %v, want ErrClosed", err)
	}
	if !h.d.running(a) {
		t.Fatal("Close stopped an adopted VM")
	}
	if _, err := h.d.Start(ctx, b, &v1.VM{Image: linuxImage}); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	for _, stubborn := range []bool{false, true} {
		t.Run(map[bool]string{false: "interrupt", true: "kill after grace"}[stubborn], func(t *testing.T) {
			t.Parallel()
			var env []string
			if stubborn {
				env = append(env, "FAKETART_IGNORE_SIGINT=1")
			}
			h := newHarness(t, env, func(o *Options) { o.InterruptGrace = 300 * time.Millisecond })
			var channels []<-chan error
			for _, n := range []string{"orchard-x-u-0", "orchard-y-u-0"} {
				h.create(n, linuxImage)
				channels = append(channels, h.start(n, &v1.VM{Image: linuxImage}))
			}
			if err := h.d.Close(); err != nil {
				t.Fatal(err)
			}
			for _, ch := range channels {
				if err := receive(t, ch); err != nil {
					t.Errorf("exited after Close = %v, want nil", err)
				}
			}
			for _, n := range []string{"orchard-x-u-0", "orchard-y-u-0"} {
				if h.d.running(n) {
					t.Errorf("%s still runs after Close", n)
				}
			}
			if err := h.d.Close(); err != nil {
				t.Errorf("second Close = %v", err)
			}
		})
	}
}

func TestStartFailures(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	ctx := context.Background()
	exited := h.start("orchard-ghost-u-0", &v1.VM{Image: linuxImage})
	err := receive(t, exited)
	if !errors.Is(err, ErrNotExist) || !strings.Contains(err.Error(), `Error: the specified VM "orchard-ghost-u-0" does not exist`) {
		t.Fatalf("exited for a missing VM = %v", err)
	}

	// A context that ends before tart has started the VM: Start gives
	// up and interrupts tart, which must not linger.
	slow := newHarness(t, []string{"FAKETART_START_DELAY=1h"}, nil)
	slow.create("orchard-slow-u-0", linuxImage)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := slow.d.Start(short, "orchard-slow-u-0", &v1.VM{Image: linuxImage}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start with an expiring context = %v", err)
	}
	runs := slow.invocations()
	pid := runs[len(runs)-1].PID
	waitUntil(t, "the interrupted tart run exits", func() bool { return syscall.Kill(pid, 0) != nil })

	name := "orchard-twice-u-0"
	h.create(name, linuxImage)
	first := h.start(name, &v1.VM{Image: linuxImage})
	if _, err := h.d.Start(ctx, name, &v1.VM{Image: linuxImage}); err == nil || !strings.Contains(err.Error(), "already started") {
		t.Errorf("second Start = %v", err)
	}
	h.d.Stop(ctx, name)
	receive(t, first)
}

// TestSecretsStayOut runs failing commands with registry credentials in
// the environment and checks that the password shows up nowhere.
func TestSecretsStayOut(t *testing.T) {
	t.Parallel()
	const password = "hunter2-registry-password"
	logs := &syncBuffer{}
	h := newHarness(t, []string{"TART_REGISTRY_USERNAME=robot", "TART_REGISTRY_PASSWORD=" + password}, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	ctx := context.Background()
	var errs []error
	_, err := h.d.Create(ctx, "orchard-s-u-0", &v1.VM{Image: "ghcr.io/acme/missing:latest"}, nil)
	errs = append(errs, err)
	errs = append(errs, receive(t, h.start("orchard-nothing-u-0", &v1.VM{})))
	_, err = h.d.IP(ctx, "orchard-nothing-u-0")
	errs = append(errs, err)
	for _, err := range errs {
		if err == nil {
			t.Fatal("a command that should fail did not")
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("error %q holds the registry password", err)
		}
	}
	h.d.Close()
	if strings.Contains(logs.String(), password) {
		t.Error("the logs hold the registry password")
	}
	if logs.String() == "" {
		t.Error("nothing was logged")
	}
	b, _ := os.ReadFile(filepath.Join(h.home, "faketart", "invocations.log"))
	if strings.Contains(string(b), password) {
		t.Error("tart was given the password as an argument")
	}
}
