// Package v1 holds the resource types of Orchard's REST API v1: the JSON that
// crosses the wire between the controller, the CLI, the Go client and
// third-party Orchard clients.
//
// The field names, their mixed camelCase/snake_case/kebab-case spelling and
// the status strings are those of cirruslabs/orchard, so that its CLI, Go
// client and Terraform provider work against this controller unchanged. A few
// fields are our own (Worker.Driver); Orchard's clients ignore them.
//
// The package is a leaf: it imports only the standard library, so the worker
// and the CLI can depend on it without linking the controller.
//
// Data flows through these types unchanged: the API decodes a request into a
// VM, the store keeps the same JSON in BadgerDB, the tunnel carries VMs to
// workers, and watchers receive them back as WatchEvent lines.
package v1
