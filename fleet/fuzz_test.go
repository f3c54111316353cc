package fleet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/orchardci/orchard/fleet"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// FuzzAPIBodies sends arbitrary bodies to every endpoint that takes one.
// Whatever the body, the answer is 200, or a 4xx with a {"message"} body
// that changed nothing; never a 500, never a panic, and whatever was
// stored is valid.
func FuzzAPIBodies(f *testing.F) {
	endpoints := []struct{ method, path string }{
		{"POST", "/v1/vms"},
		{"PUT", "/v1/vms/existing"},
		{"POST", "/v1/vms/existing/events"},
		{"POST", "/v1/service-accounts"},
		{"PUT", "/v1/service-accounts/bootstrap-admin-2"},
		{"PUT", "/v1/cluster-settings"},
		{"PUT", "/v1/workers/w1"},
	}
	f.Add(uint8(0), []byte(`{"name":"a","image":"i","os":"linux","resources":{"x":1}}`))
	f.Add(uint8(1), []byte(`{"powerState":"stopped","netSoftnet":true}`))
	f.Add(uint8(2), []byte(`[{"kind":"log_line","timestamp":1,"payload":"x"}]`))
	f.Add(uint8(3), []byte(`{"name":"ci","roles":["compute:read"]}`))
	f.Add(uint8(4), []byte(`{"token":"t","roles":["admin:read"]}`))
	f.Add(uint8(5), []byte(`{"schedulerProfile":"distribute-load","hostDirPolicies":[{"pathPrefix":"/tmp"}]}`))
	f.Add(uint8(6), []byte(`{"scheduling_paused":true}`))

	c, err := fleet.Open(fleet.Config{DataDir: f.TempDir(), InMemory: true})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, _, err := c.EnsureBootstrapAdmin(ctx, "fuzz"); err != nil {
		f.Fatal(err)
	}
	if _, err := c.CreateVM(ctx, &v1.VM{Image: "i", Meta: v1.Meta{Name: "existing"}}); err != nil {
		f.Fatal(err)
	}
	h := c.Handler()

	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		ep := endpoints[int(which)%len(endpoints)]
		before := len(c.VMs(nil))
		req := httptest.NewRequest(ep.method, ep.path, bytes.NewReader(body))
		req.SetBasicAuth(fleet.BootstrapAdmin, "fuzz")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code == http.StatusOK:
		case rec.Code >= 400 && rec.Code < 500:
			var e v1.Error
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Message == "" {
				t.Fatalf("%s %s: %d with body %q", ep.method, ep.path, rec.Code, rec.Body)
			}
			if after := len(c.VMs(nil)); after != before {
				t.Fatalf("a refused request changed the VM count")
			}
		default:
			t.Fatalf("%s %s answered %d: %s", ep.method, ep.path, rec.Code, rec.Body)
		}
		for _, vm := range c.VMs(nil) {
			if v1.ValidateName("VM", vm.Name) != nil || vm.Image == "" || vm.UID == "" {
				t.Fatalf("stored an invalid VM %+v", vm)
			}
		}
		// Keep the state small and the VM the others target present.
		for _, vm := range c.VMs(nil) {
			if vm.Name != "existing" {
				_ = c.DeleteVM(ctx, vm.Name)
			}
		}
	})
}
