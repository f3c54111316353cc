package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// maxBodySize bounds request bodies; larger ones get 413.
const maxBodySize = 4 << 20

// Capabilities are what GET /v1/controller/info advertises. None of them
// is one of Orchard's worker protocols (rpc-v1, rpc-v2,
// vm-state-endpoint): Orchard's stock worker is not supported, and
// advertising nothing it knows makes it fail fast.
func Capabilities() []string { return []string{"tunnel-v1", "port-forward-wait-dial", "vm-ip-wait-0"} }

// defaultWait is how long port-forward waits without ?wait=, as Orchard.
const defaultWait = 10 * time.Second

// route is one API endpoint. Every route is in this table, which the
// security tests walk, so a route cannot forget its access rule.
type route struct {
	method, path string
	access       access
	handle       func(c *Controller, w http.ResponseWriter, r *http.Request) error
	// long routes (watches, WebSockets) are left out of latency metrics.
	long bool
}

func routes() []route {
	read, write := allOf(v1.RoleComputeRead), allOf(v1.RoleComputeWrite)
	connect := anyOf(v1.RoleComputeWrite, v1.RoleComputeConnect)
	return []route{
		{method: "GET", path: "/healthz", access: access{public: true}, handle: (*Controller).getHealthz},
		{method: "GET", path: "/metrics", access: authenticated, handle: (*Controller).getMetrics},
		{method: "GET", path: "/v1/{$}", access: authenticated, handle: func(*Controller, http.ResponseWriter, *http.Request) error { return nil }},
		{method: "GET", path: "/v1/controller/info", access: authenticated, handle: (*Controller).getInfo},

		{method: "GET", path: "/v1/cluster-settings", access: allOf(v1.RoleAdminRead), handle: (*Controller).getSettings},
		{method: "PUT", path: "/v1/cluster-settings", access: allOf(v1.RoleAdminWrite), handle: (*Controller).putSettings},

		{method: "POST", path: "/v1/service-accounts", access: allOf(v1.RoleAdminWrite), handle: (*Controller).postAccount},
		{method: "GET", path: "/v1/service-accounts", access: allOf(v1.RoleAdminRead), handle: (*Controller).listAccounts},
		{method: "GET", path: "/v1/service-accounts/{name}", access: allOf(v1.RoleAdminRead), handle: (*Controller).getAccount},
		{method: "PUT", path: "/v1/service-accounts/{name}", access: allOf(v1.RoleAdminWrite), handle: (*Controller).putAccount},
		{method: "DELETE", path: "/v1/service-accounts/{name}", access: allOf(v1.RoleAdminWrite), handle: (*Controller).deleteAccount},

		{method: "GET", path: "/v1/workers", access: read, handle: (*Controller).listWorkers},
		{method: "GET", path: "/v1/workers/{name}", access: read, handle: (*Controller).getWorker},
		{method: "PUT", path: "/v1/workers/{name}", access: write, handle: (*Controller).putWorker},
		{method: "DELETE", path: "/v1/workers/{name}", access: write, handle: (*Controller).deleteWorker},
		{method: "GET", path: "/v1/workers/{name}/tunnel", access: allOf(v1.RoleComputeRead, v1.RoleComputeWrite), handle: (*Controller).getTunnel, long: true},

		{method: "POST", path: "/v1/vms", access: write, handle: (*Controller).postVM},
		{method: "GET", path: "/v1/vms", access: read, handle: (*Controller).listVMs},
		{method: "GET", path: "/v1/vms/{name}", access: read, handle: (*Controller).getVM, long: true},
		{method: "PUT", path: "/v1/vms/{name}", access: write, handle: (*Controller).putVM},
		{method: "DELETE", path: "/v1/vms/{name}", access: write, handle: (*Controller).deleteVM},
		{method: "GET", path: "/v1/vms/{name}/events", access: read, handle: (*Controller).getEvents},
		{method: "POST", path: "/v1/vms/{name}/events", access: write, handle: (*Controller).postEvents},
		{method: "GET", path: "/v1/vms/{name}/ip", access: connect, handle: (*Controller).getIP},
		{method: "GET", path: "/v1/vms/{name}/port-forward", access: connect, handle: (*Controller).getPortForward, long: true},
	}
}

// Handler returns the HTTP API. Every request but the public routes is
// authenticated before routing, so a bad credential gets 401 whatever
// the path, method or route.
func (c *Controller) Handler() http.Handler {
	mux := http.NewServeMux()
	public := map[string]bool{}
	for _, rt := range routes() {
		if rt.access.public {
			public[rt.path] = true
		}
		mux.Handle(rt.method+" "+rt.path, c.serveRoute(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !public[r.URL.Path] {
			sa, err := c.authenticate(r)
			if err != nil {
				w.Header().Set("WWW-Authenticate", `Basic realm="orchard"`)
				writeError(w, err)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), accountKey{}, sa))
		}
		mux.ServeHTTP(w, r)
	})
}

type accountKey struct{}

// accountOf is the name of the service account that made r.
func accountOf(r *http.Request) string {
	if sa, ok := r.Context().Value(accountKey{}).(*v1.ServiceAccount); ok {
		return sa.Name
	}
	return ""
}

func (c *Controller) serveRoute(rt route) http.Handler {
	label := rt.method + " " + rt.path
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		if !rt.access.public {
			sa, _ := r.Context().Value(accountKey{}).(*v1.ServiceAccount)
			if err := rt.access.authorize(sa); err != nil {
				writeError(rec, err)
				c.metrics.requests.WithLabelValues(label, strconv.Itoa(rec.status)).Inc()
				return
			}
		}
		r.Body = http.MaxBytesReader(rec, r.Body, maxBodySize)
		if err := rt.handle(c, rec, r); err != nil {
			if !rec.wrote {
				writeError(rec, err)
			}
		}
		c.metrics.requests.WithLabelValues(label, strconv.Itoa(rec.status)).Inc()
		if !rt.long {
			c.metrics.requestDuration.WithLabelValues(label).Observe(time.Since(start).Seconds())
		}
	})
}

// statusRecorder remembers the status for metrics and whether a response
// started, so an error after that is not written twice.
type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func writeError(w http.ResponseWriter, err error) {
	status := StatusOf(err)
	msg := err.Error()
	if status == http.StatusInternalServerError {
		msg = "internal error: " + msg
	}
	writeJSON(w, status, v1.Error{Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

func ok(w http.ResponseWriter, v any) error { return writeJSON(w, http.StatusOK, v) }

// decode reads a JSON body into v: 413 when it is over the limit, 400 when
// it is not JSON of the right shape.
func decode(r *http.Request, v any) error {
	err := json.NewDecoder(r.Body).Decode(v)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", tooLarge.Limit)
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "invalid JSON was provided: the body is empty")
	case err != nil:
		return errorf(http.StatusBadRequest, "invalid JSON was provided: %v", err)
	}
	return nil
}

func (c *Controller) getHealthz(w http.ResponseWriter, r *http.Request) error {
	if err := c.Healthy(); err != nil {
		return errorf(http.StatusServiceUnavailable, "unhealthy: %v", err)
	}
	return ok(w, map[string]string{"status": "ok"})
}

func (c *Controller) getMetrics(w http.ResponseWriter, r *http.Request) error {
	promhttp.HandlerFor(c.metrics.registry, promhttp.HandlerOpts{}).ServeHTTP(w, r)
	return nil
}

func (c *Controller) getInfo(w http.ResponseWriter, r *http.Request) error {
	return ok(w, v1.ControllerInfo{Version: c.cfg.Version, Commit: c.cfg.Commit, Capabilities: Capabilities()})
}

func (c *Controller) getSettings(w http.ResponseWriter, r *http.Request) error {
	return ok(w, c.ClusterSettings())
}

func (c *Controller) putSettings(w http.ResponseWriter, r *http.Request) error {
	var cs v1.ClusterSettings
	if err := decode(r, &cs); err != nil {
		return err
	}
	out, err := c.SetClusterSettings(r.Context(), cs)
	if err != nil {
		return err
	}
	return ok(w, out)
}

func (c *Controller) postAccount(w http.ResponseWriter, r *http.Request) error {
	var sa v1.ServiceAccount
	if err := decode(r, &sa); err != nil {
		return err
	}
	out, err := c.CreateServiceAccount(r.Context(), &sa)
	if err != nil {
		return err
	}
	return ok(w, out)
}

func (c *Controller) listAccounts(w http.ResponseWriter, r *http.Request) error {
	return ok(w, c.ServiceAccounts())
}

func (c *Controller) getAccount(w http.ResponseWriter, r *http.Request) error {
	sa, err := c.ServiceAccount(r.PathValue("name"))
	if err != nil {
		return err
	}
	return ok(w, sa)
}

func (c *Controller) putAccount(w http.ResponseWriter, r *http.Request) error {
	var sa v1.ServiceAccount
	if err := decode(r, &sa); err != nil {
		return err
	}
	out, err := c.UpdateServiceAccount(r.Context(), r.PathValue("name"), &sa)
	if err != nil {
		return err
	}
	return ok(w, out)
}

func (c *Controller) deleteAccount(w http.ResponseWriter, r *http.Request) error {
	if err := c.DeleteServiceAccount(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (c *Controller) listWorkers(w http.ResponseWriter, r *http.Request) error {
	return ok(w, c.Workers())
}

func (c *Controller) getWorker(w http.ResponseWriter, r *http.Request) error {
	wk, err := c.Worker(r.PathValue("name"))
	if err != nil {
		return err
	}
	return ok(w, wk)
}

func (c *Controller) putWorker(w http.ResponseWriter, r *http.Request) error {
	var body v1.Worker
	if err := decode(r, &body); err != nil {
		return err
	}
	out, err := c.UpdateWorker(r.Context(), r.PathValue("name"), WorkerUpdate{SchedulingPaused: body.SchedulingPaused, LastSeen: body.LastSeen})
	if err != nil {
		return err
	}
	return ok(w, out)
}

func (c *Controller) deleteWorker(w http.ResponseWriter, r *http.Request) error {
	if err := c.DeleteWorker(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (c *Controller) getTunnel(w http.ResponseWriter, r *http.Request) error {
	c.serveTunnel(w, r, r.PathValue("name"))
	return nil
}

func (c *Controller) postVM(w http.ResponseWriter, r *http.Request) error {
	var vm v1.VM
	if err := decode(r, &vm); err != nil {
		return err
	}
	out, err := c.CreateVM(r.Context(), &vm)
	if err != nil {
		return err
	}
	return ok(w, out)
}

// listVMs answers from the JSON the store keeps, without encoding.
func (c *Controller) listVMs(w http.ResponseWriter, r *http.Request) error {
	keep, err := parseFilters(r.URL.Query()["filter"])
	if err != nil {
		return err
	}
	buf := listBuffers.Get().(*[]byte)
	defer listBuffers.Put(buf)
	*buf = c.store.AppendVMsJSON((*buf)[:0], keep)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(*buf)
	return nil
}

var listBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// parseFilters turns ?filter=path=value[,path=value] (repeatable) into a
// predicate: every pair must match. Paths are the VM's top-level string
// fields; an unknown path matches nothing, as in Orchard.
func parseFilters(filters []string) (func(*v1.VM) bool, error) {
	type pair struct{ path, value string }
	var pairs []pair
	for _, f := range filters {
		for part := range strings.SplitSeq(f, ",") {
			path, value, found := strings.Cut(part, "=")
			if !found || path == "" {
				return nil, errorf(http.StatusPreconditionFailed, "invalid filter %q: expected path=value", part)
			}
			pairs = append(pairs, pair{path, value})
		}
	}
	if len(pairs) == 0 {
		return nil, nil
	}
	return func(vm *v1.VM) bool {
		for _, p := range pairs {
			var got string
			switch p.path {
			case "worker":
				got = vm.Worker
			case "status":
				got = string(vm.Status)
			case "name":
				got = vm.Name
			case "uid":
				got = vm.UID
			case "image":
				got = vm.Image
			default:
				return false
			}
			if got != p.value {
				return false
			}
		}
		return true
	}, nil
}

func (c *Controller) getVM(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if r.URL.Query().Get("watch") == "true" {
		return c.watchVM(w, r, name)
	}
	vm, err := c.VM(name)
	if err != nil {
		return err
	}
	return ok(w, vm)
}

// watchVM streams the VM as ndjson: ADDED with its current state, then
// MODIFIED on every change, and DELETED (with an empty object, as Orchard)
// when it goes, which ends the stream.
func (c *Controller) watchVM(w http.ResponseWriter, r *http.Request, name string) error {
	sub := c.store.Subscribe()
	defer sub.Close()
	vm, err := c.VM(name)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	send := func(typ string, vm *v1.VM) bool {
		if enc.Encode(v1.WatchEvent{Type: typ, Object: vm}) != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send(v1.WatchAdded, vm) {
		return nil
	}
	// Memory runs ahead of the feed: skip changes the ADDED state already
	// reflects.
	uid, seen := vm.UID, vm.Version
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-c.ctx.Done():
			return nil
		case <-sub.Ready():
		}
		changes, live := sub.Drain()
		for _, ch := range changes {
			if ch.Kind != store.KindVM || ch.Name != name || ch.Rev <= seen {
				continue
			}
			if ch.VM == nil || ch.VM.UID != uid {
				send(v1.WatchDeleted, &v1.VM{})
				return nil
			}
			if !send(v1.WatchModified, ch.VM) {
				return nil
			}
		}
		if !live {
			return nil // fell too far behind; the client watches again
		}
	}
}

func (c *Controller) putVM(w http.ResponseWriter, r *http.Request) error {
	var spec v1.VM
	if err := decode(r, &spec); err != nil {
		return err
	}
	out, err := c.UpdateVMSpec(r.Context(), r.PathValue("name"), &spec)
	if err != nil {
		return err
	}
	return ok(w, out)
}

func (c *Controller) deleteVM(w http.ResponseWriter, r *http.Request) error {
	if err := c.DeleteVM(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// NextCursorHeader carries the cursor of the next page of events.
const NextCursorHeader = "X-Next-Cursor"

func (c *Controller) getEvents(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var eq store.EventsQuery
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > maxEventsPerAppend {
			return errorf(http.StatusBadRequest, "invalid limit %q: want 1 to %d", s, maxEventsPerAppend)
		}
		eq.Limit = n
	}
	switch q.Get("order") {
	case "", "asc":
	case "desc":
		eq.Descending = true
	default:
		return errorf(http.StatusBadRequest, "invalid order %q: want asc or desc", q.Get("order"))
	}
	eq.Cursor = q.Get("cursor")
	if q.Get("follow") == "true" {
		return c.followEvents(w, r, r.PathValue("name"), eq.Cursor)
	}
	events, next, err := c.VMEvents(r.PathValue("name"), eq)
	if err != nil {
		return err
	}
	if next != "" {
		w.Header().Set(NextCursorHeader, next)
	}
	return ok(w, events)
}

// followEvents streams the VM's log as ndjson, one event per line, from
// cursor on, then each event as it is appended, until the VM is deleted
// or the client goes. It is ours (Orchard has no such stream); `orchard vms
// logs --follow` uses it.
func (c *Controller) followEvents(w http.ResponseWriter, r *http.Request, name, cursor string) error {
	sub := c.store.Subscribe()
	defer func() { sub.Close() }() // sub may be replaced below
	vm, err := c.VM(name)
	if err != nil {
		return err
	}
	if _, _, err := c.store.Events(vm.UID, store.EventsQuery{Cursor: cursor, Limit: 1}); err != nil {
		return errorf(http.StatusBadRequest, "invalid cursor")
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	for {
		for {
			page, next, err := c.store.Events(vm.UID, store.EventsQuery{Cursor: cursor, Limit: 1000})
			if err != nil || len(page) == 0 {
				break
			}
			for _, e := range page {
				if enc.Encode(e) != nil {
					return nil
				}
			}
			if rc.Flush() != nil {
				return nil
			}
			cursor = next
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-c.ctx.Done():
			return nil
		case <-sub.Ready():
		}
		changes, live := sub.Drain()
		for _, ch := range changes {
			if ch.Kind == store.KindVM && ch.Name == name && (ch.VM == nil || ch.VM.UID != vm.UID) {
				return nil // deleted: the log is complete
			}
		}
		if !live {
			sub.Close()
			sub = c.store.Subscribe()
		}
	}
}

func (c *Controller) postEvents(w http.ResponseWriter, r *http.Request) error {
	var events []v1.Event
	if err := decode(r, &events); err != nil {
		return err
	}
	if err := c.AppendVMEvents(r.PathValue("name"), events); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// waitParam reads ?wait= in seconds.
func waitParam(r *http.Request, def time.Duration) (time.Duration, error) {
	s := r.URL.Query().Get("wait")
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, errorf(http.StatusBadRequest, "invalid wait %q: want seconds, 0 to 65535", s)
	}
	return time.Duration(n) * time.Second, nil
}

func (c *Controller) getIP(w http.ResponseWriter, r *http.Request) error {
	wait, err := waitParam(r, 0)
	if err != nil {
		return err
	}
	ip, err := c.VMIP(r.Context(), r.PathValue("name"), wait)
	if err != nil {
		return err
	}
	return ok(w, v1.IP{IP: ip})
}

// getPortForward connects to the VM's port first and upgrades to a
// WebSocket only then, so every failure is an HTTP status: 400 bad port,
// 404 no VM, 408 not running in time, 417 failed, 503 port or worker
// unreachable.
func (c *Controller) getPortForward(w http.ResponseWriter, r *http.Request) error {
	port, err := strconv.ParseUint(r.URL.Query().Get("port"), 10, 16)
	if err != nil || port == 0 {
		return errorf(http.StatusBadRequest, "invalid port %q: want 1 to 65535", r.URL.Query().Get("port"))
	}
	wait, err := waitParam(r, defaultWait)
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	conn, err := c.DialVMWait(r.Context(), name, uint16(port), wait)
	if err != nil {
		return err
	}
	// Clients on x/net/websocket send no User-Agent and expect text
	// frames, as Orchard serves them.
	typ := tunnel.Binary
	if r.UserAgent() == "" {
		typ = tunnel.Text
	}
	ws, err := tunnel.AcceptWebSocket(w, r, typ)
	if err != nil {
		conn.Close()
		return nil // AcceptWebSocket has answered
	}
	c.metrics.streams.WithLabelValues("port-forward").Inc()
	tunnel.Splice(ws, lostSessionCloses{conn, ws})
	return nil
}

// lostSessionCloses ends the client's WebSocket with status 1011 when the
// worker's tunnel dies mid-stream, so a cut connection does not look like
// a normal end (1000).
type lostSessionCloses struct {
	net.Conn
	ws *tunnel.WebSocket
}

func (l lostSessionCloses) Read(p []byte) (int, error) {
	n, err := l.Conn.Read(p)
	if errors.Is(err, tunnel.ErrSessionLost) {
		_ = l.ws.CloseWithStatus(tunnel.StatusInternalError, "the worker's tunnel was lost")
	}
	return n, err
}

// Route describes one API endpoint and what it requires.
type Route struct {
	Method, Path string
	// Public routes need no credentials.
	Public bool
	// AllOf roles are all required; one of AnyOf suffices. Neither: any
	// valid service account.
	AllOf, AnyOf []v1.Role
}

// Routes lists every endpoint of the API.
func Routes() []Route {
	var out []Route
	for _, rt := range routes() {
		out = append(out, Route{Method: rt.method, Path: rt.path, Public: rt.access.public, AllOf: rt.access.all, AnyOf: rt.access.any})
	}
	return out
}
