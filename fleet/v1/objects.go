package v1

import (
	"maps"
	"slices"
	"time"
)

// Worker is a host that runs VMs. Workers register themselves over the
// tunnel; users pause, resume and delete them.
type Worker struct {
	LastSeen         time.Time `json:"last_seen"`
	MachineID        string    `json:"machine_id,omitempty"`
	SchedulingPaused bool      `json:"scheduling_paused,omitempty"`
	Resources        Resources `json:"resources,omitempty"`
	Labels           Labels    `json:"labels,omitempty"`
	DefaultCPU       uint64    `json:"defaultCPU,omitempty"`
	DefaultMemory    uint64    `json:"defaultMemory,omitempty"`
	Arch             Arch      `json:"arch,omitempty"`
	Runtime          Runtime   `json:"runtime,omitempty"`
	// Driver is ours: "tart" or "local". A local-driver worker stands in for
	// any platform and takes any VM.
	Driver string `json:"driver,omitempty"`
	// ServiceAccount is ours: the account the worker first connected
	// with. Only that account may connect under this name again, until the
	// worker is deleted.
	ServiceAccount string `json:"service_account,omitempty"`

	Meta
}

// Worker drivers.
const (
	DriverTart  = "tart"
	DriverLocal = "local"
)

// Clone returns a deep copy of w.
func (w *Worker) Clone() *Worker {
	c := *w
	c.Resources = maps.Clone(w.Resources)
	c.Labels = maps.Clone(w.Labels)
	return &c
}

// Role names a permission a service account holds.
type Role string

const (
	RoleComputeRead    Role = "compute:read"
	RoleComputeWrite   Role = "compute:write"
	RoleComputeConnect Role = "compute:connect"
	RoleAdminRead      Role = "admin:read"
	RoleAdminWrite     Role = "admin:write"
)

// AllRoles lists every role, as the bootstrap admin holds them.
var AllRoles = []Role{RoleComputeRead, RoleComputeWrite, RoleComputeConnect, RoleAdminRead, RoleAdminWrite}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return slices.Contains(AllRoles, r) }

// ServiceAccount is a name and a token that authenticate with HTTP Basic
// auth, and the roles that authorize.
type ServiceAccount struct {
	Token string `json:"token"`
	Roles []Role `json:"roles"`

	Meta
}

// Clone returns a deep copy of sa.
func (sa *ServiceAccount) Clone() *ServiceAccount {
	c := *sa
	c.Roles = slices.Clone(sa.Roles)
	return &c
}

// Has reports whether sa holds role r.
func (sa *ServiceAccount) Has(r Role) bool { return slices.Contains(sa.Roles, r) }

// Scheduler profiles.
type SchedulerProfile string

const (
	// SchedulerProfileOptimizeUtilization packs VMs onto the busiest worker
	// that fits. The default.
	SchedulerProfileOptimizeUtilization SchedulerProfile = "optimize-utilization"
	// SchedulerProfileDistributeLoad spreads VMs onto the least busy worker.
	SchedulerProfileDistributeLoad SchedulerProfile = "distribute-load"
)

// HostDirPolicy allows VMs to mount host directories under PathPrefix.
type HostDirPolicy struct {
	PathPrefix string `json:"pathPrefix"`
	ReadOnly   bool   `json:"ro,omitempty"`
}

// ClusterSettings are the controller-wide settings. A fresh controller
// returns {}.
type ClusterSettings struct {
	HostDirPolicies  []HostDirPolicy  `json:"hostDirPolicies,omitempty"`
	SchedulerProfile SchedulerProfile `json:"schedulerProfile,omitempty"`
}

// Profile returns the effective scheduler profile.
func (s ClusterSettings) Profile() SchedulerProfile {
	if s.SchedulerProfile == "" {
		return SchedulerProfileOptimizeUtilization
	}
	return s.SchedulerProfile
}

// EventKindLogLine is the one kind of VM event: a line of startup-script
// output or a message from the worker.
const EventKindLogLine = "log_line"

// Event is one entry in a VM's log.
type Event struct {
	Kind      string `json:"kind"`
	Timestamp int64  `json:"timestamp"`
	Payload   string `json:"payload"`
}

// ControllerInfo answers GET /v1/controller/info.
type ControllerInfo struct {
	Version      string   `json:"version"`
	Commit       string   `json:"commit"`
	Capabilities []string `json:"capabilities"`
}

// Watch event types, as in GET /v1/vms/{name}?watch=true.
const (
	WatchAdded    = "ADDED"
	WatchModified = "MODIFIED"
	WatchDeleted  = "DELETED"
)

// WatchEvent is one line of a watch stream.
type WatchEvent struct {
	Type   string `json:"type"`
	Object *VM    `json:"object"`
}

// IP answers GET /v1/vms/{name}/ip.
type IP struct {
	IP string `json:"ip"`
}

// Error is the body of every error response.
type Error struct {
	Message string `json:"message"`
}
