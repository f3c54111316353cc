package local

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/worker"
)

// helperEnv makes the test binary act as a worker that a test then kills
// (TestNewEndsWhatAPreviousRunLeft).
const helperEnv = "ORCHARD_LOCAL_TEST_HELPER_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		runHelperWorker(dir)
		return
	}
	os.Exit(m.Run())
}

// runHelperWorker starts a VM with a daemon in it, prints the daemon's
// pid and waits to be killed, as a worker that crashes would leave things.
func runHelperWorker(dir string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	d, err := New(ctx, Options{Dir: dir})
	if err != nil {
		fail(err)
	}
	if _, err := d.Create(ctx, "orchard-left-0", &v1.VM{}, nil); err != nil {
		fail(err)
	}
	if _, err := d.Start(ctx, "orchard-left-0", &v1.VM{}); err != nil {
		fail(err)
	}
	client, err := sshLogin(ctx, d, "orchard-left-0", defaultUser, defaultPasswd)
	if err != nil {
		fail(err)
	}
	sess, err := client.NewSession()
	if err != nil {
		fail(err)
	}
	out, err := sess.Output("setsid sh -c 'echo $$ > daemon.pid; exec sleep 300' </dev/null >/dev/null 2>&1 & " +
		"while [ ! -s daemon.pid ]; do sleep 0.01; done; cat daemon.pid")
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
	select {}
}

func TestNewEndsWhatAPreviousRunLeft(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("finding a previous run's processes needs /proc")
	}
	t.Parallel()
	dir := t.TempDir()
	keep := filepath.Join(dir, "not-a-vm")
	if err := os.Mkdir(keep, 0o700); err != nil {
		t.Fatal(err)
	}

	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"="+dir)
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		helper.Process.Kill()
		helper.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper printed %q: %v", line, err)
	}
	pids := parsePIDs(t, line)
	if !processAlive(pids[0]) {
		t.Fatalf("the daemon %d is not running", pids[0])
	}

	// While the helper holds the directory, no second driver may take it.
	if d, err := New(testContext(t), Options{Dir: dir}); err == nil {
		d.Close()
		t.Fatal("a second driver opened a directory in use")
	}

	// The worker crashes.
	helper.Process.Kill()
	helper.Wait()
	if !processAlive(pids[0]) {
		t.Fatal("the daemon died with the worker: the test shows nothing")
	}

	d, err := New(testContext(t), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if processAlive(pids[0]) {
		t.Errorf("the previous run's daemon %d survived New", pids[0])
	}
	if _, err := os.Stat(filepath.Join(dir, "orchard-left-0")); !os.IsNotExist(err) {
		t.Errorf("the previous run's vm directory is still there: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a directory that is not a vm was removed: %v", err)
	}
	list, err := d.List(testContext(t))
	if err != nil || len(list) != 0 {
		t.Errorf("List after restart = %v, %v; want nothing", list, err)
	}
	// The name is free again.
	startVM(t, d, "orchard-left-0", nil)
}

// daemonScript starts daemons that leave the command's process group in
// different ways, one of them ignoring SIGTERM, and prints their pids.
const daemonScript = `
nohup sleep 300 >/dev/null 2>&1 &
echo $!
setsid sh -c 'echo $$ > setsid.pid; exec sleep 300' </dev/null >/dev/null 2>&1 &
sh -c '(trap "" TERM; sleep 300 </dev/null >/dev/null 2>&1 & echo $! > double.pid) &' </dev/null >/dev/null 2>&1
while [ ! -s setsid.pid ] || [ ! -s double.pid ]; do sleep 0.01; done
cat setsid.pid double.pid
`

func TestStopAndDeleteEndDaemons(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("daemons that left the process group are found through /proc only")
	}
	t.Parallel()
	for _, op := range []string{"Delete", "Stop", "Suspend", "Close"} {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			d := newTestDriver(t)
			name := "orchard-daemons-" + strings.ToLower(op)
			exited := startVM(t, d, name, nil)
			client := mustSSH(t, d, name)
			pids := parsePIDs(t, mustRun(t, client, daemonScript))
			if len(pids) != 3 {
				t.Fatalf("got pids %v, want 3", pids)
			}
			for _, pid := range pids {
				if !processAlive(pid) {
					t.Fatalf("daemon %d not running before %s", pid, op)
				}
			}

			ctx := testContext(t)
			var err error
			switch op {
			case "Delete":
				err = d.Delete(ctx, name)
			case "Stop":
				err = d.Stop(ctx, name)
			case "Suspend":
				err = d.Suspend(ctx, name)
			case "Close":
				err = d.Close()
			}
			if err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			// Gone when the call returns, not some time later.
			for _, pid := range pids {
				if processAlive(pid) {
					t.Errorf("daemon %d survived %s", pid, op)
				}
			}
			if err := waitExited(t, exited); err != nil {
				t.Errorf("exited = %v, want nil", err)
			}
			_, statErr := os.Stat(filepath.Join(d.dir, name))
			if gone := os.IsNotExist(statErr); gone != (op == "Delete") {
				t.Errorf("after %s the vm directory exists: %v", op, !gone)
			}
		})
	}
}

func TestStopWaitsForCommands(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-busy", nil)
	client := mustSSH(t, d, "orchard-busy")

	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// A command that cleans up on SIGTERM: the grace lets it.
	if err := sess.Start(`trap 'echo cleaned > cleanup; exit 0' TERM; echo started; while :; do sleep 0.05; done`); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "started\n" {
		t.Fatalf("read %q, %v", line, err)
	}
	if err := d.Stop(testContext(t), "orchard-busy"); err != nil {
		t.Fatal(err)
	}
	// The client learns that its command ended (the trap exits 0).
	if err := sess.Wait(); err != nil {
		t.Errorf("the stopped command's client got %v, want exit status 0", err)
	}
	data, err := os.ReadFile(filepath.Join(d.dir, "orchard-busy", "cleanup"))
	if err != nil || string(data) != "cleaned\n" {
		t.Errorf("the command's TERM trap did not run before Stop returned: %q, %v", data, err)
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	ctx := testContext(t)
	const name = "orchard-life"

	imageFQN, err := d.Create(ctx, name, &v1.VM{Image: "ghcr.io/cirruslabs/macos-sonoma-base:latest"}, func(string) {
		t.Error("progress called")
	})
	if err != nil || imageFQN != "" {
		t.Fatalf("Create = %q, %v; want no image", imageFQN, err)
	}
	if info, err := os.Stat(filepath.Join(d.dir, name)); err != nil || info.Mode().Perm() != 0o700 {
		t.Fatalf("vm directory: %v, %v; want mode 0700", info, err)
	}
	if running(t, d, name) {
		t.Error("created vm reported running")
	}
	if _, err := d.IP(ctx, name); err == nil {
		t.Error("IP of a stopped vm succeeded")
	}
	if _, err := d.Dial(ctx, name, 22); err == nil {
		t.Error("Dial of a stopped vm succeeded")
	}

	for round := range 2 {
		exited, err := d.Start(ctx, name, &v1.VM{})
		if err != nil {
			t.Fatalf("round %d: Start: %v", round, err)
		}
		if !running(t, d, name) {
			t.Errorf("round %d: started vm not running", round)
		}
		if _, err := d.Start(ctx, name, &v1.VM{}); err == nil {
			t.Errorf("round %d: second Start succeeded", round)
		}
		client := mustSSH(t, d, name)
		mustRun(t, client, fmt.Sprintf("echo %d >> rounds", round))
		if err := d.Stop(ctx, name); err != nil {
			t.Fatalf("round %d: Stop: %v", round, err)
		}
		if err := waitExited(t, exited); err != nil {
			t.Errorf("round %d: exited = %v", round, err)
		}
		if running(t, d, name) {
			t.Errorf("round %d: stopped vm running", round)
		}
		if err := d.Stop(ctx, name); err != nil {
			t.Errorf("round %d: Stop of a stopped vm: %v", round, err)
		}
	}
	// The directory, with what the commands wrote, survived the stops.
	if data, err := os.ReadFile(filepath.Join(d.dir, name, "rounds")); err != nil || string(data) != "0\n1\n" {
		t.Errorf("rounds = %q, %v", data, err)
	}

	if err := d.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.dir, name)); !os.IsNotExist(err) {
		t.Errorf("vm directory after Delete: %v", err)
	}
	if list, _ := d.List(ctx); len(list) != 0 {
		t.Errorf("List after Delete = %v", list)
	}
	if err := d.Delete(ctx, name); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	// The name can be used again.
	if _, err := d.Create(ctx, name, &v1.VM{}, nil); err != nil {
		t.Errorf("Create after Delete: %v", err)
	}
}

func TestDeleteRunningVMWithoutCommands(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	exited := startVM(t, d, "orchard-idle", nil)
	if err := d.Delete(testContext(t), "orchard-idle"); err != nil {
		t.Fatal(err)
	}
	if err := waitExited(t, exited); err != nil {
		t.Errorf("exited = %v", err)
	}
}

func TestUnknownNames(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	ctx := testContext(t)
	const name = "orchard-nobody"

	if _, err := d.Start(ctx, name, &v1.VM{}); err == nil || !strings.Contains(err.Error(), "no such vm") {
		t.Errorf("Start: %v, want no such vm", err)
	}
	if _, err := d.Dial(ctx, name, 22); err == nil || !strings.Contains(err.Error(), "no such vm") {
		t.Errorf("Dial: %v, want no such vm", err)
	}
	if _, err := d.IP(ctx, name); err == nil || !strings.Contains(err.Error(), "no such vm") {
		t.Errorf("IP: %v, want no such vm", err)
	}
	for op, f := range map[string]func(context.Context, string) error{"Stop": d.Stop, "Suspend": d.Suspend, "Delete": d.Delete} {
		if err := f(ctx, name); err != nil {
			t.Errorf("%s of a missing vm: %v", op, err)
		}
	}
}

func TestCreateRejectsBadNames(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	ctx := testContext(t)
	for _, name := range []string{"", ".", "..", "a/b", "../escape", "/abs", ".hidden", "-flag", "sp ace", "quo'te", "new\nline", strings.Repeat("a", maxNameLength+1)} {
		if _, err := d.Create(ctx, name, &v1.VM{}, nil); err == nil {
			t.Errorf("Create(%q) succeeded", name)
		}
	}
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("a bad name made directory %q", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(d.dir), "escape")); !os.IsNotExist(err) {
		t.Errorf("a name escaped the driver directory")
	}

	if _, err := d.Create(ctx, "orchard-twice", &v1.VM{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Create(ctx, "orchard-twice", &v1.VM{}, nil); err == nil {
		t.Error("second Create of one name succeeded")
	}
}

func TestGuestShutdown(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, command string }{
		{"sudo shutdown", "sudo shutdown -h now"},
		{"shutdown", "shutdown -h now"},
		{"halt", "halt"},
		{"poweroff", "poweroff"},
		{"sudo with options", "sudo -n -E poweroff"},
		// A path that does not exist: if the sudo shim did not map it to
		// the shim, nothing would run at all.
		{"sudo by path", "sudo /no/such/dir/shutdown -h now"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newTestDriver(t)
			name := vmName(i)
			exited := startVM(t, d, name, nil)
			client := mustSSH(t, d, name)

			// The host's shutdown must never run: CI runs as root. Check
			// that the VM's commands resolve to the shims first.
			bin := filepath.Join(d.dir, name, ".orchard", "bin")
			for _, cmd := range []string{"shutdown", "halt", "poweroff", "sudo"} {
				if got := strings.TrimSpace(mustRun(t, client, "command -v "+cmd)); got != filepath.Join(bin, cmd) {
					t.Fatalf("%s resolves to %q in the VM, want the shim", cmd, got)
				}
			}
			// Like macOS's shutdown, the shim returns; the VM then stops.
			if _, stderr, err := run(t, client, tt.command, nil); err != nil {
				t.Errorf("%s: %v (stderr %q)", tt.command, err, stderr)
			}
			if err := waitExited(t, exited); err != nil {
				t.Errorf("exited = %v, want nil", err)
			}
			if running(t, d, name) {
				t.Error("vm still running after the guest shut down")
			}
			if _, err := d.Dial(testContext(t), name, 22); err == nil {
				t.Error("Dial after the guest shut down succeeded")
			}
			// The VM can start again.
			if _, err := d.Start(testContext(t), name, &v1.VM{}); err != nil {
				t.Errorf("Start after a guest shutdown: %v", err)
			}
		})
	}
}

func TestPowerShimRefusals(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-reboot", nil)
	client := mustSSH(t, d, "orchard-reboot")
	tests := []struct{ command, stderr string }{
		{"sudo shutdown -r now", "reboot is not supported"},
		{"shutdown --reboot", "reboot is not supported"},
		{"halt -fr", "reboot is not supported"},
		{"env -u " + markerVar + " poweroff", "not in a local Orchard VM"},
	}
	for _, tt := range tests {
		_, stderr, err := run(t, client, tt.command, nil)
		if err == nil || !strings.Contains(stderr, tt.stderr) {
			t.Errorf("%s: %v, stderr %q; want refused with %q", tt.command, err, stderr, tt.stderr)
		}
	}
	if !running(t, d, "orchard-reboot") {
		t.Error("a refused reboot stopped the vm")
	}
}

func TestSudoShim(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	startVM(t, d, "orchard-sudo", nil)
	client := mustSSH(t, d, "orchard-sudo")
	uid := fmt.Sprint(os.Getuid())

	tests := []struct {
		command, want string
		ok            bool
	}{
		{"sudo id -u", uid + "\n", true},
		{"sudo -u root -H id -u", uid + "\n", true},
		{"sudo -n -- echo a b", "a b\n", true},
		{"sudo FOO=bar sh -c 'echo $FOO'", "bar\n", true},
		{"sudo sh -c 'exit 5'", "", false},
		{"sudo", "", false},
	}
	for _, tt := range tests {
		out, _, err := run(t, client, tt.command, nil)
		if out != tt.want || (err == nil) != tt.ok {
			t.Errorf("%s: %q, %v; want %q, ok %v", tt.command, out, err, tt.want, tt.ok)
		}
	}
}

func TestAddressesAreDistinct(t *testing.T) {
	t.Parallel()
	drivers := []*Driver{newTestDriver(t), newTestDriver(t)}
	const perDriver = 40
	seen := make(map[string]string)
	for di, d := range drivers {
		for i := range perDriver {
			name := vmName(i)
			startVM(t, d, name, nil)
			ip, err := d.IP(testContext(t), name)
			if err != nil {
				t.Fatal(err)
			}
			addr := netip.MustParseAddr(ip)
			key := ip
			if d.addrs.shared {
				if ip != "127.0.0.1" {
					t.Errorf("shared addressing gave %s", ip)
				}
				key = d.vms[name].addr.String() // distinct ports then
			} else {
				if !vmNetwork.Contains(addr) {
					t.Errorf("%s outside %s", ip, vmNetwork)
				}
				if last := addr.As4()[3]; last == 0 || last == 255 {
					t.Errorf("address %s ends in %d", ip, last)
				}
				// Claimed at the preferred port: 22 when privileged.
				if port := d.vms[name].addr.Port(); port != d.addrs.port {
					t.Errorf("%s listens on port %d, want %d", name, port, d.addrs.port)
				}
			}
			owner := fmt.Sprintf("driver %d %s", di, name)
			if prev, dup := seen[key]; dup {
				t.Errorf("%s and %s share %s", prev, owner, key)
			}
			seen[key] = owner
		}
	}
	// Every VM answers on its own address.
	for _, d := range drivers[:1] {
		for i := range 3 {
			client := mustSSH(t, d, vmName(i))
			if out := mustRun(t, client, "echo $ORCHARD_LOCAL_VM"); out != d.id+"/"+vmName(i)+"\n" {
				t.Errorf("vm %d answered as %q", i, out)
			}
		}
	}
}

func TestAddressTakenByAnotherProcessIsSkipped(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	if d.addrs.shared {
		t.Skip("addresses are shared on this host")
	}
	startVM(t, d, "orchard-first", nil)
	first := d.vms["orchard-first"].addr
	if err := d.Stop(testContext(t), "orchard-first"); err != nil {
		t.Fatal(err)
	}
	// Someone else (another worker on the host) takes the address.
	squatter, err := net.Listen("tcp", first.String())
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	if _, err := d.Start(testContext(t), "orchard-first", &v1.VM{}); err != nil {
		t.Fatal(err)
	}
	if again := d.vms["orchard-first"].addr; again.Addr() == first.Addr() {
		t.Errorf("restarted on the taken address %s", again)
	}
}

func TestRestartKeepsAddressWhenFree(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	if d.addrs.shared {
		t.Skip("addresses are shared on this host")
	}
	startVM(t, d, "orchard-same", nil)
	ip1, _ := d.IP(testContext(t), "orchard-same")
	d.Stop(testContext(t), "orchard-same")
	d.Start(testContext(t), "orchard-same", &v1.VM{})
	ip2, _ := d.IP(testContext(t), "orchard-same")
	if ip1 != ip2 {
		t.Errorf("address changed from %s to %s across a restart", ip1, ip2)
	}
}

func TestDetectAddressing(t *testing.T) {
	t.Parallel()
	a := detectAddressing()
	if runtime.GOOS == "linux" && a.shared {
		t.Fatal("Linux routes all of 127.0.0.0/8, yet addressing is shared")
	}
	if a.shared {
		return
	}
	// Port 22 is chosen only if this process could bind it somewhere.
	switch a.port {
	case 22:
		ln, err := net.Listen("tcp", netip.AddrPortFrom(randomVMAddr(), 22).String())
		if err != nil {
			t.Fatalf("port 22 chosen but not bindable: %v", err)
		}
		ln.Close()
	case unprivilegedSSHPort:
		if os.Geteuid() == 0 {
			t.Logf("root, yet port %d: something holds port 22 on every address", a.port)
		}
	default:
		t.Fatalf("preferred port %d", a.port)
	}
}

func TestRandomVMAddr(t *testing.T) {
	t.Parallel()
	for range 10000 {
		a := randomVMAddr()
		if !vmNetwork.Contains(a) {
			t.Fatalf("%s outside %s", a, vmNetwork)
		}
		if last := a.As4()[3]; last == 0 || last == 255 {
			t.Fatalf("%s ends in %d", a, last)
		}
	}
}

func TestIgnored(t *testing.T) {
	t.Parallel()
	d := &Driver{}
	tests := []struct {
		name string
		vm   v1.VM
		want []string
	}{
		{"nothing set", v1.VM{}, []string{"image"}},
		{"image only", v1.VM{Image: "ghcr.io/x/y:1"}, []string{"image"}},
		{"resources", v1.VM{CPU: 4, Memory: 8192, DiskSize: 50}, []string{"image", "cpu", "memory", "diskSize"}},
		{"pull policy", v1.VM{ImagePullPolicy: v1.ImagePullPolicyAlways}, []string{"image", "imagePullPolicy"}},
		{"networking", v1.VM{NetBridged: "en0", NetSoftnetKebab: true, NetSoftnet: true, NetSoftnetAllow: []string{"10.0.0.0/8"}, NetSoftnetBlock: []string{"0.0.0.0/0"}},
			[]string{"image", "net-bridged", "netSoftnet", "netSoftnetAllow", "netSoftnetBlock"}},
		{"guest features", v1.VM{Nested: true, HostDirs: []v1.HostDir{{Name: "src", Path: "/src"}}, Suspendable: true, RandomSerial: true},
			[]string{"image", "nested", "hostDirs", "suspendable", "randomSerial"}},
		{"suspended", v1.VM{PowerState: v1.PowerStateSuspended}, []string{"image", "powerState"}},
		{"stopped is honoured", v1.VM{PowerState: v1.PowerStateStopped}, []string{"image"}},
		{"running is honoured", v1.VM{PowerState: v1.PowerStateRunning}, []string{"image"}},
		{"credentials are honoured", v1.VM{Username: "u", Password: "p", Headless: true}, []string{"image"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := d.Ignored(&tt.vm); !slices.Equal(got, tt.want) {
				t.Errorf("Ignored = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestKind(t *testing.T) {
	var d worker.Driver = &Driver{}
	if d.Kind() != v1.DriverLocal {
		t.Errorf("Kind = %q", d.Kind())
	}
}

func TestHostKeyStableAcrossRestarts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var keys [][]byte
	for range 2 {
		d, err := New(testContext(t), Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, d.hostKey.PublicKey().Marshal())
		if got := d.hostKey.PublicKey().Type(); got != "ssh-ed25519" {
			t.Errorf("host key type %s", got)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(keys[0], keys[1]) {
		t.Error("the host key changed across a restart")
	}
	info, err := os.Stat(filepath.Join(dir, hostKeyFile))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("host key file: %v, %v; want mode 0600", info, err)
	}

	// A damaged key is an error, not a silent new key.
	if err := os.WriteFile(filepath.Join(dir, hostKeyFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if d, err := New(testContext(t), Options{Dir: dir}); err == nil {
		d.Close()
		t.Error("New accepted a damaged host key")
	}
}

func TestNewRequiresDir(t *testing.T) {
	if _, err := New(context.Background(), Options{}); err == nil {
		t.Error("New without Dir succeeded")
	}
}

func TestClosedDriverRefusesWork(t *testing.T) {
	t.Parallel()
	d, err := New(testContext(t), Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	startVM(t, d, "orchard-closing", nil)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ctx := testContext(t)
	if _, err := d.Create(ctx, "orchard-late", &v1.VM{}, nil); err == nil {
		t.Error("Create after Close succeeded")
	}
	if _, err := d.Start(ctx, "orchard-closing", &v1.VM{}); err == nil {
		t.Error("Start after Close succeeded")
	}
	// The directory stays for a later Delete or New.
	if _, err := os.Stat(filepath.Join(d.dir, "orchard-closing")); err != nil {
		t.Errorf("Close removed the vm directory: %v", err)
	}
}

func TestNoGoroutinesLeftAfterClose(t *testing.T) {
	// Counting goroutines: not parallel.
	ctx := testContext(t)
	before := runtime.NumGoroutine()
	d, err := New(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var clients []*ssh.Client
	for i := range 3 {
		startVM(t, d, vmName(i), nil)
		client, err := sshLogin(ctx, d, vmName(i), defaultUser, defaultPasswd)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, client)
		mustRun(t, client, "echo hi")
		// A session still running when the driver closes.
		sess, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if err := sess.Start("sleep 300"); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		c.Close()
	}
	deadline := time.Now().Add(testTimeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConcurrentVMs(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			ctx := testContext(t)
			name := vmName(i)
			if _, err := d.Create(ctx, name, &v1.VM{}, nil); err != nil {
				errs <- err
				return
			}
			if _, err := d.Start(ctx, name, &v1.VM{}); err != nil {
				errs <- err
				return
			}
			client, err := dialSSH(t, d, name, defaultUser, defaultPasswd)
			if err != nil {
				errs <- err
				return
			}
			defer client.Close()
			sess, err := client.NewSession()
			if err != nil {
				errs <- err
				return
			}
			out, err := sess.Output("sleep 300 >/dev/null 2>&1 & echo $ORCHARD_LOCAL_VM")
			if err != nil || string(out) != d.id+"/"+name+"\n" {
				errs <- fmt.Errorf("%s: %q, %v", name, out, err)
				return
			}
			if err := d.Delete(ctx, name); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if runtime.GOOS == "linux" {
		procs, err := scanProcesses()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range procs {
			if strings.HasPrefix(p.marker, markerVar+"="+d.id+"/") {
				t.Errorf("process %d of %s outlived its vm", p.pid, p.marker)
				syscall.Kill(p.pid, syscall.SIGKILL)
			}
		}
	}
}

// BenchmarkStartDelete measures the cost of one VM's whole life without a
// command: what the load tests pay per VM.
func BenchmarkStartDelete(b *testing.B) {
	d := newTestDriver(b)
	ctx := context.Background()
	vm := &v1.VM{}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		name := vmName(i)
		if _, err := d.Create(ctx, name, vm, nil); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Start(ctx, name, vm); err != nil {
			b.Fatal(err)
		}
		if err := d.Delete(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStartExecDelete adds an SSH login and one command, and so the
// scan of the process table on Delete.
func BenchmarkStartExecDelete(b *testing.B) {
	d := newTestDriver(b)
	ctx := context.Background()
	vm := &v1.VM{}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		name := vmName(i)
		if _, err := d.Create(ctx, name, vm, nil); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Start(ctx, name, vm); err != nil {
			b.Fatal(err)
		}
		client, err := dialSSH(b, d, name, defaultUser, defaultPasswd)
		if err != nil {
			b.Fatal(err)
		}
		sess, err := client.NewSession()
		if err != nil {
			b.Fatal(err)
		}
		if err := sess.Run("true"); err != nil {
			b.Fatal(err)
		}
		client.Close()
		if err := d.Delete(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkManyRunningVMs starts 1,000 VMs in one driver and reports the
// memory and goroutines each costs while idle.
func BenchmarkManyRunningVMs(b *testing.B) {
	const n = 1000
	for b.Loop() {
		d, err := New(context.Background(), Options{Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		goroutines := runtime.NumGoroutine()
		for i := range n {
			if _, err := d.Create(context.Background(), vmName(i), &v1.VM{}, nil); err != nil {
				b.Fatal(err)
			}
			if _, err := d.Start(context.Background(), vmName(i), &v1.VM{}); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-B/vm")
		b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/n, "goroutines/vm")
		if err := d.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestPreferredPortBusyFallsBackToOSPickedPort(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	if d.addrs.shared {
		t.Skip("addresses are shared on this host")
	}
	// Every candidate address has the preferred port taken.
	addr := netip.MustParseAddr("127.64.200.7")
	squatter, err := net.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	d.addrs.port = uint16(squatter.Addr().(*net.TCPAddr).Port)
	d.addrs.pick = func() netip.Addr { return addr }

	startVM(t, d, "orchard-fallback", nil)
	got := d.vms["orchard-fallback"].addr
	if got.Addr() != addr || got.Port() == d.addrs.port || got.Port() == 0 {
		t.Fatalf("listening on %s, want %s with another port", got, addr)
	}
	client := mustSSH(t, d, "orchard-fallback") // Dial(22) finds the real port
	if out := mustRun(t, client, "echo ok"); out != "ok\n" {
		t.Errorf("echo = %q", out)
	}
	// The same driver never gives the address twice.
	if _, err := d.Create(testContext(t), "orchard-fallback-2", &v1.VM{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(testContext(t), "orchard-fallback-2", &v1.VM{}); err == nil {
		t.Error("a second vm got the same address")
	}
}

func TestSharedAddressing(t *testing.T) {
	t.Parallel()
	d := newTestDriver(t)
	// As on macOS, where only 127.0.0.1 routes.
	d.addrs = addressing{shared: true, pick: randomVMAddr}
	ports := make(map[uint16]bool)
	for i := range 3 {
		startVM(t, d, vmName(i), nil)
		ip, err := d.IP(testContext(t), vmName(i))
		if err != nil || ip != "127.0.0.1" {
			t.Fatalf("IP = %q, %v; want 127.0.0.1", ip, err)
		}
		port := d.vms[vmName(i)].addr.Port()
		if ports[port] {
			t.Errorf("port %d given twice", port)
		}
		ports[port] = true
		client := mustSSH(t, d, vmName(i))
		if out := mustRun(t, client, "echo $ORCHARD_LOCAL_VM"); out != d.id+"/"+vmName(i)+"\n" {
			t.Errorf("vm %d answered as %q", i, out)
		}
	}
}
