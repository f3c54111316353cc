package tart

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The fake must reject what Tart rejects, with Tart's exit codes and
// messages: these tests hold it to that, independent of the driver.

func usage(msg, synopsis, cmd string) string {
	see := "tart"
	if cmd != "" {
		see += " " + cmd
	}
	return "Error: " + msg + "\nUsage: " + synopsis + "\n  See '" + see + " --help' for more information.\n"
}

const (
	cloneUsage = "tart clone <source-name> <new-name> [--insecure] [--concurrency <concurrency>] [--prune-limit <n>]"
	runUsage   = "tart run [<options>] <name>"
	setUsage   = "tart set <name> [--cpu <cpu>] [--memory <memory>] [--display <display>] [--display-refit] [--no-display-refit] [--random-mac] [--random-serial] [--disk <path>] [--disk-size <disk-size>]"
	listUsage  = "tart list [--source <source>] [--format <format>] [--quiet]"
	ipUsage    = "tart ip <name> [--wait <wait>] [--resolver <resolver>]"
	stopUsage  = "tart stop <name> [--timeout <timeout>]"
)

func TestFakeTartStrictness(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []string{"PATH=" + t.TempDir()}, nil) // no softnet anywhere
	h.mustTart("clone", linuxImage, "stopped")
	h.mustTart("clone", linuxImage, "running")
	h.mustTart("clone", macOSImage, "mac")
	h.startElsewhere("running")
	waitUntil(t, "the guest boots", func() bool { _, _, code := h.tart("ip", "running"); return code == 0 })

	tests := []struct {
		args   []string
		code   int
		stderr string // exact, unless prefix is set
		prefix bool
	}{
		// Parsing: exit 64, "Error: ...", the usage line.
		{args: []string{"clone", linuxImage}, code: 64, stderr: usage("Missing expected argument '<new-name>'", cloneUsage, "clone")},
		{args: []string{"clone", "stopped", "new", "extra"}, code: 64, stderr: usage("Unexpected argument 'extra'", cloneUsage, "clone")},
		{args: []string{"clone", "stopped", "a/b"}, code: 64, stderr: usage("<new-name> should be a local name", cloneUsage, "clone")},
		{args: []string{"run", "--random-mac", "stopped"}, code: 64, stderr: "Error: Unknown option '--random-mac'", prefix: true},
		{args: []string{"run", "--no-graphic", "stopped"}, code: 64, stderr: usage("Unknown option '--no-graphic'. Did you mean '--no-graphics'?", runUsage, "run")},
		{args: []string{"run", "stopped", "--no-graphics=true"}, code: 64, stderr: usage("The option '--no-graphics' does not take any value, but 'true' was specified.", runUsage, "run")},
		{args: []string{"run", "--net-softnet", "--net-bridged=en0", "stopped"}, code: 64, stderr: usage("--net-bridged, --net-softnet and --net-host are mutually exclusive", runUsage, "run")},
		{args: []string{"run", "--net-softnet-allow=10.0.0.0/8", "--net-host", "stopped"}, code: 64, stderr: usage("--net-bridged, --net-softnet and --net-host are mutually exclusive", runUsage, "run")},
		{args: []string{"run", "--graphics", "--no-graphics", "stopped"}, code: 64, stderr: usage("--graphics and --no-graphics are mutually exclusive", runUsage, "run")},
		{args: []string{"run", "--suspendable", "stopped"}, code: 64, stderr: usage("You can only suspend macOS VMs", runUsage, "run")},
		{args: []string{"run", "--suspendable", "--dir=/tmp", "mac"}, code: 64, stderr: usage("Suspending VMs with shared directories is not supported", runUsage, "run")},
		{args: []string{"run", "--dir=/a", "--dir=/b", "stopped"}, code: 64, stderr: usage("invalid --dir syntax: for multiple directory shares each one of them should be named", runUsage, "run")},
		{args: []string{"run", "--net-bridged=en7", "stopped"}, code: 64, stderr: usage(`no bridge interfaces matched "["en7"]", available interfaces: ["en0"]`, runUsage, "run")},
		{args: []string{"run", "--dir"}, code: 64, stderr: usage("Missing value for '--dir <[name:]path[:options]>'", runUsage, "run")},
		{args: []string{"set", "stopped", "--cpu"}, code: 64, stderr: usage("Missing value for '--cpu <cpu>'", setUsage, "set")},
		{args: []string{"set", "stopped", "--cpu", "--memory", "4096"}, code: 64, stderr: usage("Missing value for '--cpu <cpu>'", setUsage, "set")},
		{args: []string{"set", "stopped", "--cpu", "many"}, code: 64, stderr: usage("The value 'many' is invalid for '--cpu <cpu>'", setUsage, "set")},
		{args: []string{"set", "stopped", "--cpu=70000"}, code: 64, stderr: usage("The value '70000' is invalid for '--cpu <cpu>'", setUsage, "set")},
		{args: []string{"list", "--source", "all"}, code: 64, stderr: usage("'all' is not a valid <source>", listUsage, "list")},
		{args: []string{"list", "--source", "OCI"}, code: 64, stderr: usage("'OCI' is not a valid <source>", listUsage, "list")},
		{args: []string{"list", "--format", "yaml"}, code: 64, stderr: usage("The value 'yaml' is invalid for '--format <format>'. Please provide one of 'text' and 'json'.", listUsage, "list")},
		{args: []string{"list", "-x"}, code: 64, stderr: usage("Unknown option '-x'", listUsage, "list")},
		{args: []string{"ip", "stopped", "--resolver", "mdns"}, code: 64, stderr: usage("The value 'mdns' is invalid for '--resolver <resolver>'. Please provide one of 'dhcp', 'arp' or 'agent'.", ipUsage, "ip")},
		{args: []string{"ip", "stopped", "--wait", "-1"}, code: 64, stderr: usage("Missing value for '--wait <wait>'", ipUsage, "ip")},
		{args: []string{"stop", "stopped", "--timeout=soon"}, code: 64, stderr: usage("The value 'soon' is invalid for '--timeout <timeout>'", stopUsage, "stop")},
		{args: []string{"stop", "--no-graphics", "stopped"}, code: 64, stderr: usage("Unknown option '--no-graphics'", stopUsage, "stop")},
		{args: []string{"delete"}, code: 64, stderr: usage("Missing expected argument '<name> ...'", "tart delete <name> ...", "delete")},
		{args: []string{"create", "new"}, code: 64, stderr: "Error: Please specify either a --from-ipsw or --linux option!", prefix: true},
		{args: []string{"frobnicate"}, code: 64, stderr: usage("Unexpected argument 'frobnicate'", "tart <subcommand>", "")},
		{args: []string{"--frobnicate"}, code: 64, stderr: usage("Unknown option '--frobnicate'", "tart <subcommand>", "")},

		// A missing VM: exit 2 without "Error:", except for run.
		{args: []string{"ip", "missing"}, code: 2, stderr: "the specified VM \"missing\" does not exist\n"},
		{args: []string{"stop", "missing"}, code: 2, stderr: "the specified VM \"missing\" does not exist\n"},
		{args: []string{"get", "missing"}, code: 2, stderr: "the specified VM \"missing\" does not exist\n"},
		{args: []string{"set", "missing", "--cpu", "4"}, code: 2, stderr: "the specified VM \"missing\" does not exist\n"},
		{args: []string{"delete", "missing"}, code: 2, stderr: "the specified VM \"missing\" does not exist\n"},
		{args: []string{"delete", "stopped-not", "stopped"}, code: 2, stderr: "the specified VM \"stopped-not\" does not exist\n"},
		{args: []string{"clone", "missing", "new"}, code: 2, stderr: "the specified VM \"missing\" does not exist\n"},
		{args: []string{"suspend", "missing"}, code: 2, stderr: "the specified VM \"missing\" does not exist\n"},
		{args: []string{"run", "missing"}, code: 1, stderr: "Error: the specified VM \"missing\" does not exist\n"},

		// Running state.
		{args: []string{"stop", "stopped"}, code: 2, stderr: "VM \"stopped\" is not running\n"},
		{args: []string{"suspend", "stopped"}, code: 2, stderr: "VM \"stopped\" is not running\n"},
		{args: []string{"delete", "running"}, code: 1, stderr: "VM \"running\" is running\n"},
		{args: []string{"run", "--no-graphics", "running"}, code: 2, stderr: "VM \"running\" is already running!\n"},
		{args: []string{"ip", "stopped"}, code: 1, stderr: "no IP address found, is your VM running?\n"},
		{args: []string{"ip", "stopped", "--resolver", "agent"}, code: 1, stderr: "no IP address found, is your VM running? (also make sure that Guest agent for Tart is running inside of a VM)\n"},
		{args: []string{"run", "--net-softnet", "stopped"}, code: 1, stderr: "Softnet failed: softnet not found in PATH\n"},

		// Validation in run(): exit 1.
		{args: []string{"set", "mac", "--cpu", "2"}, code: 1, stderr: "Error: VM should have 4 CPU cores at minimum (requested 2)\n"},
		{args: []string{"set", "mac", "--memory", "2048"}, code: 1, stderr: "Error: VM should have 4294967296 bytes of memory at minimum (requested 2147483648)\n"},
		{args: []string{"set", "stopped", "--disk-size", "5"}, code: 1, stderr: "new disk size of 5 GB should be larger than the current disk size of 20 GB\n"},
		{args: []string{"pull", "ghcr.io/acme/missing:latest"}, code: 1, stderr: `Error: UnexpectedHTTPStatusCode(when: "pulling manifest", code: 404`, prefix: true},
		{args: []string{"login", "ghcr.io"}, code: 1, stderr: "Error: faketart does not emulate \"tart login\"\n"},

		// Accepted spellings.
		{args: []string{"set", "stopped", "--cpu=6"}},
		{args: []string{"set", "stopped", "--cpu", "6", "--memory=6144"}},
		{args: []string{"set", "--display", "1920x1080", "stopped"}},
		{args: []string{"get", "--format=json", "stopped"}},
		{args: []string{"list", "-q", "--source=local"}},
		{args: []string{"ip", "--wait=0", "--resolver=agent", "running"}},
		{args: []string{"pull", "stopped"}},
		{args: []string{"--version"}},
		{args: []string{"fqn", "--", "stopped"}},
	}
	for _, tt := range tests {
		stdout, stderr, code := h.tart(tt.args...)
		if code != tt.code {
			t.Errorf("tart %q: exit %d, want %d (stderr %q)", tt.args, code, tt.code, stderr)
			continue
		}
		if tt.prefix && !strings.HasPrefix(stderr, tt.stderr) || !tt.prefix && stderr != tt.stderr {
			t.Errorf("tart %q stderr:\n%q\nwant:\n%q", tt.args, stderr, tt.stderr)
		}
		if tt.code != 0 && tt.code != 64 && stdout != "" && tt.args[0] != "pull" {
			t.Errorf("tart %q printed %q on stdout", tt.args, stdout)
		}
	}
	if got := h.get("stopped"); got.CPU != 6 || got.Memory != 6144 {
		t.Errorf("after set: %+v", got)
	}
}

func TestFakeTartOutputs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	if got := h.mustTart("list", "--format", "json"); got != "[\n\n]\n" {
		t.Errorf("empty list = %q", got)
	}
	if got := h.mustTart("list"); got != "\n" {
		t.Errorf("empty text list = %q", got)
	}

	pull := h.mustTart("pull", linuxImage)
	wantPull := "pulling " + linuxImage + "...\npulling manifest...\npulling disk (1.2 GB compressed)...\n" +
		"0%\n20%\n40%\n60%\n80%\n100%\npulling NVRAM...\n"
	if pull != wantPull {
		t.Errorf("pull printed\n%s\nwant\n%s", pull, wantPull)
	}
	digest := strings.TrimSpace(h.mustTart("fqn", linuxImage))
	if !regexp.MustCompile(`^ghcr\.io/cirruslabs/ubuntu@sha256:[0-9a-f]{64}$`).MatchString(digest) {
		t.Fatalf("fqn = %q", digest)
	}
	if got, want := h.mustTart("pull", linuxImage), "pulling "+linuxImage+"...\npulling manifest...\n"+digest+" image is already cached and linked!\n"; got != want {
		t.Errorf("second pull printed %q, want %q", got, want)
	}
	if got := h.mustTart("clone", linuxImage, "b-vm"); got != "" {
		t.Errorf("clone of a cached image printed %q", got)
	}
	h.mustTart("clone", "b-vm", "a-vm")
	h.mustTart("clone", "b-vm", "a-vm") // onto an existing name: replaced, no complaint

	raw := h.mustTart("list", "--format", "json")
	for _, want := range []string{
		"[\n  {\n    \"Source\" : \"local\",\n    \"Name\" : \"a-vm\",\n",
		`"Name" : "ghcr.io\/cirruslabs\/ubuntu:latest"`,
		`"Name" : "ghcr.io\/cirruslabs\/ubuntu@sha256:`,
		`"Source" : "OCI"`,
	} {
		if !strings.Contains(raw, want) {
			t.Errorf("list json lacks %q:\n%s", want, raw)
		}
	}
	var entries []struct {
		Source, Name, State, Accessed string
		Disk, Size                    int
		Running                       bool
	}
	if err := json.Unmarshal([]byte(raw), &entries); err != nil {
		t.Fatal(err)
	}
	var names, sources []string
	for _, e := range entries {
		names, sources = append(names, e.Name), append(sources, e.Source)
		if e.State != "stopped" || e.Running || e.Disk != 20 {
			t.Errorf("entry %+v", e)
		}
		if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`).MatchString(e.Accessed) {
			t.Errorf("Accessed %q is not ISO 8601 UTC", e.Accessed)
		}
	}
	if want := []string{"a-vm", "b-vm", linuxImage, digest}; !slices.Equal(names, want) {
		t.Errorf("list order %q, want %q", names, want)
	}
	if want := []string{"local", "local", "OCI", "OCI"}; !slices.Equal(sources, want) {
		t.Errorf("sources %q", sources)
	}
	if got := h.mustTart("list", "--source", "oci", "-q"); got != linuxImage+"\n"+digest+"\n" {
		t.Errorf("list --source oci -q = %q", got)
	}
	instances, err := parseList([]byte(raw))
	if err != nil || len(instances) != 0 {
		t.Errorf("parseList of non-orchard VMs = %v, %v", instances, err)
	}

	// Clones share the image's MAC address until tart set --random-mac.
	image := h.config(filepath.Join(h.home, "cache", "OCIs", "ghcr.io", "cirruslabs", "ubuntu", "latest"))
	first := h.config(filepath.Join(h.home, "vms", "b-vm"))
	if first["macAddress"] != image["macAddress"] {
		t.Errorf("the first clone got MAC %v, the image has %v", first["macAddress"], image["macAddress"])
	}
	second := h.config(filepath.Join(h.home, "vms", "a-vm"))
	if second["macAddress"] == first["macAddress"] {
		t.Error("a clone of a VM whose MAC is taken kept it")
	}
	h.mustTart("set", "b-vm", "--random-mac")
	if h.config(filepath.Join(h.home, "vms", "b-vm"))["macAddress"] == first["macAddress"] {
		t.Error("set --random-mac kept the MAC address")
	}

	// Deleting the OCI names removes the cache entries.
	h.mustTart("delete", linuxImage, digest)
	if got := h.mustTart("list", "--source", "oci", "-q"); got != "" {
		t.Errorf("OCI cache after delete: %q", got)
	}

	// Only CI's presence is logged, never an environment value.
	b, err := os.ReadFile(filepath.Join(h.home, "faketart", "invocations.log"))
	if err != nil || !strings.Contains(string(b), `{"args":["pull","`+linuxImage+`"],"pid":`) {
		t.Errorf("invocation log: %s, %v", b, err)
	}
}

func TestFakeTartGuestLifecycle(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	h.mustTart("clone", macOSImage, "mac")
	wait := h.startElsewhere("mac", "--suspendable")
	if got := h.get("mac"); !got.Running || got.State != "running" {
		t.Fatalf("get while running: %+v", got)
	}
	h.mustTart("suspend", "mac")
	if err := wait(); err != nil {
		t.Fatalf("tart run after suspend: %v", err)
	}
	if got := h.get("mac").State; got != "suspended" {
		t.Fatalf("state after suspend = %q", got)
	}
	// Stopping a suspended VM discards its saved state.
	h.mustTart("stop", "mac")
	if got := h.get("mac").State; got != "stopped" {
		t.Fatalf("state after stopping a suspended VM = %q", got)
	}

	// Without --suspendable, SIGUSR1 fails the VM (exit 1).
	wait = h.startElsewhere("mac")
	h.mustTart("suspend", "mac")
	if err := wait(); err == nil || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("tart run of a non-suspendable VM after suspend: %v", err)
	}
	if got := h.get("mac").State; got != "stopped" {
		t.Fatalf("state = %q", got)
	}

	// A lease outlives its VM, as DHCP leases do.
	wait = h.startElsewhere("mac")
	waitUntil(t, "the guest boots", func() bool { _, _, code := h.tart("ip", "mac"); return code == 0 })
	h.mustTart("stop", "--timeout=2", "mac")
	if err := wait(); err != nil {
		t.Fatalf("tart run after stop: %v", err)
	}
	if ip := strings.TrimSpace(h.mustTart("ip", "mac")); !strings.HasPrefix(ip, "127.100.") {
		t.Errorf("stale lease = %q", ip)
	}
}
