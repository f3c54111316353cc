package v1

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares v's JSON with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, v any) []byte {
	t.Helper()
	got, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(want), got) {
		t.Errorf("%s changed:\n%s\nwant:\n%s", name, got, want)
	}
	return got
}

var when = time.Date(2026, 12, 3, 9, 33, 15, 173000000, time.UTC)

func fullVM() *VM {
	return &VM{
		Image: "ghcr.io/cirruslabs/macos-sequoia-base:latest", ImagePullPolicy: ImagePullPolicyAlways, CPU: 4, Memory: 8192, DiskSize: 100,
		NetBridged: "en0", Headless: true, Nested: true,
		Status: VMStatusRunning, StatusMessage: "VM is running", Worker: "mac-1",
		Username: "admin", Password: "admin", StartupScript: &VMScript{ScriptContent: "echo hi", Env: map[string]string{"K": "V"}},
		RestartPolicy: RestartPolicyOnFailure, RestartedAt: when, RestartCount: 1, RandomSerial: true,
		UID: "c162fc95-0000-4000-8000-000000000000", Resources: Resources{ResourceTartVMs: 1}, Labels: Labels{"model": "m2"},
		HostDirs: []HostDir{{Name: "src", Path: "/Users/ci/src", ReadOnly: true}}, ImageFQN: "ghcr.io/cirruslabs/macos-sequoia-base@sha256:abc",
		ScheduledAt: when, StartedAt: when, Generation: 2,
		OS: OSDarwin, Arch: ArchARM64, Runtime: RuntimeTart, NetSoftnetKebab: true, NetSoftnet: true,
		NetSoftnetAllow: []string{"192.168.0.0/24"}, NetSoftnetBlock: []string{"66.66.0.0/16"}, Suspendable: true, PowerState: PowerStateRunning,
		LocalName: "orchard-vm1-c162fc95-0000-4000-8000-000000000000-1", TartName: "orchard-vm1-c162fc95-0000-4000-8000-000000000000-1",
		ObservedGeneration: 2, Conditions: []Condition{{Type: ConditionScheduled, State: ConditionTrue}, {Type: ConditionRunning, State: ConditionTrue}},
		AssignedCPU: 4, AssignedMemory: 8192,
		Meta: Meta{Name: "vm1", CreatedAt: when, Version: 11},
	}
}

// The shapes below are written from Orchard's documented field lists
// (reference/orchard-v1.md, sections 2.2 and 2.3): what its clients
// decode. Our JSON must decode into them with no field left over, and
// with every field's JSON type right.
type orchardVM struct {
	Image              string            `json:"image"`
	ImagePullPolicy    string            `json:"imagePullPolicy"`
	CPU                uint64            `json:"cpu"`
	Memory             uint64            `json:"memory"`
	DiskSize           uint64            `json:"diskSize"`
	NetBridged         string            `json:"net-bridged"`
	Headless           bool              `json:"headless"`
	Nested             bool              `json:"nested"`
	OS                 string            `json:"os"`
	Arch               string            `json:"arch"`
	Runtime            string            `json:"runtime"`
	NetSoftnetKebab    bool              `json:"net-softnet"`
	NetSoftnet         bool              `json:"netSoftnet"`
	NetSoftnetAllow    []string          `json:"netSoftnetAllow"`
	NetSoftnetBlock    []string          `json:"netSoftnetBlock"`
	Suspendable        bool              `json:"suspendable"`
	PowerState         string            `json:"powerState"`
	LocalName          string            `json:"localName"`
	TartName           string            `json:"tartName"`
	ObservedGeneration uint64            `json:"observedGeneration"`
	Conditions         []orchardCond     `json:"conditions"`
	Status             string            `json:"status"`
	StatusMessage      string            `json:"status_message"`
	Worker             string            `json:"worker"`
	AssignedCPU        uint64            `json:"assignedCPU"`
	AssignedMemory     uint64            `json:"assignedMemory"`
	Username           string            `json:"username"`
	Password           string            `json:"password"`
	StartupScript      *orchardScript    `json:"startup_script"`
	RestartPolicy      string            `json:"restart_policy"`
	RestartedAt        time.Time         `json:"restarted_at"`
	RestartCount       uint64            `json:"restart_count"`
	RandomSerial       bool              `json:"randomSerial"`
	UID                string            `json:"uid"`
	Resources          map[string]uint64 `json:"resources"`
	Labels             map[string]string `json:"labels"`
	HostDirs           []struct {
		Name string `json:"name"`
		Path string `json:"path"`
		RO   bool   `json:"ro"`
	} `json:"hostDirs"`
	ImageFQN    string    `json:"image_fqn"`
	ScheduledAt time.Time `json:"scheduled_at"`
	StartedAt   time.Time `json:"started_at"`
	Generation  uint64    `json:"generation"`
	Name        string    `json:"name"`
	CreatedAt   time.Time `json:"createdAt"`
	Version     uint64    `json:"version"`
}

type orchardCond struct {
	Type  string `json:"type"`
	State string `json:"state"`
}

type orchardScript struct {
	ScriptContent string            `json:"script_content"`
	Env           map[string]string `json:"env"`
}

type orchardWorker struct {
	LastSeen         time.Time         `json:"last_seen"`
	MachineID        string            `json:"machine_id"`
	SchedulingPaused bool              `json:"scheduling_paused"`
	Resources        map[string]uint64 `json:"resources"`
	Labels           map[string]string `json:"labels"`
	DefaultCPU       uint64            `json:"defaultCPU"`
	DefaultMemory    uint64            `json:"defaultMemory"`
	Arch             string            `json:"arch"`
	Runtime          string            `json:"runtime"`
	Name             string            `json:"name"`
	CreatedAt        time.Time         `json:"createdAt"`
}

type orchardAccount struct {
	Token     string    `json:"token"`
	Roles     []string  `json:"roles"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

// decodeStrict decodes b into v, refusing fields v does not have, after
// removing the fields named in extensions (ours, which Orchard's clients
// ignore).
func decodeStrict(t *testing.T, b []byte, v any, extensions ...string) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range extensions {
		delete(m, k)
	}
	b, _ = json.Marshal(m)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("our JSON does not decode into Orchard's shape: %v", err)
	}
}

func TestVMWire(t *testing.T) {
	b := golden(t, "vm.json", fullVM())
	var o orchardVM
	decodeStrict(t, b, &o)
	if o.Conditions[1].State != "true" || o.StartupScript.Env["K"] != "V" || !o.RestartedAt.Equal(when) || o.HostDirs[0].RO != true {
		t.Errorf("decoded %+v", o)
	}
	// Times are always present, even when zero, as Orchard's are.
	b, _ = json.Marshal(&VM{Meta: Meta{Name: "x"}})
	for _, key := range []string{`"restarted_at":"0001-01-01T00:00:00Z"`, `"scheduled_at"`, `"started_at"`, `"createdAt"`, `"generation":0`, `"observedGeneration":0`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("an empty VM's JSON lacks %s: %s", key, b)
		}
	}
}

func TestOtherObjectsWire(t *testing.T) {
	w := &Worker{LastSeen: when, MachineID: "3d12\n", SchedulingPaused: true, Resources: Resources{ResourceTartVMs: 2},
		Labels: Labels{"k": "v"}, DefaultCPU: 4, DefaultMemory: 8192, Arch: ArchARM64, Runtime: RuntimeTart, Driver: DriverTart, ServiceAccount: "workers",
		Meta: Meta{Name: "mac-1", CreatedAt: when, Version: 3}}
	var ow orchardWorker
	decodeStrict(t, golden(t, "worker.json", w), &ow, "driver", "service_account", "version")
	if ow.MachineID != "3d12\n" || !ow.SchedulingPaused {
		t.Errorf("worker decoded as %+v", ow)
	}

	sa := &ServiceAccount{Token: "cf5b2dc9", Roles: []Role{RoleComputeRead, RoleComputeWrite}, Meta: Meta{Name: "workers", CreatedAt: when}}
	var osa orchardAccount
	decodeStrict(t, golden(t, "service-account.json", sa), &osa)

	golden(t, "events.json", []Event{{Kind: EventKindLogLine, Timestamp: 1796290396, Payload: "echo hello"}})
	golden(t, "error.json", Error{Message: "VM with this name already exists"})
	golden(t, "cluster-settings.json", ClusterSettings{HostDirPolicies: []HostDirPolicy{{PathPrefix: "/tmp", ReadOnly: true}}, SchedulerProfile: SchedulerProfileDistributeLoad})
	if b, _ := json.Marshal(ClusterSettings{}); string(b) != "{}" {
		t.Errorf("empty cluster settings = %s, want {} as Orchard", b)
	}
	golden(t, "watch-event.json", WatchEvent{Type: WatchModified, Object: &VM{Status: VMStatusPending, Meta: Meta{Name: "vm1", CreatedAt: when}}})
	golden(t, "controller-info.json", ControllerInfo{Version: "1.0.0", Commit: "abc", Capabilities: []string{"tunnel-v1"}})
}

// An Orchard-shaped create request, as the Orchard CLI sends it.
const orchardCreate = `{
  "image": "ghcr.io/cirruslabs/ubuntu-runner-amd64:latest",
  "imagePullPolicy": "IfNotPresent",
  "cpu": 4, "memory": 8192, "diskSize": 100,
  "net-bridged": "", "headless": true, "nested": false,
  "os": "linux", "arch": "amd64", "runtime": "vetu",
  "net-softnet": false, "netSoftnet": false, "netSoftnetAllow": ["192.168.0.0/24"], "netSoftnetBlock": null,
  "suspendable": false, "powerState": "running",
  "username": "admin", "password": "admin",
  "startup_script": {"script_content": "echo hi", "env": {"K":"V"}},
  "restart_policy": "OnFailure", "restarted_at": "0001-01-01T00:00:00Z", "restart_count": 0,
  "randomSerial": false,
  "resources": {"org.cirruslabs.logical-cores": 4},
  "labels": {"model": "macstudio"},
  "hostDirs": [{"name":"src","path":"/Users/ci/src","ro":true}],
  "shutdown_script": null, "softnet": false,
  "name": "vm1", "createdAt": "0001-01-01T00:00:00Z"
}`

func TestAcceptsOrchardRequests(t *testing.T) {
	var vm VM
	if err := json.Unmarshal([]byte(orchardCreate), &vm); err != nil {
		t.Fatal(err)
	}
	if vm.OS != OSLinux || vm.Runtime != RuntimeVetu || vm.StartupScript.Env["K"] != "V" || vm.RestartPolicy != RestartPolicyOnFailure ||
		vm.Resources[ResourceLogicalCores] != 4 || !vm.HostDirs[0].ReadOnly || vm.NetSoftnetAllow[0] != "192.168.0.0/24" || !vm.Headless {
		t.Errorf("decoded %+v", vm)
	}
	for _, bad := range []string{`{"os":"windows"}`, `{"arch":"riscv"}`, `{"runtime":"qemu"}`, `{"os":1}`} {
		if err := json.Unmarshal([]byte(bad), &vm); err == nil {
			t.Errorf("%s decoded without an error", bad)
		}
	}
}

func TestBootstrapToken(t *testing.T) {
	tok := BootstrapToken{ServiceAccountName: "workers", ServiceAccountToken: "s3cret", CertificatePEM: []byte("-----BEGIN CERTIFICATE-----\n")}
	s := tok.String()
	if !strings.HasPrefix(s, "orchard-bootstrap-token-v0.") || strings.Count(s, ".") != 3 || strings.ContainsAny(s, "=+/") {
		t.Errorf("token %q is not in Orchard's raw URL base64 form", s)
	}
	back, err := ParseBootstrapToken(s)
	if err != nil || back.ServiceAccountName != "workers" || back.ServiceAccountToken != "s3cret" || string(back.CertificatePEM) != string(tok.CertificatePEM) {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	noCert := BootstrapToken{ServiceAccountName: "a", ServiceAccountToken: "b"}.String()
	if strings.Count(noCert, ".") != 2 {
		t.Errorf("a token without a certificate has %q", noCert)
	}
	for _, bad := range []string{"", "orchard-bootstrap-token-v1.YQ.Yg", "orchard-bootstrap-token-v0.YQ", "orchard-bootstrap-token-v0.!!.Yg", "orchard-bootstrap-token-v0..Yg"} {
		_, err := ParseBootstrapToken(bad)
		if err == nil {
			t.Errorf("%q parsed", bad)
		} else if strings.Contains(err.Error(), "Yg") {
			t.Errorf("the error for %q repeats the token: %v", bad, err)
		}
	}
}

func FuzzParseBootstrapToken(f *testing.F) {
	f.Add(BootstrapToken{ServiceAccountName: "a", ServiceAccountToken: "b", CertificatePEM: []byte("c")}.String())
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseBootstrapToken(s)
		if err != nil {
			return
		}
		again, err := ParseBootstrapToken(tok.String())
		if err != nil || again.ServiceAccountName != tok.ServiceAccountName || again.ServiceAccountToken != tok.ServiceAccountToken || !bytes.Equal(again.CertificatePEM, tok.CertificatePEM) {
			t.Fatalf("%q does not round-trip", s)
		}
	})
}

func TestValidateName(t *testing.T) {
	for name, ok := range map[string]bool{"vm-1": true, "a:b_c.d": true, "": false, "-x": false, ".x": false, "a/b": false, "a b": false, strings.Repeat("a", 64): false, "é": false} {
		if err := ValidateName("VM", name); (err == nil) != ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestResourcesAndLabels(t *testing.T) {
	free := Resources{"a": 2, "b": 1}
	if _, ok := free.Fits(Resources{"a": 2}); !ok {
		t.Error("an exact fit does not fit")
	}
	if missing, ok := free.Fits(Resources{"a": 1, "c": 1}); ok || missing != "c" {
		t.Errorf("Fits with an unknown key: %q %v", missing, ok)
	}
	if _, ok := free.Fits(nil); !ok {
		t.Error("asking for nothing does not fit")
	}
	if missing, ok := (Labels{"k": "v"}).Contains(Labels{"k": "w"}); ok || missing != "k=w" {
		t.Errorf("Contains: %q %v", missing, ok)
	}
	r, err := ParseResources("org.cirruslabs.tart-vms=200, x=1")
	if err != nil || r[ResourceTartVMs] != 200 || r["x"] != 1 {
		t.Errorf("ParseResources: %v %v", r, err)
	}
	for _, bad := range []string{"a", "a=-1", "=1", "a=x"} {
		if _, err := ParseResources(bad); err == nil {
			t.Errorf("ParseResources(%q) accepted", bad)
		}
	}
	if l, err := ParseLabels("a=b,c="); err != nil || l["a"] != "b" || l["c"] != "" {
		t.Errorf("ParseLabels: %v %v", l, err)
	}
}
