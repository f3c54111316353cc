// Package tunnel is the connection between a worker and the controller:
// one WebSocket, dialed by the worker, carrying a yamux session.
//
// The worker dials (Dial) and the controller accepts (Accept) the
// WebSocket; both wrap it as a net.Conn and start yamux on it (NewWorker,
// NewController). Over the session:
//
//   - the worker opens one control stream and speaks first with a Hello;
//     the controller answers with a Welcome and from then on pushes the
//     worker's desired VMs (VMSet) on every change, while the worker sends
//     heartbeats, VM status changes and VM log lines (Message, framed by
//     WriteMessage and ReadMessage);
//   - the controller opens one stream per connection it wants to a VM port,
//     or per IP lookup, starting with a Request header; the worker answers
//     with a Response and, for a dial, splices bytes between the stream and
//     the VM (Splice) until either side closes.
//
// spec.md beside this file is the protocol's specification: message shapes,
// who opens which stream, errors and versioning.
//
// The package also runs SSH sessions over such connections (RunSSH), the
// one way the worker, the CLI and the autoscaler run commands in VMs.
package tunnel
