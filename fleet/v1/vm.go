package v1

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"
)

// VMStatus is the lifecycle of a VM as the controller reports it.
type VMStatus string

const (
	// VMStatusPending is set on create and on every restart: the VM waits
	// for a worker, or for its worker to start it.
	VMStatusPending VMStatus = "pending"
	// VMStatusRunning is set by the worker once the VM has started. It never
	// reverts to pending except through a restart.
	VMStatusRunning VMStatus = "running"
	// VMStatusFailed is terminal: set by the worker (the VM could not start,
	// its startup script failed, it stopped on its own) or by the controller
	// (its worker went away). Only restart_policy OnFailure leaves it.
	VMStatusFailed VMStatus = "failed"
)

// PowerState is the state the user wants the VM in.
type PowerState string

const (
	PowerStateRunning   PowerState = "running"
	PowerStateStopped   PowerState = "stopped"
	PowerStateSuspended PowerState = "suspended"
)

// Valid reports whether p is a known power state.
func (p PowerState) Valid() bool {
	switch p {
	case PowerStateRunning, PowerStateStopped, PowerStateSuspended:
		return true
	}
	return false
}

// RestartPolicy says what happens to a failed VM.
type RestartPolicy string

const (
	RestartPolicyNever     RestartPolicy = "Never"
	RestartPolicyOnFailure RestartPolicy = "OnFailure"
)

// Valid reports whether r is a known restart policy.
func (r RestartPolicy) Valid() bool {
	return r == RestartPolicyNever || r == RestartPolicyOnFailure
}

// ImagePullPolicy says when a worker pulls the VM's image.
type ImagePullPolicy string

const (
	ImagePullPolicyIfNotPresent ImagePullPolicy = "IfNotPresent"
	ImagePullPolicyAlways       ImagePullPolicy = "Always"
)

// Valid reports whether p is a known image pull policy.
func (p ImagePullPolicy) Valid() bool {
	return p == ImagePullPolicyIfNotPresent || p == ImagePullPolicyAlways
}

// OS is the guest operating system. Orchard's clients reject any value but
// these two (and empty), and one bad VM breaks their whole list, so
// decoding rejects others too.
type OS string

const (
	OSDarwin OS = "darwin"
	OSLinux  OS = "linux"
)

// UnmarshalJSON accepts only Orchard's known values.
func (o *OS) UnmarshalJSON(b []byte) error {
	return unmarshalEnum(b, (*string)(o), "os", string(OSDarwin), string(OSLinux))
}

// Arch is the guest CPU architecture.
type Arch string

const (
	ArchARM64 Arch = "arm64"
	ArchAMD64 Arch = "amd64"
)

// UnmarshalJSON accepts only Orchard's known values.
func (a *Arch) UnmarshalJSON(b []byte) error {
	return unmarshalEnum(b, (*string)(a), "arch", string(ArchARM64), string(ArchAMD64))
}

// Runtime is the virtualization the VM needs: Tart on macOS hosts, Vetu on
// Linux hosts.
type Runtime string

const (
	RuntimeTart Runtime = "tart"
	RuntimeVetu Runtime = "vetu"
)

// UnmarshalJSON accepts only Orchard's known values.
func (r *Runtime) UnmarshalJSON(b []byte) error {
	return unmarshalEnum(b, (*string)(r), "runtime", string(RuntimeTart), string(RuntimeVetu))
}

func unmarshalEnum(b []byte, dst *string, field string, allowed ...string) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if s != "" && !slices.Contains(allowed, s) {
		return fmt.Errorf("%s: unsupported value %q (want one of %v)", field, s, allowed)
	}
	*dst = s
	return nil
}

// Condition types and states. States are the strings "true" and "false",
// as in Orchard.
const (
	ConditionScheduled = "scheduled"
	ConditionRunning   = "running"

	ConditionTrue  = "true"
	ConditionFalse = "false"
)

// Condition is one observed fact about a VM.
type Condition struct {
	Type  string `json:"type"`
	State string `json:"state"`
}

// VMScript is a shell script with its environment, run in the VM over SSH.
type VMScript struct {
	ScriptContent string            `json:"script_content"`
	Env           map[string]string `json:"env,omitempty"`
}

// HostDir is a host directory shared into the VM.
type HostDir struct {
	Name     string `json:"name"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"ro,omitempty"`
}

// VM is a virtual machine: the user's spec, the controller's placement and
// the worker's observed state, in one object as in Orchard.
type VM struct {
	Image           string          `json:"image"`
	ImagePullPolicy ImagePullPolicy `json:"imagePullPolicy,omitempty"`
	CPU             uint64          `json:"cpu,omitempty"`
	Memory          uint64          `json:"memory,omitempty"`
	DiskSize        uint64          `json:"diskSize,omitempty"`
	NetBridged      string          `json:"net-bridged,omitempty"`
	Headless        bool            `json:"headless,omitempty"`
	Nested          bool            `json:"nested,omitempty"`

	Status        VMStatus `json:"status"`
	StatusMessage string   `json:"status_message,omitempty"`
	Worker        string   `json:"worker,omitempty"`

	Username      string        `json:"username,omitempty"`
	Password      string        `json:"password,omitempty"`
	StartupScript *VMScript     `json:"startup_script,omitempty"`
	RestartPolicy RestartPolicy `json:"restart_policy,omitempty"`
	RestartedAt   time.Time     `json:"restarted_at"`
	RestartCount  uint64        `json:"restart_count,omitempty"`
	RandomSerial  bool          `json:"randomSerial,omitempty"`

	UID       string    `json:"uid,omitempty"`
	Resources Resources `json:"resources,omitempty"`
	Labels    Labels    `json:"labels,omitempty"`
	HostDirs  []HostDir `json:"hostDirs,omitempty"`

	ImageFQN    string    `json:"image_fqn,omitempty"`
	ScheduledAt time.Time `json:"scheduled_at"`
	StartedAt   time.Time `json:"started_at"`
	Generation  uint64    `json:"generation"`

	// The spec fields that PUT /v1/vms/{name} may change.
	OS              OS         `json:"os,omitempty"`
	Arch            Arch       `json:"arch,omitempty"`
	Runtime         Runtime    `json:"runtime,omitempty"`
	NetSoftnetKebab bool       `json:"net-softnet,omitempty"`
	NetSoftnet      bool       `json:"netSoftnet,omitempty"`
	NetSoftnetAllow []string   `json:"netSoftnetAllow,omitempty"`
	NetSoftnetBlock []string   `json:"netSoftnetBlock,omitempty"`
	Suspendable     bool       `json:"suspendable,omitempty"`
	PowerState      PowerState `json:"powerState,omitempty"`

	// The state the controller and worker maintain.
	LocalName          string      `json:"localName,omitempty"`
	TartName           string      `json:"tartName,omitempty"`
	ObservedGeneration uint64      `json:"observedGeneration"`
	Conditions         []Condition `json:"conditions,omitempty"`
	AssignedCPU        uint64      `json:"assignedCPU,omitempty"`
	AssignedMemory     uint64      `json:"assignedMemory,omitempty"`

	Meta
}

// Meta is what every stored object carries.
type Meta struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
	// Version is the store revision of the last write to the object.
	Version uint64 `json:"version,omitempty"`
}

// Softnet reports whether either spelling of the softnet flag is set, or
// an allow/block list implies it.
func (vm *VM) Softnet() bool {
	return vm.NetSoftnet || vm.NetSoftnetKebab || len(vm.NetSoftnetAllow) > 0 || len(vm.NetSoftnetBlock) > 0
}

// Terminal reports whether the VM is in a state it cannot leave by itself.
func (vm *VM) Terminal() bool { return vm.Status == VMStatusFailed }

// Condition returns the state of the condition of type t, "" when absent.
func (vm *VM) Condition(t string) string {
	for _, c := range vm.Conditions {
		if c.Type == t {
			return c.State
		}
	}
	return ""
}

// SetCondition sets the state of the condition of type t, adding it if absent.
func (vm *VM) SetCondition(t string, state bool) {
	s := ConditionFalse
	if state {
		s = ConditionTrue
	}
	for i := range vm.Conditions {
		if vm.Conditions[i].Type == t {
			vm.Conditions[i].State = s
			return
		}
	}
	vm.Conditions = append(vm.Conditions, Condition{Type: t, State: s})
}

// LocalNameFor is the name a worker gives the VM's instance on its host:
// unique per VM (the UID) and per restart, so that a restarted VM never
// collides with the remains of its previous run.
func LocalNameFor(name, uid string, restartCount uint64) string {
	return fmt.Sprintf("orchard-%s-%s-%d", name, uid, restartCount)
}

// Clone returns a deep copy of vm.
func (vm *VM) Clone() *VM {
	c := *vm
	c.Resources = maps.Clone(vm.Resources)
	c.Labels = maps.Clone(vm.Labels)
	c.HostDirs = slices.Clone(vm.HostDirs)
	c.NetSoftnetAllow = slices.Clone(vm.NetSoftnetAllow)
	c.NetSoftnetBlock = slices.Clone(vm.NetSoftnetBlock)
	c.Conditions = slices.Clone(vm.Conditions)
	if vm.StartupScript != nil {
		s := *vm.StartupScript
		s.Env = maps.Clone(vm.StartupScript.Env)
		c.StartupScript = &s
	}
	return &c
}
