package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/dgraph-io/badger/v4"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Tx is a write transaction's view: the current state plus what the
// transaction has staged. Objects returned by its getters are copies that
// the caller may modify and Put back.
type Tx struct {
	s        *Store
	vms      map[string]*v1.VM // nil value: delete
	workers  map[string]*v1.Worker
	accounts map[string]*v1.ServiceAccount
	settings *v1.ClusterSettings
	events   []stagedEvents
}

type stagedEvents struct {
	vmName string
	uid    string
	events []v1.Event
}

// ErrTooBig is returned by Update when what fn staged exceeds what one
// transaction holds (a few MiB); nothing was written. Callers that batch
// independent writes split the batch and try again.
var ErrTooBig = errors.New("transaction too big")

// Update runs fn with exclusive write access and commits what it staged,
// durably, before returning. If fn returns an error nothing is written
// and Update returns that error.
func (s *Store) Update(fn func(tx *Tx) error) error {
	s.mu.Lock()
	if err := s.Err(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("store refuses writes: %w", err)
	}
	tx := &Tx{s: s}
	if err := fn(tx); err != nil {
		s.mu.Unlock()
		return err
	}
	if tx.empty() {
		s.mu.Unlock()
		return nil
	}
	btx, changes, err := tx.encode(s.rev + 1)
	if err != nil {
		btx.Discard()
		s.mu.Unlock()
		return err
	}
	done := make(chan error, 1)
	p := s.publisher.enqueue(changes)
	// Badger fixes the commit order here, under s.mu; the fsync happens
	// later and is shared with writers that commit meanwhile.
	btx.CommitWith(func(err error) {
		if err != nil {
			s.fail(err)
		}
		s.publisher.complete(p, err)
		done <- err
	})
	tx.apply(changes)
	s.mu.Unlock()

	if err := <-done; err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// fail makes the store refuse writes from now on.
func (s *Store) fail(err error) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.broken == nil {
		s.broken = err
		if err != errStoreClosed {
			s.logger.Error("store commit failed; refusing further writes", "err", err)
		}
	}
}

func (tx *Tx) empty() bool {
	return len(tx.vms) == 0 && len(tx.workers) == 0 && len(tx.accounts) == 0 && tx.settings == nil && len(tx.events) == 0
}

// encode turns the staged writes into a Badger transaction and the list of
// changes they make, all at revision rev.
func (tx *Tx) encode(rev uint64) (*badger.Txn, []Change, error) {
	s := tx.s
	btx := s.db.NewTransaction(true)
	var changes []Change
	set := func(key string, v any) ([]byte, error) {
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", key, err)
		}
		if err := btx.Set([]byte(key), raw); err != nil {
			if errors.Is(err, badger.ErrTxnTooBig) {
				return nil, ErrTooBig
			}
			return nil, fmt.Errorf("stage %s: %w", key, err)
		}
		return raw, nil
	}
	del := func(key string) error {
		if err := btx.Delete([]byte(key)); err != nil {
			return fmt.Errorf("stage delete of %s: %w", key, err)
		}
		return nil
	}

	for _, name := range slices.Sorted(maps.Keys(tx.vms)) {
		vm, old := tx.vms[name], s.vms[name]
		c := Change{Kind: KindVM, Name: name, Rev: rev, OldVM: old.vm, VM: vm}
		if vm == nil {
			if err := del(prefixVM + name); err != nil {
				return btx, nil, err
			}
		} else {
			vm.Version = rev
			raw, err := set(prefixVM+name, vm)
			if err != nil {
				return btx, nil, err
			}
			c.raw = raw
		}
		changes = append(changes, c)
	}
	for _, name := range slices.Sorted(maps.Keys(tx.workers)) {
		w := tx.workers[name]
		c := Change{Kind: KindWorker, Name: name, Rev: rev, OldWorker: s.workers[name], Worker: w}
		if w == nil {
			if err := del(prefixWorker + name); err != nil {
				return btx, nil, err
			}
		} else {
			w.Version = rev
			if _, err := set(prefixWorker+name, w); err != nil {
				return btx, nil, err
			}
		}
		changes = append(changes, c)
	}
	for _, name := range slices.Sorted(maps.Keys(tx.accounts)) {
		sa := tx.accounts[name]
		c := Change{Kind: KindServiceAccount, Name: name, Rev: rev, account: sa}
		if sa == nil {
			if err := del(prefixAccount + name); err != nil {
				return btx, nil, err
			}
		} else {
			sa.Version = rev
			if _, err := set(prefixAccount+name, sa); err != nil {
				return btx, nil, err
			}
		}
		changes = append(changes, c)
	}
	if tx.settings != nil {
		if _, err := set(keySettings, tx.settings); err != nil {
			return btx, nil, err
		}
		changes = append(changes, Change{Kind: KindSettings, Rev: rev, settings: tx.settings})
	}
	index := 0
	for _, batch := range tx.events {
		for _, e := range batch.events {
			if _, err := set(eventKey(batch.uid, rev, index), e); err != nil {
				return btx, nil, err
			}
			index++
		}
		changes = append(changes, Change{Kind: KindEvents, Name: batch.vmName, Rev: rev, UID: batch.uid})
	}
	var revBytes [8]byte
	binary.BigEndian.PutUint64(revBytes[:], rev)
	if err := btx.Set([]byte(keyRevision), revBytes[:]); err != nil {
		if errors.Is(err, badger.ErrTxnTooBig) {
			return btx, nil, ErrTooBig
		}
		return btx, nil, fmt.Errorf("stage revision: %w", err)
	}
	return btx, changes, nil
}

// apply makes committed changes visible in memory. It runs under s.mu.
func (tx *Tx) apply(changes []Change) {
	s := tx.s
	for _, c := range changes {
		s.rev = c.Rev
		switch c.Kind {
		case KindVM:
			i, found := slices.BinarySearch(s.vmNames, c.Name)
			if c.VM == nil {
				delete(s.vms, c.Name)
				if found {
					s.vmNames = slices.Delete(s.vmNames, i, i+1)
				}
				if c.OldVM != nil {
					s.deleteEventsLater(c.OldVM.UID)
				}
				continue
			}
			if c.OldVM != nil && c.OldVM.UID != c.VM.UID {
				// Replaced by a new VM of the same name: the old one's log goes.
				s.deleteEventsLater(c.OldVM.UID)
			}
			s.vms[c.Name] = vmRecord{vm: c.VM, raw: c.raw}
			if !found {
				s.vmNames = slices.Insert(s.vmNames, i, c.Name)
			}
		case KindWorker:
			if c.Worker == nil {
				delete(s.workers, c.Name)
			} else {
				s.workers[c.Name] = c.Worker
			}
		case KindServiceAccount:
			if c.account == nil {
				delete(s.accounts, c.Name)
			} else {
				s.accounts[c.Name] = c.account
			}
		case KindSettings:
			s.settings = *c.settings
		}
	}
}

// VM returns a copy of the VM named name, as staged or stored.
func (tx *Tx) VM(name string) (*v1.VM, bool) {
	if vm, staged := tx.vms[name]; staged {
		if vm == nil {
			return nil, false
		}
		return vm.Clone(), true
	}
	r, ok := tx.s.vms[name]
	if !ok {
		return nil, false
	}
	return r.vm.Clone(), true
}

// EachVM calls fn for every stored VM that the transaction has not staged,
// in name order, with shared objects that must not be modified. It is for
// scans; use VM to get a copy to change.
func (tx *Tx) EachVM(fn func(vm *v1.VM) bool) {
	for _, name := range tx.s.vmNames {
		if _, staged := tx.vms[name]; staged {
			continue
		}
		if !fn(tx.s.vms[name].vm) {
			return
		}
	}
}

// PutVM stages vm. The transaction owns vm afterwards.
func (tx *Tx) PutVM(vm *v1.VM) {
	if tx.vms == nil {
		tx.vms = map[string]*v1.VM{}
	}
	tx.vms[vm.Name] = vm
}

// DeleteVM stages the deletion of the VM named name and of its events.
func (tx *Tx) DeleteVM(name string) {
	if tx.vms == nil {
		tx.vms = map[string]*v1.VM{}
	}
	tx.vms[name] = nil
}

// Worker returns a copy of the worker named name.
func (tx *Tx) Worker(name string) (*v1.Worker, bool) {
	if w, staged := tx.workers[name]; staged {
		if w == nil {
			return nil, false
		}
		return w.Clone(), true
	}
	w, ok := tx.s.workers[name]
	if !ok {
		return nil, false
	}
	return w.Clone(), true
}

// PutWorker stages w.
func (tx *Tx) PutWorker(w *v1.Worker) {
	if tx.workers == nil {
		tx.workers = map[string]*v1.Worker{}
	}
	tx.workers[w.Name] = w
}

// DeleteWorker stages the deletion of the worker named name.
func (tx *Tx) DeleteWorker(name string) {
	if tx.workers == nil {
		tx.workers = map[string]*v1.Worker{}
	}
	tx.workers[name] = nil
}

// ServiceAccount returns a copy of the account named name.
func (tx *Tx) ServiceAccount(name string) (*v1.ServiceAccount, bool) {
	if sa, staged := tx.accounts[name]; staged {
		if sa == nil {
			return nil, false
		}
		return sa.Clone(), true
	}
	sa, ok := tx.s.accounts[name]
	if !ok {
		return nil, false
	}
	return sa.Clone(), true
}

// CountServiceAccounts returns how many accounts exist, staged writes included.
func (tx *Tx) CountServiceAccounts() int {
	n := len(tx.s.accounts)
	for name, sa := range tx.accounts {
		_, stored := tx.s.accounts[name]
		switch {
		case sa == nil && stored:
			n--
		case sa != nil && !stored:
			n++
		}
	}
	return n
}

// PutServiceAccount stages sa.
func (tx *Tx) PutServiceAccount(sa *v1.ServiceAccount) {
	if tx.accounts == nil {
		tx.accounts = map[string]*v1.ServiceAccount{}
	}
	tx.accounts[sa.Name] = sa
}

// DeleteServiceAccount stages the deletion of the account named name.
func (tx *Tx) DeleteServiceAccount(name string) {
	if tx.accounts == nil {
		tx.accounts = map[string]*v1.ServiceAccount{}
	}
	tx.accounts[name] = nil
}

// Settings returns the cluster settings, as staged or stored.
func (tx *Tx) Settings() v1.ClusterSettings {
	if tx.settings != nil {
		return *tx.settings
	}
	return tx.s.settings
}

// PutSettings stages new cluster settings.
func (tx *Tx) PutSettings(cs v1.ClusterSettings) {
	tx.settings = &cs
}

// AppendEvents stages events for the log of vm.
func (tx *Tx) AppendEvents(vm *v1.VM, events []v1.Event) {
	if len(events) > 0 {
		tx.events = append(tx.events, stagedEvents{vmName: vm.Name, uid: vm.UID, events: events})
	}
}
