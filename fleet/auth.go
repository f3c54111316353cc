package fleet

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"slices"
	"strings"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// access is what a route requires of its caller.
type access struct {
	// public routes skip authentication (GET /healthz only, for probes).
	public bool
	// all lists roles the caller must hold every one of; any lists roles of
	// which one suffices. Both empty: any valid account.
	all, any []v1.Role
}

func allOf(roles ...v1.Role) access { return access{all: roles} }
func anyOf(roles ...v1.Role) access { return access{any: roles} }

var authenticated = access{}

// authenticate checks HTTP Basic credentials against the service
// accounts. Tokens are compared in constant time, and an unknown name
// costs the same comparison, so timing tells nothing.
func (c *Controller) authenticate(r *http.Request) (*v1.ServiceAccount, *Error) {
	name, token, ok := r.BasicAuth()
	if !ok {
		return nil, errorf(http.StatusUnauthorized, "authentication required: use HTTP Basic auth with a service account name and token")
	}
	sa, found := c.store.ServiceAccount(name)
	want := "\x00no account\x00"
	if found {
		want = sa.Token
	}
	// Compare digests: ConstantTimeCompare returns early on a length
	// mismatch, which would tell a token's length, and whether the account
	// exists.
	got, expected := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(want))
	if subtle.ConstantTimeCompare(got[:], expected[:]) != 1 || !found {
		return nil, errorf(http.StatusUnauthorized, "invalid service account name or token")
	}
	return sa, nil
}

// authorize checks that sa holds the roles a route needs.
func (a access) authorize(sa *v1.ServiceAccount) *Error {
	if slices.ContainsFunc(a.all, func(r v1.Role) bool { return !sa.Has(r) }) {
		return errorf(http.StatusForbidden, "all of the following roles must be present: %s", joinRoles(a.all))
	}
	if len(a.any) > 0 && !slices.ContainsFunc(a.any, sa.Has) {
		return errorf(http.StatusForbidden, "any of the following roles must be present: %s", joinRoles(a.any))
	}
	return nil
}

func joinRoles(roles []v1.Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}
