package store

import (
	"sync"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Kind says what a Change is about.
type Kind int

const (
	KindVM Kind = iota + 1
	KindWorker
	KindServiceAccount
	KindSettings
	// KindEvents: events were appended to the log of VM Name (UID).
	KindEvents
)

// Change is one committed write. For VMs and workers it carries the object
// before and after; a nil after means deleted, a nil before means created.
// The objects are shared: do not modify them.
type Change struct {
	Kind Kind
	Name string
	Rev  uint64

	OldVM, VM         *v1.VM
	OldWorker, Worker *v1.Worker
	// UID is the VM's UID for KindEvents.
	UID string

	raw      []byte // the VM's JSON
	account  *v1.ServiceAccount
	settings *v1.ClusterSettings
}

// maxQueued bounds what a subscriber that stopped reading can hold back;
// past it the subscription is marked Overflowed and stops receiving.
const maxQueued = 1 << 16

// Subscription receives every change committed after Subscribe, in
// revision order, without ever blocking writers.
type Subscription struct {
	p     *publisher
	ready chan struct{}

	mu         sync.Mutex
	queue      []Change
	overflowed bool
	closed     bool
}

// Ready is signalled whenever changes are waiting; call Drain then.
func (sub *Subscription) Ready() <-chan struct{} { return sub.ready }

// Drain returns the waiting changes. ok is false once the subscription is
// closed or overflowed: the subscriber then has to resynchronize from the
// store's current state (and subscribe again).
func (sub *Subscription) Drain() (changes []Change, ok bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	changes, sub.queue = sub.queue, nil
	return changes, !sub.overflowed && !sub.closed
}

// Close ends the subscription.
func (sub *Subscription) Close() {
	sub.p.mu.Lock()
	delete(sub.p.subs, sub)
	sub.p.mu.Unlock()
	sub.mu.Lock()
	sub.closed = true
	sub.mu.Unlock()
}

func (sub *Subscription) push(changes []Change) {
	sub.mu.Lock()
	if sub.overflowed || sub.closed {
		sub.mu.Unlock()
		return
	}
	if len(sub.queue)+len(changes) > maxQueued {
		sub.overflowed = true
		sub.queue = nil
	} else {
		sub.queue = append(sub.queue, changes...)
	}
	sub.mu.Unlock()
	select {
	case sub.ready <- struct{}{}:
	default:
	}
}

// Subscribe starts a subscription. It sees every change that becomes durable
// after this call; read the current state after subscribing to miss nothing.
func (s *Store) Subscribe() *Subscription {
	sub := &Subscription{p: &s.publisher, ready: make(chan struct{}, 1)}
	s.publisher.mu.Lock()
	s.publisher.subs[sub] = struct{}{}
	s.publisher.mu.Unlock()
	return sub
}

// publisher hands committed changes to subscribers in revision order, once
// Badger has made them durable. Commits complete out of order (their
// callbacks run on separate goroutines), so pending batches wait in a queue
// until every earlier one is done.
type publisher struct {
	mu      sync.Mutex
	pending []*batch
	subs    map[*Subscription]struct{}
}

type batch struct {
	changes []Change
	done    bool
	failed  bool
}

// enqueue registers a batch in commit order; the caller holds the store's
// write lock, which fixes that order.
func (p *publisher) enqueue(changes []Change) *batch {
	b := &batch{changes: changes}
	p.mu.Lock()
	p.pending = append(p.pending, b)
	p.mu.Unlock()
	return b
}

// complete marks b durable (or failed) and publishes every leading batch
// that is done.
func (p *publisher) complete(b *batch, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b.done, b.failed = true, err != nil
	for len(p.pending) > 0 && p.pending[0].done {
		head := p.pending[0]
		p.pending[0] = nil
		p.pending = p.pending[1:]
		if head.failed {
			continue
		}
		for sub := range p.subs {
			sub.push(head.changes)
		}
	}
}

func (p *publisher) closeAll() {
	p.mu.Lock()
	subs := p.subs
	p.subs = map[*Subscription]struct{}{}
	p.mu.Unlock()
	for sub := range subs {
		sub.mu.Lock()
		sub.closed = true
		sub.mu.Unlock()
		select {
		case sub.ready <- struct{}{}:
		default:
		}
	}
}
