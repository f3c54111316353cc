package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// maxQueuedEvents bounds the log lines kept while the controller is
// unreachable; past it the oldest are dropped, with a note.
const maxQueuedEvents = 10000

// outbox holds what the worker has to tell the controller. Reports never
// block on the network: a status replaces the unsent one of the same VM
// (the controller only needs the latest), log lines queue up. The current
// session's sender drains it; while disconnected it just fills.
type outbox struct {
	ready    chan struct{}
	mu       sync.Mutex
	statuses map[string]*tunnel.VMStatus // by VM incarnation
	order    []string                    // incarnations in the order their statuses changed
	events   []*tunnel.VMEvents
	queued   int
	dropped  int
}

func newOutbox() *outbox {
	return &outbox{ready: make(chan struct{}, 1), statuses: map[string]*tunnel.VMStatus{}}
}

func (o *outbox) lock()   { o.mu.Lock() }
func (o *outbox) unlock() { o.mu.Unlock() }

func (o *outbox) signal() {
	select {
	case o.ready <- struct{}{}:
	default:
	}
}

// status queues the latest state of one VM incarnation.
func (o *outbox) status(st *tunnel.VMStatus) {
	key := fmt.Sprintf("%s/%s/%d", st.Name, st.UID, st.RestartCount)
	o.lock()
	if _, queued := o.statuses[key]; !queued {
		o.order = append(o.order, key)
	}
	o.statuses[key] = st
	o.unlock()
	o.signal()
}

// log queues log lines of one VM.
func (o *outbox) log(vm *v1.VM, events []v1.Event) {
	if len(events) == 0 {
		return
	}
	o.lock()
	o.events = append(o.events, &tunnel.VMEvents{Name: vm.Name, UID: vm.UID, Events: events})
	o.queued += len(events)
	for o.queued > maxQueuedEvents && len(o.events) > 1 {
		o.queued -= len(o.events[0].Events)
		o.dropped += len(o.events[0].Events)
		o.events = o.events[1:]
	}
	o.unlock()
	o.signal()
}

// take returns and clears what is queued.
func (o *outbox) take() (statuses []*tunnel.VMStatus, events []*tunnel.VMEvents, dropped int) {
	o.lock()
	defer o.unlock()
	for _, name := range o.order {
		statuses = append(statuses, o.statuses[name])
	}
	o.statuses, o.order = map[string]*tunnel.VMStatus{}, nil
	events, o.events, o.queued = o.events, nil, 0
	dropped, o.dropped = o.dropped, 0
	return statuses, events, dropped
}

// send writes queued reports and heartbeats to the control stream until
// ctx ends or a write fails. What a failed write did not deliver is lost
// only for log lines; statuses are re-sent in full after the next
// connect.
func (o *outbox) send(ctx context.Context, control tunnel.Stream, heartbeat time.Duration) {
	ticker := time.NewTicker(heartbeat)
	defer ticker.Stop()
	write := func(m *tunnel.Message) bool {
		_ = control.SetWriteDeadline(time.Now().Add(30 * time.Second))
		return tunnel.WriteMessage(control, m) == nil
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if !write(&tunnel.Message{Type: tunnel.TypeHeartbeat}) {
				return
			}
			continue
		case <-o.ready:
		}
		statuses, events, dropped := o.take()
		for _, st := range statuses {
			if !write(&tunnel.Message{Type: tunnel.TypeVMStatus, VMStatus: st}) {
				return
			}
		}
		if dropped > 0 && len(events) > 0 {
			first := events[0]
			note := v1.Event{Kind: v1.EventKindLogLine, Timestamp: time.Now().Unix(), Payload: "[orchard worker] log lines were dropped while the controller was unreachable"}
			first.Events = append([]v1.Event{note}, first.Events...)
		}
		for _, ev := range events {
			if !write(&tunnel.Message{Type: tunnel.TypeVMEvents, VMEvents: ev}) {
				return
			}
		}
	}
}
