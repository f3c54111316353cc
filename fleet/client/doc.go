// Package client is the Go client of Orchard's REST API v1, as the CLI,
// the worker and the tests use it, and the contexts file
// ($ORCHARD_HOME/.orchard/orchard.yml) that says which controller to talk
// to and as whom.
//
// A Client sends each request with HTTP Basic auth, over TLS pinned to the
// controller's certificate when the context carries one, and turns every
// non-200 answer into an *APIError with the controller's message. It
// imports only the wire types (fleet/v1), the WebSocket library and YAML:
// it never links the controller.
//
// Typical use:
//
//	cfg, err := client.Resolve(client.Home(), "", os.Environ())
//	c, err := client.New(cfg)
//	vms, err := c.ListVMs(ctx)
package client
