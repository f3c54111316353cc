package fleet_test

import (
	"context"
	"errors"
	"fmt"
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

func TestWorkerLossFailsAndReschedules(t *testing.T) {
	e := newEnv(t, envOptions{offlineTimeout: 300 * time.Millisecond, restartDelay: 200 * time.Millisecond})
	w1, err := e.connectWorker("w1", workerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range []*v1.VM{
		{Image: "i", RestartPolicy: v1.RestartPolicyOnFailure, Meta: v1.Meta{Name: "again"}},
		{Image: "i", Meta: v1.Meta{Name: "once"}},
	} {
		if _, err := e.admin.CreateVM(t.Context(), vm); err != nil {
			t.Fatal(err)
		}
		e.waitVM(vm.Name, func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning && vm.Worker == "w1" })
	}
	if _, err := e.connectWorker("w2", workerOptions{}); err != nil {
		t.Fatal(err)
	}
	w1.close()

	failed := e.waitVM("once", func(vm *v1.VM) bool { return vm.Status == v1.VMStatusFailed })
	if failed.StatusMessage != "VM is assigned to a worker that lost connection with the controller" {
		t.Errorf("reason = %q", failed.StatusMessage)
	}
	back := e.waitVM("again", func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning && vm.Worker == "w2" })
	if back.RestartCount != 1 || back.LocalName != v1.LocalNameFor("again", back.UID, 1) || back.RestartedAt.IsZero() {
		t.Errorf("restarted VM: count %d, local name %q, restarted_at %v", back.RestartCount, back.LocalName, back.RestartedAt)
	}
	time.Sleep(500 * time.Millisecond) // well past the restart delay
	if vm, _ := e.c.VM("once"); vm.Status != v1.VMStatusFailed {
		t.Errorf("a Never VM left failed: %s", vm.Status)
	}
}

func TestDeletedWorkerFailsItsVMs(t *testing.T) {
	e := newEnv(t)
	w, err := e.connectWorker("w1", workerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}}); err != nil {
		t.Fatal(err)
	}
	e.waitVM("vm", func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning })
	if err := e.admin.DeleteWorker(t.Context(), "w1"); err != nil {
		t.Fatal(err)
	}
	vm := e.waitVM("vm", func(vm *v1.VM) bool { return vm.Status == v1.VMStatusFailed })
	if !strings.Contains(vm.StatusMessage, "doesn't exist anymore") {
		t.Errorf("reason = %q", vm.StatusMessage)
	}
	select {
	case <-w.mux.CloseChan():
	case <-time.After(10 * time.Second):
		t.Error("a deleted worker kept its tunnel")
	}
	if err := e.admin.DeleteWorker(t.Context(), "w1"); apiStatus(err) != 404 {
		t.Errorf("delete missing worker: %v, want 404", err)
	}
}

func TestControllerRestartGraceAndLostTrack(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, envOptions{dir: dir})
	w, err := e.connectWorker("w1", workerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"kept", "lost"} {
		if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: name}}); err != nil {
			t.Fatal(err)
		}
		e.waitVM(name, func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning })
	}
	kept, _ := e.c.VM("kept")
	w.close()
	e.stop()

	// Restarted with a short offline timeout: the worker has that long to
	// come back before anything fails.
	e2 := newEnv(t, envOptions{dir: dir, offlineTimeout: 2 * time.Second})
	time.Sleep(300 * time.Millisecond)
	for _, name := range []string{"kept", "lost"} {
		if vm, _ := e2.c.VM(name); vm.Status != v1.VMStatusRunning {
			t.Fatalf("%s is %s right after a controller restart, before the grace period", name, vm.Status)
		}
	}
	// The worker comes back holding only one of the two.
	if _, err := e2.connectWorker("w1", workerOptions{instances: []tunnel.Instance{{LocalName: kept.LocalName, Running: true}}}); err != nil {
		t.Fatal(err)
	}
	lost := e2.waitVM("lost", func(vm *v1.VM) bool { return vm.Status == v1.VMStatusFailed })
	if !strings.Contains(lost.StatusMessage, "lost track") {
		t.Errorf("reason = %q", lost.StatusMessage)
	}
	time.Sleep(2500 * time.Millisecond) // past the offline timeout
	if vm, _ := e2.c.VM("kept"); vm.Status != v1.VMStatusRunning {
		t.Errorf("a VM the reconnected worker still holds is %s: %s", vm.Status, vm.StatusMessage)
	}
}

func TestWorkerAdmission(t *testing.T) {
	e := newEnv(t)
	if _, err := e.connectWorker("w1", workerOptions{machineID: "one"}); err != nil {
		t.Fatal(err)
	}
	_, err := e.connectWorker("w1", workerOptions{machineID: "two"})
	var de *tunnel.DialError
	if !errors.As(err, &de) || de.StatusCode != http.StatusConflict {
		t.Errorf("same name, other machine: %v, want 409", err)
	}

	dial := func(name, token string) error {
		c := e.client(name, token, nil)
		h := c.AuthHeader()
		h.Set(fleet.MachineIDHeader, "m")
		conn, err := tunnel.Dial(context.Background(), c.URL("/v1/workers/w9/tunnel"), c.StreamHTTPClient(), h)
		if err == nil {
			conn.Close()
		}
		return err
	}
	// A name belongs to the account that first connected with it.
	other, err := e.admin.CreateServiceAccount(t.Context(), &v1.ServiceAccount{Roles: []v1.Role{v1.RoleComputeRead, v1.RoleComputeWrite}, Meta: v1.Meta{Name: "other"}})
	if err != nil {
		t.Fatal(err)
	}
	c := e.client("other", other.Token, nil)
	h := c.AuthHeader()
	h.Set(fleet.MachineIDHeader, "one")
	if _, err := tunnel.Dial(context.Background(), c.URL("/v1/workers/w1/tunnel"), c.StreamHTTPClient(), h); !errors.As(err, &de) ||
		de.StatusCode != http.StatusConflict || !strings.Contains(de.Message, "another service account") {
		t.Errorf("another account taking over w1: %v, want 409", err)
	}
	if err := dial(fleet.BootstrapAdmin, "forged"); !errors.As(err, &de) || de.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong token: %v, want 401", err)
	}
	ro, err := e.admin.CreateServiceAccount(t.Context(), &v1.ServiceAccount{Roles: []v1.Role{v1.RoleComputeRead}, Meta: v1.Meta{Name: "ro"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := dial("ro", ro.Token); !errors.As(err, &de) || de.StatusCode != http.StatusForbidden {
		t.Errorf("read-only account: %v, want 403", err)
	}
	if _, ok := e.c.Workers(), true; ok {
		for _, w := range e.c.Workers() {
			if w.Name == "w9" {
				t.Error("a refused worker was registered")
			}
		}
	}
}

func TestWorkerPauseResume(t *testing.T) {
	e := newEnv(t)
	if _, err := e.connectWorker("w1", workerOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.SetWorkerPaused(t.Context(), "w1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}}); err != nil {
		t.Fatal(err)
	}
	e.waitVM("vm", func(vm *v1.VM) bool { return strings.Contains(vm.StatusMessage, "paused") })
	w, err := e.admin.SetWorkerPaused(t.Context(), "w1", false)
	if err != nil || w.SchedulingPaused {
		t.Fatalf("resume: %+v, %v", w, err)
	}
	e.waitVM("vm", func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning })
	got, err := e.admin.GetWorker(t.Context(), "w1")
	if err != nil || time.Since(got.LastSeen) > time.Minute || got.Driver != v1.DriverLocal {
		t.Errorf("worker = %+v, %v", got, err)
	}
}

func TestDeletedAccountEndsItsTunnels(t *testing.T) {
	e := newEnv(t)
	sa, err := e.admin.CreateServiceAccount(t.Context(), &v1.ServiceAccount{Roles: []v1.Role{v1.RoleComputeRead, v1.RoleComputeWrite}, Meta: v1.Meta{Name: "wk"}})
	if err != nil {
		t.Fatal(err)
	}
	c := e.client("wk", sa.Token, nil)
	h := c.AuthHeader()
	h.Set(fleet.MachineIDHeader, "m")
	conn, err := tunnel.Dial(context.Background(), c.URL("/v1/workers/w1/tunnel"), c.StreamHTTPClient(), h)
	if err != nil {
		t.Fatal(err)
	}
	mux, _ := tunnel.NewWorker(conn)
	defer mux.Close()
	control, _ := tunnel.OpenStream(mux)
	_ = tunnel.WriteMessage(control, &tunnel.Message{Type: tunnel.TypeHello, Hello: &tunnel.Hello{Protocol: 1, Name: "w1", MachineID: "m", Driver: v1.DriverLocal}})
	if m, err := tunnel.ReadMessage(control); err != nil || m.Type != tunnel.TypeWelcome {
		t.Fatalf("welcome: %+v %v", m, err)
	}
	if err := e.admin.DeleteServiceAccount(t.Context(), "wk"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-mux.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("a tunnel outlived the account it was opened with")
	}
}

func TestShutdownEndsWatches(t *testing.T) {
	dir := t.TempDir()
	c, err := fleet.Open(fleet.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _, _ = c.EnsureBootstrapAdmin(context.Background(), "tok")
	if _, err := c.CreateVM(context.Background(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- c.Serve(ctx, ln, nil) }()
	api, _ := client.New(client.Config{URL: "http://" + ln.Addr().String(), ServiceAccountName: fleet.BootstrapAdmin, ServiceAccountToken: "tok"})
	watching := make(chan struct{})
	go func() {
		_ = api.WatchVM(context.Background(), "vm", func(v1.WatchEvent) bool { close(watching); return false })
	}()
	<-watching
	start := time.Now()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve with an open watch returned %v, want a clean stop", err)
		}
		if time.Since(start) > 4*time.Second {
			t.Error("an open watch held the shutdown up to its deadline")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// TestLargeBatchesAreSplit: hundreds of VMs with big startup scripts are
// more than one store transaction holds; placing them must still work.
func TestLargeBatchesAreSplit(t *testing.T) {
	e := newEnv(t)
	if _, err := e.connectWorker("w1", workerOptions{resources: v1.Resources{v1.ResourceTartVMs: 1000}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.SetWorkerPaused(t.Context(), "w1", true); err != nil {
		t.Fatal(err)
	}
	script := strings.Repeat("echo some setup step\n", 1000) // ~21 KB
	for i := range 300 {
		if _, err := e.c.CreateVM(t.Context(), &v1.VM{Image: "i", StartupScript: &v1.VMScript{ScriptContent: script}, Meta: v1.Meta{Name: fmt.Sprintf("vm%03d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	// Resuming makes all 300 placeable in one scheduling pass: ~6 MB.
	if _, err := e.admin.SetWorkerPaused(t.Context(), "w1", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "300 large VMs placed and running", func() bool {
		return len(e.c.VMs(func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning })) == 300
	})
}
