// Package worker is the agent that runs on every Mac (or, with the local
// driver, any host): it holds the tunnel to the controller, receives the
// set of VMs the controller wants on this host, and reconciles that set
// against what its Driver reports.
package worker
