package tunnel

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// ProtocolVersion is the version of the control protocol this package
// speaks. See spec.md, "Versioning".
const ProtocolVersion = 1

// MaxMessageSize bounds one control message. A desired set of a few
// hundred VMs with startup scripts fits many times over; anything larger
// is a broken or hostile peer.
const MaxMessageSize = 16 << 20

// Message types.
const (
	TypeHello     = "hello"
	TypeWelcome   = "welcome"
	TypeHeartbeat = "heartbeat"
	TypeVMSet     = "vm_set"
	TypeVMStatus  = "vm_status"
	TypeVMEvents  = "vm_events"
	TypeError     = "error"
)

// Message is one frame on the control stream: Type says which one of the
// other fields is set.
type Message struct {
	Type     string    `json:"type"`
	Hello    *Hello    `json:"hello,omitempty"`
	Welcome  *Welcome  `json:"welcome,omitempty"`
	VMSet    *VMSet    `json:"vm_set,omitempty"`
	VMStatus *VMStatus `json:"vm_status,omitempty"`
	VMEvents *VMEvents `json:"vm_events,omitempty"`
	Error    *Error    `json:"error,omitempty"`
}

// Hello is the worker's first message: who it is, what it offers, and the
// VM instances it already holds (after a restart, or a reconnect).
type Hello struct {
	Protocol      int          `json:"protocol"`
	Name          string       `json:"name"`
	MachineID     string       `json:"machine_id"`
	Version       string       `json:"version,omitempty"`
	Driver        string       `json:"driver"`
	Arch          v1.Arch      `json:"arch,omitempty"`
	Runtime       v1.Runtime   `json:"runtime,omitempty"`
	Resources     v1.Resources `json:"resources,omitempty"`
	Labels        v1.Labels    `json:"labels,omitempty"`
	DefaultCPU    uint64       `json:"default_cpu,omitempty"`
	DefaultMemory uint64       `json:"default_memory,omitempty"`
	Instances     []Instance   `json:"instances,omitempty"`
}

// Instance is a VM instance a worker holds, by local name.
type Instance struct {
	LocalName string `json:"local_name"`
	Running   bool   `json:"running"`
}

// Welcome accepts a Hello.
type Welcome struct {
	Protocol int `json:"protocol"`
	// HeartbeatSeconds is how often the controller wants a heartbeat.
	HeartbeatSeconds int `json:"heartbeat_seconds"`
}

// VMSet is the controller's push of the VMs it wants on the worker. With
// Full it replaces everything the worker was told before; otherwise it
// upserts VMs and removes the names in Deleted. A full set too large for
// one message comes in parts: every part but the last has Continues, and
// the worker applies the set only once the last part is in.
type VMSet struct {
	Full      bool     `json:"full,omitempty"`
	Continues bool     `json:"continues,omitempty"`
	VMs       []*v1.VM `json:"vms,omitempty"`
	Deleted   []string `json:"deleted,omitempty"`
}

// MaxVMsPerMessage bounds the VMs in one VMSet message: VMs are at most 1
// MiB of JSON each, so a message stays under MaxMessageSize.
const MaxVMsPerMessage = 12

// VMStatus is the worker's report of one VM's observed state. UID ties it
// to the VM incarnation it is about; the controller drops reports about
// VMs that have since been deleted or restarted.
type VMStatus struct {
	Name               string      `json:"name"`
	UID                string      `json:"uid"`
	RestartCount       uint64      `json:"restart_count"`
	Status             v1.VMStatus `json:"status"`
	StatusMessage      string      `json:"status_message,omitempty"`
	ImageFQN           string      `json:"image_fqn,omitempty"`
	ObservedGeneration uint64      `json:"observed_generation"`
	Running            bool        `json:"running"`
}

// VMEvents carries log lines of one VM.
type VMEvents struct {
	Name   string     `json:"name"`
	UID    string     `json:"uid"`
	Events []v1.Event `json:"events"`
}

// Error ends a session: the sender closes the session after it.
type Error struct {
	Message string `json:"message"`
}

// WriteMessage writes m as a 4-byte big-endian length and its JSON.
func WriteMessage(w io.Writer, m *Message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s message: %w", m.Type, err)
	}
	if len(body) > MaxMessageSize {
		return fmt.Errorf("encode %s message: %d bytes is over the %d-byte limit", m.Type, len(body), MaxMessageSize)
	}
	frame := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	copy(frame[4:], body)
	if _, err := w.Write(frame); err != nil {
		return fmt.Errorf("send %s message: %w", m.Type, err)
	}
	return nil
}

// ErrMessageTooLarge is returned for a frame over MaxMessageSize.
var ErrMessageTooLarge = errors.New("control message over the size limit")

// ReadMessage reads one message written by WriteMessage and checks that
// its Type matches the field it carries.
func ReadMessage(r io.Reader) (*Message, error) {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(size[:])
	if n > MaxMessageSize {
		return nil, fmt.Errorf("read control message of %d bytes: %w", n, ErrMessageTooLarge)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read control message: %w", unexpected(err))
	}
	m := new(Message)
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("decode control message: %w", err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("decode control message: %w", err)
	}
	return m, nil
}

func (m *Message) check() error {
	var set bool
	switch m.Type {
	case TypeHello:
		set = m.Hello != nil
	case TypeWelcome:
		set = m.Welcome != nil
	case TypeHeartbeat:
		set = true
	case TypeVMSet:
		set = m.VMSet != nil
	case TypeVMStatus:
		set = m.VMStatus != nil
	case TypeVMEvents:
		set = m.VMEvents != nil
	case TypeError:
		set = m.Error != nil
	default:
		return fmt.Errorf("unknown message type %q", m.Type)
	}
	if !set {
		return fmt.Errorf("%s message without its body", m.Type)
	}
	return nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
