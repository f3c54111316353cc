// Package store keeps the controller's state: VMs, workers, service
// accounts, cluster settings and VM events, in BadgerDB on disk and, apart
// from events, decoded in memory.
//
// Data flows one way. A writer calls Update with a function that reads the
// current state through a Tx and stages puts and deletes. Update runs
// writers one at a time, so a read-modify-write never loses a concurrent
// update: the scheduler placing a VM and an API PUT of the same VM are
// serialized, and each sees the other's result. Update then:
//
//  1. encodes each staged object as JSON (the v1 wire format, with Version
//     set to the new store revision) into one Badger transaction;
//  2. hands that transaction to Badger and applies the staged objects to the
//     in-memory state, still in writer order, so the next writer sees them;
//  3. waits, outside the lock, until Badger has written and fsynced the
//     transaction (SyncWrites), sharing each fsync with the writers that
//     committed alongside it, and only then returns: what Update reported
//     as done survives kill -9;
//  4. publishes the changes, in revision order and only once durable, to
//     every Subscription: the scheduler, worker sessions, API watchers.
//
// Readers (VM, VMs, Workers, ...) read the in-memory state under a read
// lock and never touch disk; objects they return are shared and must not be
// modified (Clone them first). VM lists are served from the JSON kept beside
// each decoded VM, so listing 10,000 VMs copies bytes instead of encoding.
//
// Open rebuilds the in-memory state from Badger, decoding in parallel.
// Events are the one kind kept only on disk: they are append-only, keyed by
// VM UID and revision, and read page by page with an opaque cursor.
//
// If Badger ever fails to commit, memory and disk may disagree; the store
// then refuses every further write (Err reports why) and the controller
// should exit and restart from disk.
package store
