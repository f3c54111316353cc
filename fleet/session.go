package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// MachineIDHeader carries the worker's machine id on the tunnel upgrade,
// so that a name clash is refused with 409 before the upgrade.
const MachineIDHeader = "X-Orchard-Machine-ID"

// reasonLostTrack fails a running VM whose instance a reconnecting worker
// no longer holds.
const reasonLostTrack = "the worker lost track of the VM: its instance is gone (the worker restarted or the VM was removed behind its back)"

// session is one connected worker: its tunnel, the control stream, and
// the changes to its desired set that wait to be sent.
type session struct {
	c         *Controller
	name      string
	account   string // the service account the worker authenticated as
	machineID string
	mux       *yamux.Session
	control   tunnel.Stream
	logger    *slog.Logger

	writeMu sync.Mutex // serializes writes to control

	mu       sync.Mutex
	pending  map[string]store.Change // latest unsent change per VM name
	needFull bool
	wake     chan struct{}

	// floor is the store revision of the last full set sent: changes at
	// or below it are already reflected there. Only the writer uses it.
	floor uint64

	reports   chan *tunnel.Message // status and events, for the applier
	closeOnce sync.Once
	done      chan struct{}
}

// serveTunnel runs a worker's tunnel from upgrade to disconnect. name is
// the worker name from the path; the caller has authenticated the request.
func (c *Controller) serveTunnel(w http.ResponseWriter, r *http.Request, name string) {
	if err := v1.ValidateName("worker", name); err != nil {
		writeError(w, errorf(http.StatusPreconditionFailed, "%s", err))
		return
	}
	machineID := r.Header.Get(MachineIDHeader)
	if machineID == "" {
		writeError(w, errorf(http.StatusBadRequest, "the %s header is missing", MachineIDHeader))
		return
	}
	account := accountOf(r)
	if existing, ok := c.store.Worker(name); ok {
		if err := admits(existing, account, machineID); err != nil {
			writeError(w, err)
			return
		}
	}
	conn, err := tunnel.Accept(w, r)
	if err != nil {
		c.logger.Warn("accept worker tunnel", "worker", name, "err", err)
		return
	}
	mux, err := tunnel.NewController(conn)
	if err != nil {
		conn.Close()
		return
	}
	s := &session{
		c: c, name: name, account: account, machineID: machineID, mux: mux,
		logger:  c.logger.With("worker", name),
		pending: map[string]store.Change{},
		wake:    make(chan struct{}, 1),
		reports: make(chan *tunnel.Message, 1024),
		done:    make(chan struct{}),
	}
	s.run()
}

// admits refuses a worker name already taken by another machine, or by
// another service account: a name belongs to the first that connected
// with it, until the worker is deleted.
func admits(existing *v1.Worker, account, machineID string) *Error {
	if existing.MachineID != "" && existing.MachineID != machineID {
		return errorf(http.StatusConflict, "a worker named %q with another machine id is registered; delete it first or pick another name", existing.Name)
	}
	if existing.ServiceAccount != "" && existing.ServiceAccount != account {
		return errorf(http.StatusConflict, "worker %q belongs to another service account; delete it first or pick another name", existing.Name)
	}
	return nil
}

func (s *session) run() {
	defer s.close()
	ctx, cancel := context.WithTimeout(s.c.ctx, 15*time.Second)
	control, err := tunnel.AcceptStream(ctx, s.mux)
	cancel()
	if err != nil {
		s.logger.Warn("worker opened no control stream", "err", err)
		return
	}
	s.control = control
	hello, err := s.readHello()
	if err != nil {
		s.logger.Warn("worker hello", "err", err)
		s.closeWithError(err.Error())
		return
	}
	if err := s.register(hello); err != nil {
		s.logger.Warn("register worker", "err", err)
		s.closeWithError(err.Error())
		return
	}
	defer s.unregister()
	s.logger.Info("worker connected", "driver", hello.Driver, "instances", len(hello.Instances))

	welcome := &tunnel.Message{Type: tunnel.TypeWelcome, Welcome: &tunnel.Welcome{
		Protocol: tunnel.ProtocolVersion, HeartbeatSeconds: int(s.c.cfg.HeartbeatInterval / time.Second)}}
	if err := s.send(welcome); err != nil {
		return
	}
	var wg sync.WaitGroup
	wg.Go(s.writeLoop)
	wg.Go(s.applyLoop)
	wg.Go(s.refuseStreams)
	s.readLoop()
	s.close()
	wg.Wait()
}

func (s *session) readHello() (*tunnel.Hello, error) {
	_ = s.control.SetReadDeadline(time.Now().Add(15 * time.Second))
	m, err := tunnel.ReadMessage(s.control)
	if err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	h := m.Hello
	switch {
	case m.Type != tunnel.TypeHello:
		return nil, fmt.Errorf("expected a hello, got %q", m.Type)
	case h.Protocol < 1:
		return nil, fmt.Errorf("protocol version %d is not supported (this controller speaks %d)", h.Protocol, tunnel.ProtocolVersion)
	case h.Name != s.name:
		return nil, fmt.Errorf("hello names worker %q but the tunnel was opened for %q", h.Name, s.name)
	case h.MachineID != s.machineID:
		return nil, errors.New("hello carries another machine id than the upgrade")
	case h.Driver != v1.DriverTart && h.Driver != v1.DriverLocal:
		return nil, fmt.Errorf("unknown driver %q", h.Driver)
	}
	return h, nil
}

// register records the worker, fails the running VMs it no longer holds,
// and makes the session the worker's current one.
func (s *session) register(h *tunnel.Hello) error {
	held := map[string]bool{}
	for _, in := range h.Instances {
		held[in.LocalName] = in.Running
	}
	now := time.Now().UTC()
	err := s.c.store.Update(func(tx *store.Tx) error {
		w, exists := tx.Worker(s.name)
		if exists {
			if err := admits(w, s.account, s.machineID); err != nil {
				return err
			}
		} else {
			w = &v1.Worker{Meta: v1.Meta{Name: s.name, CreatedAt: now}}
		}
		w.MachineID = s.machineID
		w.ServiceAccount = s.account
		w.LastSeen = now
		w.Resources, w.Labels = h.Resources, h.Labels
		w.DefaultCPU, w.DefaultMemory = h.DefaultCPU, h.DefaultMemory
		w.Arch, w.Runtime, w.Driver = h.Arch, h.Runtime, h.Driver
		tx.PutWorker(w)
		tx.EachVM(func(vm *v1.VM) bool {
			if vm.Worker == s.name && vm.Status == v1.VMStatusRunning && vm.PowerState == v1.PowerStateRunning && !held[vm.LocalName] {
				lost := vm.Clone()
				lost.Status = v1.VMStatusFailed
				lost.StatusMessage = reasonLostTrack
				lost.SetCondition(v1.ConditionRunning, false)
				tx.PutVM(lost)
			}
			return true
		})
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.needFull = true
	s.mu.Unlock()
	kick(s.wake)

	s.c.mu.Lock()
	old := s.c.sessions[s.name]
	s.c.sessions[s.name] = s
	delete(s.c.lastSeen, s.name)
	s.c.mu.Unlock()
	if old != nil {
		// The old tunnel may be wedged: do not hold up the new one for it.
		go old.closeWithError("replaced by a newer connection of the same worker")
	}
	s.c.metrics.sessions.Inc()
	kick(s.c.kickScheduler)
	return nil
}

func (s *session) unregister() {
	now := time.Now().UTC()
	s.c.mu.Lock()
	current := s.c.sessions[s.name] == s
	if current {
		delete(s.c.sessions, s.name)
		s.c.lastSeen[s.name] = now
	}
	s.c.mu.Unlock()
	s.c.metrics.sessions.Dec()
	if !current {
		return
	}
	s.logger.Info("worker disconnected")
	// Persist when it was last seen, so that the offline timeout holds
	// across a controller restart too. A closing controller skips it: the
	// restart grace covers that case.
	if s.c.ctx.Err() == nil {
		err := s.c.store.Update(func(tx *store.Tx) error {
			if w, ok := tx.Worker(s.name); ok {
				w.LastSeen = now
				tx.PutWorker(w)
			}
			return nil
		})
		if err != nil {
			s.logger.Warn("record worker disconnect", "err", err)
		}
	}
	kick(s.c.kickHealth)
}

// enqueue records a change to one of this worker's VMs; the writer sends
// the latest per VM. It runs on the dispatcher and never blocks.
func (s *session) enqueue(ch store.Change) {
	s.mu.Lock()
	s.pending[ch.Name] = ch
	s.mu.Unlock()
	kick(s.wake)
}

// resync makes the writer send the whole desired set again.
func (s *session) resync() {
	s.mu.Lock()
	s.needFull = true
	s.mu.Unlock()
	kick(s.wake)
}

func (s *session) writeLoop() {
	for {
		select {
		case <-s.done:
			return
		case <-s.wake:
		}
		s.mu.Lock()
		full, pending := s.needFull, s.pending
		s.needFull, s.pending = false, map[string]store.Change{}
		s.mu.Unlock()

		if full {
			vms, rev := s.c.store.VMsAt(func(vm *v1.VM) bool { return vm.Worker == s.name })
			s.floor = rev
			if s.sendFull(vms) != nil {
				return
			}
		}
		var upserts []*v1.VM
		var deleted []string
		for name, ch := range pending {
			if ch.Rev <= s.floor {
				continue
			}
			if ch.VM != nil && ch.VM.Worker == s.name {
				upserts = append(upserts, ch.VM)
			} else {
				deleted = append(deleted, name)
			}
		}
		if len(deleted) > 0 || len(upserts) > 0 {
			first := min(len(upserts), tunnel.MaxVMsPerMessage)
			if s.send(vmSet(&tunnel.VMSet{VMs: upserts[:first], Deleted: deleted})) != nil {
				return
			}
			for part := range slices.Chunk(upserts[first:], tunnel.MaxVMsPerMessage) {
				if s.send(vmSet(&tunnel.VMSet{VMs: part})) != nil {
					return
				}
			}
		}
	}
}

// sendFull sends the whole desired set, in parts when it is large.
func (s *session) sendFull(vms []*v1.VM) error {
	for {
		n := min(len(vms), tunnel.MaxVMsPerMessage)
		part := &tunnel.VMSet{Full: true, VMs: vms[:n], Continues: n < len(vms)}
		if err := s.send(vmSet(part)); err != nil {
			return err
		}
		if vms = vms[n:]; len(vms) == 0 {
			return nil
		}
	}
}

func vmSet(set *tunnel.VMSet) *tunnel.Message {
	return &tunnel.Message{Type: tunnel.TypeVMSet, VMSet: set}
}

// readLoop reads the worker's messages until the session ends. A worker
// silent for three heartbeat intervals is considered gone.
func (s *session) readLoop() {
	silence := 3 * s.c.cfg.HeartbeatInterval
	for {
		_ = s.control.SetReadDeadline(time.Now().Add(silence))
		m, err := tunnel.ReadMessage(s.control)
		if err != nil {
			if !tunnel.IsClosed(err) {
				s.logger.Warn("read from worker", "err", err)
				s.closeWithError(err.Error())
			}
			return
		}
		switch m.Type {
		case tunnel.TypeHeartbeat:
		case tunnel.TypeVMStatus, tunnel.TypeVMEvents:
			select {
			case s.reports <- m:
			case <-s.done:
				return
			}
		case tunnel.TypeError:
			s.logger.Warn("worker ended the session", "message", m.Error.Message)
			return
		default:
			s.closeWithError(fmt.Sprintf("unexpected %q message from a worker", m.Type))
			return
		}
	}
}

// applyLoop writes the worker's reports to the store, as many per
// transaction as have queued up, so a worker starting a hundred VMs costs
// a few commits rather than hundreds.
func (s *session) applyLoop() {
	for {
		var batch []*tunnel.Message
		select {
		case <-s.done:
			return
		case m := <-s.reports:
			batch = append(batch, m)
		}
	more:
		for len(batch) < 256 {
			select {
			case m := <-s.reports:
				batch = append(batch, m)
			default:
				break more
			}
		}
		now := time.Now().UTC()
		err := s.c.updateEach(len(batch), func(tx *store.Tx, i int) {
			if m := batch[i]; m.VMStatus != nil {
				applyStatus(tx, s.name, m.VMStatus, now)
			} else if vm, ok := tx.VM(m.VMEvents.Name); ok && vm.UID == m.VMEvents.UID {
				tx.AppendEvents(vm, m.VMEvents.Events)
			}
		})
		if err != nil {
			s.logger.Error("record worker reports", "err", err)
		}
	}
}

// applyStatus applies a worker's report to the VM it is about, if the VM
// is still that incarnation on that worker and not failed.
func applyStatus(tx *store.Tx, worker string, st *tunnel.VMStatus, now time.Time) {
	vm, ok := tx.VM(st.Name)
	if !ok || vm.UID != st.UID || vm.RestartCount != st.RestartCount || vm.Worker != worker || vm.Terminal() {
		return
	}
	before := vm.Clone()
	switch st.Status {
	case v1.VMStatusRunning:
		vm.Status = v1.VMStatusRunning
		if vm.StartedAt.IsZero() {
			vm.StartedAt = now
		}
	case v1.VMStatusFailed:
		vm.Status = v1.VMStatusFailed
	}
	vm.StatusMessage = st.StatusMessage
	if st.ImageFQN != "" {
		vm.ImageFQN = st.ImageFQN
	}
	vm.ObservedGeneration = st.ObservedGeneration
	vm.SetCondition(v1.ConditionRunning, st.Running)
	if vm.Status != before.Status || vm.StatusMessage != before.StatusMessage || vm.ImageFQN != before.ImageFQN ||
		vm.ObservedGeneration != before.ObservedGeneration || vm.Condition(v1.ConditionRunning) != before.Condition(v1.ConditionRunning) {
		tx.PutVM(vm)
	}
}

// refuseStreams closes any stream the worker opens after the control
// stream: the protocol has none.
func (s *session) refuseStreams() {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return
		}
		st.Close()
		s.closeWithError("workers may open only the control stream")
	}
}

func (s *session) send(m *tunnel.Message) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	_ = s.control.SetWriteDeadline(time.Now().Add(30 * time.Second))
	err := tunnel.WriteMessage(s.control, m)
	if err != nil && !tunnel.IsClosed(err) {
		s.logger.Warn("send to worker", "type", m.Type, "err", err)
	}
	if err != nil {
		s.close()
	}
	return err
}

// closeWithError tells the worker why, then ends the session.
func (s *session) closeWithError(message string) {
	if s.control.Stream != nil {
		_ = s.send(&tunnel.Message{Type: tunnel.TypeError, Error: &tunnel.Error{Message: message}})
	}
	s.close()
}

func (s *session) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.mux.Close()
	})
}
