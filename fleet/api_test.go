package fleet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/orchardci/orchard/fleet"
	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// rawRequest sends a request with the admin's credentials and returns the
// status and body, for what the Go client would not send.
func (e *env) rawRequest(method, path string, body []byte) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header = e.admin.AuthHeader()
	resp, err := e.admin.StreamHTTPClient().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCreateVMDefaults(t *testing.T) {
	e := newEnv(t)
	vm, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "ghcr.io/cirruslabs/macos-sequoia-base:latest", Meta: v1.Meta{Name: "vm1"}})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"status", vm.Status, v1.VMStatusPending},
		{"username", vm.Username, "admin"},
		{"password", vm.Password, "admin"},
		{"os", vm.OS, v1.OSDarwin},
		{"arch", vm.Arch, v1.ArchARM64},
		{"runtime", vm.Runtime, v1.RuntimeTart},
		{"restart policy", vm.RestartPolicy, v1.RestartPolicyNever},
		{"pull policy", vm.ImagePullPolicy, v1.ImagePullPolicyIfNotPresent},
		{"power state", vm.PowerState, v1.PowerStateRunning},
		{"tart-vms", vm.Resources[v1.ResourceTartVMs], uint64(1)},
		{"scheduled condition", vm.Condition(v1.ConditionScheduled), v1.ConditionFalse},
		{"local name", vm.LocalName, v1.LocalNameFor("vm1", vm.UID, 0)},
		{"uid is a UUID", len(vm.UID), 36},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	// A linux/vetu VM does not ask for a macOS slot.
	lin, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "ubuntu", OS: v1.OSLinux, Runtime: v1.RuntimeVetu, Arch: v1.ArchAMD64, Meta: v1.Meta{Name: "lin"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, asked := lin.Resources[v1.ResourceTartVMs]; asked {
		t.Errorf("linux VM asks for %s", v1.ResourceTartVMs)
	}
}

func TestCreateVMRejects(t *testing.T) {
	e := newEnv(t)
	if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "taken"}}); err != nil {
		t.Fatal(err)
	}
	big := `{"name":"big","image":"i","startup_script":{"script_content":"` + strings.Repeat("x", 5<<20) + `"}}`
	tests := []struct {
		name   string
		body   string
		status int
		msg    string
	}{
		{"invalid JSON", `{"name":`, 400, "invalid JSON"},
		{"empty body", ``, 400, "invalid JSON"},
		{"unknown os", `{"name":"a","image":"i","os":"windows"}`, 400, "unsupported value"},
		{"wrong type", `{"name":"a","image":"i","cpu":"four"}`, 400, "invalid JSON"},
		{"empty name", `{"image":"i"}`, 412, "name is empty"},
		{"bad name", `{"name":"a/b","image":"i"}`, 412, "restricted characters"},
		{"no image", `{"name":"a"}`, 412, "image is empty"},
		{"bad restart policy", `{"name":"a","image":"i","restart_policy":"Always"}`, 412, "unsupported restart policy"},
		{"bad pull policy", `{"name":"a","image":"i","imagePullPolicy":"Never"}`, 412, "unsupported image pull policy"},
		{"host dir without policy", `{"name":"a","image":"i","hostDirs":[{"name":"src","path":"/src"}]}`, 400, "not allowed"},
		{"exists", `{"name":"taken","image":"i"}`, 409, "already exists"},
		{"too large", big, 413, "larger than"},
		// 400 KB of '<' is 2.4 MB as stored JSON (\u003c): over a VM's limit.
		{"VM too large", `{"name":"huge","image":"i","startup_script":{"script_content":"` + strings.Repeat("<", 400<<10) + `"}}`, 413, "over the"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.c.VMs(nil))
			status, body := e.rawRequest("POST", "/v1/vms", []byte(tt.body))
			if status != tt.status || !strings.Contains(body, tt.msg) {
				t.Errorf("got %d %s, want %d mentioning %q", status, body, tt.status, tt.msg)
			}
			var e1 v1.Error
			if json.Unmarshal([]byte(body), &e1) != nil || e1.Message == "" {
				t.Errorf("error body %q is not {\"message\": ...}", body)
			}
			if after := len(e.c.VMs(nil)); after != before {
				t.Errorf("a rejected create changed the VM count from %d to %d", before, after)
			}
		})
	}
}

func TestHostDirPolicies(t *testing.T) {
	e := newEnv(t)
	_, err := e.admin.SetClusterSettings(t.Context(), &v1.ClusterSettings{HostDirPolicies: []v1.HostDirPolicy{{PathPrefix: "/data", ReadOnly: true}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dir v1.HostDir
		ok  bool
	}{
		{v1.HostDir{Name: "a", Path: "/data/src", ReadOnly: true}, true},
		{v1.HostDir{Name: "b", Path: "/data/src"}, false},                 // policy is read-only
		{v1.HostDir{Name: "c", Path: "/database", ReadOnly: true}, false}, // a prefix of the name is not a parent
		{v1.HostDir{Name: "d", Path: "/etc", ReadOnly: true}, false},
	}
	for i, tt := range tests {
		_, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", HostDirs: []v1.HostDir{tt.dir}, Meta: v1.Meta{Name: fmt.Sprintf("vm%d", i)}})
		if (err == nil) != tt.ok {
			t.Errorf("%+v: err = %v, want ok=%v", tt.dir, err, tt.ok)
		}
	}
}

func TestListFilterAndGet(t *testing.T) {
	e := newEnv(t)
	w, err := e.connectWorker("w1", workerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = w
	for _, name := range []string{"b", "a"} {
		if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: name}}); err != nil {
			t.Fatal(err)
		}
	}
	e.waitVM("a", func(vm *v1.VM) bool { return vm.Worker == "w1" })
	e.waitVM("b", func(vm *v1.VM) bool { return vm.Worker == "w1" })
	all, err := e.admin.ListVMs(t.Context())
	if err != nil || len(all) != 2 || all[0].Name != "a" {
		t.Fatalf("list = %v, %v", all, err)
	}
	on, err := e.admin.ListVMs(t.Context(), "worker=w1")
	if err != nil || len(on) != 2 {
		t.Errorf("filter worker=w1: %d VMs, %v", len(on), err)
	}
	none, err := e.admin.ListVMs(t.Context(), "worker=other")
	if err != nil || none == nil || len(none) != 0 {
		t.Errorf("filter worker=other: %v, %v; want []", none, err)
	}
	if status, body := e.rawRequest("GET", "/v1/vms?filter=nonsense", nil); status != 412 {
		t.Errorf("bad filter: %d %s", status, body)
	}
	if status, body := e.rawRequest("GET", "/v1/vms?filter=color=red", nil); status != 200 || body != "[]" {
		t.Errorf("unknown filter path: %d %s, want 200 []", status, body)
	}
	if _, err := e.admin.GetVM(t.Context(), "zzz"); apiStatus(err) != 404 {
		t.Errorf("get missing: %v", err)
	}
}

func TestWatchVM(t *testing.T) {
	e := newEnv(t)
	if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}}); err != nil {
		t.Fatal(err)
	}
	// Let the scheduler say why the VM waits before watching, so the only
	// modification is ours.
	e.waitVM("vm", func(vm *v1.VM) bool { return strings.Contains(vm.StatusMessage, "none is registered") })
	events := make(chan v1.WatchEvent, 16)
	done := make(chan error, 1)
	go func() {
		done <- e.admin.WatchVM(t.Context(), "vm", func(ev v1.WatchEvent) bool { events <- ev; return false })
	}()
	next := func() v1.WatchEvent {
		select {
		case ev := <-events:
			return ev
		case <-time.After(10 * time.Second):
			t.Fatal("no watch event")
			return v1.WatchEvent{}
		}
	}
	if ev := next(); ev.Type != v1.WatchAdded || ev.Object.Name != "vm" {
		t.Fatalf("first event = %+v", ev)
	}
	vm, _ := e.admin.GetVM(t.Context(), "vm")
	vm.NetSoftnet = true
	if _, err := e.admin.UpdateVM(t.Context(), vm); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != v1.WatchModified || ev.Object.Generation != 1 {
		t.Fatalf("second event = %s generation %d", ev.Type, ev.Object.Generation)
	}
	if err := e.admin.DeleteVM(t.Context(), "vm"); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != v1.WatchDeleted || ev.Object.Name != "" {
		t.Fatalf("last event = %+v", ev)
	}
	if err := <-done; err != nil {
		t.Errorf("watch ended with %v", err)
	}
}

func TestUpdateVMSpec(t *testing.T) {
	e := newEnv(t)
	vm, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}})
	if err != nil {
		t.Fatal(err)
	}
	vm.NetSoftnet = true
	vm.Image = "ignored"
	up, err := e.admin.UpdateVM(t.Context(), vm)
	if err != nil {
		t.Fatal(err)
	}
	if up.Generation != 1 || !up.NetSoftnet || !up.NetSoftnetKebab || up.Image != "i" {
		t.Errorf("after softnet on: generation %d, softnet %v/%v, image %q", up.Generation, up.NetSoftnet, up.NetSoftnetKebab, up.Image)
	}
	same, err := e.admin.UpdateVM(t.Context(), up)
	if err != nil || same.Generation != 1 {
		t.Errorf("a no-op update bumped the generation to %d (%v)", same.Generation, err)
	}
	rejects := []struct {
		name   string
		change func(*v1.VM)
	}{
		{"os change", func(vm *v1.VM) { vm.OS = v1.OSLinux }},
		{"suspend without suspendable", func(vm *v1.VM) { vm.PowerState = v1.PowerStateSuspended }},
		{"suspendable toggle", func(vm *v1.VM) { vm.Suspendable = true }},
		{"unknown power state", func(vm *v1.VM) { vm.PowerState = "paused" }},
	}
	for _, r := range rejects {
		c := up.Clone()
		r.change(c)
		if _, err := e.admin.UpdateVM(t.Context(), c); apiStatus(err) != 412 {
			t.Errorf("%s: %v, want 412", r.name, err)
		}
	}
	stop := up.Clone()
	stop.PowerState = v1.PowerStateStopped
	if _, err := e.admin.UpdateVM(t.Context(), stop); err != nil {
		t.Fatal(err)
	}
	stop.PowerState = v1.PowerStateRunning
	if _, err := e.admin.UpdateVM(t.Context(), stop); apiStatus(err) != 412 {
		t.Errorf("leaving stopped: %v, want 412", err)
	}
	if _, err := e.admin.UpdateVM(t.Context(), &v1.VM{Meta: v1.Meta{Name: "nope"}}); apiStatus(err) != 404 {
		t.Errorf("update missing: %v", err)
	}
}

func TestServiceAccountsAndSettings(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	sa, err := e.admin.CreateServiceAccount(ctx, &v1.ServiceAccount{Roles: []v1.Role{v1.RoleComputeRead}, Meta: v1.Meta{Name: "ci"}})
	if err != nil || len(sa.Token) < 32 {
		t.Fatalf("create: %+v, %v", sa, err)
	}
	if _, err := e.admin.CreateServiceAccount(ctx, &v1.ServiceAccount{Meta: v1.Meta{Name: "ci"}}); apiStatus(err) != 409 {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := e.admin.CreateServiceAccount(ctx, &v1.ServiceAccount{Roles: []v1.Role{"root"}, Meta: v1.Meta{Name: "x"}}); apiStatus(err) != 412 {
		t.Errorf("unknown role: %v", err)
	}
	// The path names the account, whatever the body says.
	status, body := e.rawRequest("PUT", "/v1/service-accounts/ci", []byte(`{"name":"other","token":"new-token","roles":["admin:read"]}`))
	if status != 200 || !strings.Contains(body, `"name":"ci"`) {
		t.Errorf("put: %d %s", status, body)
	}
	if status, _ := e.rawRequest("PUT", "/v1/service-accounts/ci", []byte(`{"token":""}`)); status != 412 {
		t.Errorf("put without a token: %d", status)
	}
	got, err := e.admin.GetServiceAccount(ctx, "ci")
	if err != nil || got.Token != "new-token" {
		t.Errorf("token after put: %+v, %v (readable by admin:read, as Orchard's bootstrap tokens need)", got, err)
	}
	if err := e.admin.DeleteServiceAccount(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.DeleteServiceAccount(ctx, "ci"); apiStatus(err) != 404 {
		t.Errorf("delete missing: %v, want 404", err)
	}

	cs, err := e.admin.ClusterSettings(ctx)
	if err != nil || cs.SchedulerProfile != "" || cs.HostDirPolicies != nil {
		t.Errorf("fresh settings = %+v, %v; want {}", cs, err)
	}
	if status, body := e.rawRequest("GET", "/v1/cluster-settings", nil); body != "{}" {
		t.Errorf("fresh settings JSON = %d %s, want {}", status, body)
	}
	if _, err := e.admin.SetClusterSettings(ctx, &v1.ClusterSettings{SchedulerProfile: "random"}); apiStatus(err) != 400 {
		t.Errorf("bad profile: %v", err)
	}
	if _, err := e.admin.SetClusterSettings(ctx, &v1.ClusterSettings{HostDirPolicies: []v1.HostDirPolicy{{}}}); apiStatus(err) != 400 {
		t.Errorf("empty path prefix: %v", err)
	}
	out, err := e.admin.SetClusterSettings(ctx, &v1.ClusterSettings{})
	if err != nil || out.SchedulerProfile != v1.SchedulerProfileOptimizeUtilization {
		t.Errorf("empty profile stored as %q, %v", out.SchedulerProfile, err)
	}
}

func TestControllerInfoAndHealth(t *testing.T) {
	e := newEnv(t)
	info, err := e.admin.ControllerInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, orchards := range []string{"rpc-v1", "rpc-v2", "vm-state-endpoint"} {
		for _, c := range info.Capabilities {
			if c == orchards {
				t.Errorf("capabilities name Orchard's worker protocol %q", c)
			}
		}
	}
	resp, err := e.admin.StreamHTTPClient().Get(e.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	status, body := e.rawRequest("GET", "/metrics", nil)
	if status != 200 || !strings.Contains(body, "orchard_vms{") || !strings.Contains(body, "orchard_http_requests_total") {
		t.Errorf("metrics: %d, %.200s", status, body)
	}
}

func TestEventsAPI(t *testing.T) {
	e := newEnv(t)
	if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}}); err != nil {
		t.Fatal(err)
	}
	var evs []v1.Event
	for i := range 25 {
		evs = append(evs, v1.Event{Kind: v1.EventKindLogLine, Timestamp: time.Now().Unix(), Payload: fmt.Sprintf("line %d", i)})
	}
	if err := e.admin.AppendVMEvents(t.Context(), "vm", evs); err != nil {
		t.Fatal(err)
	}
	var got []string
	q := client.EventsQuery{Limit: 10}
	for {
		page, next, err := e.admin.VMEvents(t.Context(), "vm", q)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range page {
			got = append(got, ev.Payload)
		}
		if len(page) == 0 {
			break
		}
		q.Cursor = next
	}
	if len(got) != 25 || got[0] != "line 0" || got[24] != "line 24" {
		t.Errorf("paged events: %d, first %q", len(got), got[0])
	}
	last, _, err := e.admin.VMEvents(t.Context(), "vm", client.EventsQuery{Limit: 1, Descending: true})
	if err != nil || len(last) != 1 || last[0].Payload != "line 24" {
		t.Errorf("newest event: %v, %v", last, err)
	}
	for _, bad := range []string{"limit=0", "limit=x", "order=sideways", "cursor=%21%21", "cursor=garbage"} {
		if status, _ := e.rawRequest("GET", "/v1/vms/vm/events?"+bad, nil); status != 400 {
			t.Errorf("%s: %d, want 400", bad, status)
		}
	}
	if status, _ := e.rawRequest("GET", "/v1/vms/nope/events", nil); status != 404 {
		t.Errorf("events of a missing VM: %d", status)
	}
}

func TestPortForwardAndIP(t *testing.T) {
	e := newEnv(t)
	// The "VM's" service: an echo server on loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	_, err = e.connectWorker("w1", workerOptions{dial: func(req tunnel.Request) (net.Conn, error) {
		if req.Port != 8080 {
			return nil, fmt.Errorf("connection refused")
		}
		return net.Dial("tcp", ln.Addr().String())
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}}); err != nil {
		t.Fatal(err)
	}
	// wait covers the VM becoming running: no need to wait beforehand.
	conn, err := e.admin.PortForward(t.Context(), "vm", 8080, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("through the tunnel")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil || !bytes.Equal(buf, msg) {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	conn.Close()

	// A port that refuses: an HTTP status, not a dropped socket.
	_, err = e.admin.PortForward(t.Context(), "vm", 9999, 1*time.Second)
	if apiStatus(err) != 503 || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("refused port: %v, want 503 with the reason", err)
	}
	if _, err := e.admin.PortForward(t.Context(), "nope", 22, 0); apiStatus(err) != 404 {
		t.Errorf("missing VM: %v, want 404", err)
	}
	// wait=0 answers (Orchard answers 500).
	ip, err := e.admin.VMIP(t.Context(), "vm", 0)
	if err != nil || ip != "127.0.0.1" {
		t.Errorf("ip with wait=0: %q, %v", ip, err)
	}
}

func TestPortForwardWaitsForRunning(t *testing.T) {
	e := newEnv(t)
	w, err := e.connectWorker("w1", workerOptions{noStart: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.PortForward(t.Context(), "vm", 22, time.Second); apiStatus(err) != 408 {
		t.Errorf("VM that never runs: %v, want 408", err)
	}
	waitFor(t, "the worker to hold the VM", func() bool { return w.has("vm") })
	w.mu.Lock()
	vm := w.vms["vm"]
	w.mu.Unlock()
	w.report(vm, v1.VMStatusFailed, "boom")
	e.waitVM("vm", func(vm *v1.VM) bool { return vm.Status == v1.VMStatusFailed })
	if _, err := e.admin.PortForward(t.Context(), "vm", 22, time.Second); apiStatus(err) != 417 {
		t.Errorf("failed VM: %v, want 417", err)
	}
}

func TestBootstrapAdmin(t *testing.T) {
	dir := t.TempDir()
	c, err := fleet.Open(fleet.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	created, token, err := c.EnsureBootstrapAdmin(ctx, "")
	if err != nil || !created || len(token) < 32 {
		t.Fatalf("first start: created=%v token=%d chars, %v", created, len(token), err)
	}
	if created, _, _ := c.EnsureBootstrapAdmin(ctx, ""); created {
		t.Error("second start without a token created the admin again")
	}
	if _, tok, _ := c.EnsureBootstrapAdmin(ctx, "fixed"); tok != "fixed" {
		t.Error("a given token was not applied")
	}
	sa, _ := c.ServiceAccount(fleet.BootstrapAdmin)
	if sa.Token != "fixed" || len(sa.Roles) != len(v1.AllRoles) {
		t.Errorf("admin after env token: %+v", sa)
	}
	c.Close()
}
