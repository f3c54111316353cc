// Package fleet is the controller: it keeps the fleet's state in a store,
// places VMs on workers, watches workers' health, holds the workers'
// tunnels, and serves Orchard's REST API v1 on top.
//
// Everything reacts to the store's change feed rather than to timers. One
// dispatcher goroutine reads the feed and fans each change out:
//
//	API / worker status / health ──Update──▶ store ──feed──▶ dispatcher
//	                                                          ├─▶ scheduler (pending VM, freed capacity, new worker)
//	                                                          ├─▶ health    (failed VM to restart, deleted worker)
//	                                                          └─▶ sessions  (the VM's worker gets its new desired set)
//
// The scheduler (scheduler.go) plans placements from a snapshot and
// commits them in one transaction that re-checks every VM and worker, so a
// concurrent API write is never lost. Health (health.go) fails the VMs of
// workers gone longer than the offline timeout and restarts OnFailure VMs
// after the restart delay; its only timer is the next such deadline.
// Sessions (session.go) speak the tunnel protocol with each connected
// worker; DialVM (dial.go) opens a stream through a VM's worker to one of
// its ports, for port-forwarding, SSH and IP lookups.
//
// The Controller's exported methods are the fleet's Go API: the HTTP
// handlers (api.go) are a thin layer over them, and the autoscaler calls
// them directly in-process. Errors they return are *Error values that carry
// the HTTP status the API answers with.
package fleet
