package fleet_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/orchardci/orchard/fleet"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// TestEveryRouteIsGuarded walks the route table: without credentials,
// with a wrong token, and with an account lacking the roles, every route
// but the public ones must refuse; with the roles it must not refuse for
// lack of them. A new route that forgets its access rule fails here.
func TestEveryRouteIsGuarded(t *testing.T) {
	e := newEnv(t)
	nobody := e.account("nobody")
	_ = nobody
	nobodySA, err := e.admin.GetServiceAccount(t.Context(), "nobody")
	if err != nil {
		t.Fatal(err)
	}
	httpc := e.admin.StreamHTTPClient()
	do := func(method, path, user, token string) int {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, e.url+path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		if user != "" {
			req.SetBasicAuth(user, token)
		}
		resp, err := httpc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, rt := range fleet.Routes() {
		path := strings.NewReplacer("{name}", "no-such-thing", "{$}", "").Replace(rt.Path)
		t.Run(rt.Method+" "+rt.Path, func(t *testing.T) {
			if rt.Public {
				if got := do(rt.Method, path, "", ""); got == http.StatusUnauthorized || got == http.StatusForbidden {
					t.Errorf("public route refused: %d", got)
				}
				return
			}
			if got := do(rt.Method, path, "", ""); got != http.StatusUnauthorized {
				t.Errorf("no credentials: %d, want 401", got)
			}
			if got := do(rt.Method, path, fleet.BootstrapAdmin, "wrong-token"); got != http.StatusUnauthorized {
				t.Errorf("wrong token: %d, want 401", got)
			}
			if got := do(rt.Method, path, "no-such-account", "x"); got != http.StatusUnauthorized {
				t.Errorf("unknown account: %d, want 401", got)
			}
			needsRoles := len(rt.AllOf)+len(rt.AnyOf) > 0
			got := do(rt.Method, path, "nobody", nobodySA.Token)
			if needsRoles && got != http.StatusForbidden {
				t.Errorf("account without roles: %d, want 403", got)
			}
			if !needsRoles && (got == http.StatusUnauthorized || got == http.StatusForbidden) {
				t.Errorf("valid account refused: %d", got)
			}
			if got := do(rt.Method, path, fleet.BootstrapAdmin, "admin-token-for-tests"); got == http.StatusUnauthorized || got == http.StatusForbidden {
				t.Errorf("admin refused: %d", got)
			}
		})
	}
	// Paths and methods outside the table need credentials too.
	for _, p := range []struct{ method, path string }{{"GET", "/"}, {"DELETE", "/v1/"}, {"GET", "/v1/nope"}, {"POST", "/v1/workers"}} {
		if got := do(p.method, p.path, "", ""); got != http.StatusUnauthorized {
			t.Errorf("%s %s without credentials: %d, want 401", p.method, p.path, got)
		}
	}
}

func TestRoleMessages(t *testing.T) {
	e := newEnv(t)
	reader := e.account("reader", v1.RoleComputeRead)
	_, err := reader.CreateVM(t.Context(), &v1.VM{Image: "i", Meta: v1.Meta{Name: "vm"}})
	if apiStatus(err) != http.StatusForbidden || !strings.Contains(err.Error(), "compute:write") {
		t.Errorf("create as a reader: %v, want 403 naming compute:write", err)
	}
	_, err = reader.VMIP(t.Context(), "vm", 0)
	if apiStatus(err) != http.StatusForbidden || !strings.Contains(err.Error(), "compute:write, compute:connect") {
		t.Errorf("ip as a reader: %v, want 403 naming both roles", err)
	}
}
