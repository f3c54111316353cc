package fleet

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// BootstrapAdmin is the service account the controller creates on its
// first start, holding every role.
const BootstrapAdmin = "bootstrap-admin"

// NewToken returns a fresh random service-account token: 32 characters
// of base32, 160 bits.
func NewToken() string { return rand.Text()[:26] + rand.Text()[:6] }

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// EnsureBootstrapAdmin makes sure an administrator exists. With a token
// (ORCHARD_BOOTSTRAP_ADMIN_TOKEN) it creates or resets bootstrap-admin to
// that token and every role, on every start. Without one it creates
// bootstrap-admin with a generated token only when no service account
// exists at all, and returns created true and that token, which the
// caller shows once; otherwise it changes nothing.
func (c *Controller) EnsureBootstrapAdmin(ctx context.Context, token string) (created bool, tokenOut string, err error) {
	err = c.store.Update(func(tx *store.Tx) error {
		existing, exists := tx.ServiceAccount(BootstrapAdmin)
		switch {
		case token != "":
			tokenOut = token
			sa := &v1.ServiceAccount{Token: token, Roles: slices.Clone(v1.AllRoles), Meta: v1.Meta{Name: BootstrapAdmin, CreatedAt: time.Now().UTC()}}
			if exists {
				if existing.Token == token && slices.Equal(existing.Roles, v1.AllRoles) {
					return nil
				}
				sa.CreatedAt = existing.CreatedAt
			}
			tx.PutServiceAccount(sa)
			created = !exists
		case tx.CountServiceAccounts() == 0:
			tokenOut = NewToken()
			tx.PutServiceAccount(&v1.ServiceAccount{Token: tokenOut, Roles: slices.Clone(v1.AllRoles), Meta: v1.Meta{Name: BootstrapAdmin, CreatedAt: time.Now().UTC()}})
			created = true
		}
		return nil
	})
	return created, tokenOut, err
}

func checkRoles(roles []v1.Role) error {
	for _, r := range roles {
		if !r.Valid() {
			return errorf(http.StatusPreconditionFailed, "unsupported role %q (want one of %v)", r, v1.AllRoles)
		}
	}
	return nil
}

// CreateServiceAccount stores a new account; an empty token gets a
// generated one.
func (c *Controller) CreateServiceAccount(ctx context.Context, sa *v1.ServiceAccount) (*v1.ServiceAccount, error) {
	if err := v1.ValidateName("service account", sa.Name); err != nil {
		return nil, errorf(http.StatusPreconditionFailed, "%s", err)
	}
	if err := checkRoles(sa.Roles); err != nil {
		return nil, err
	}
	sa = sa.Clone()
	if sa.Token == "" {
		sa.Token = NewToken()
	}
	sa.CreatedAt = time.Now().UTC()
	err := c.store.Update(func(tx *store.Tx) error {
		if _, exists := tx.ServiceAccount(sa.Name); exists {
			return errorf(http.StatusConflict, "service account %q already exists", sa.Name)
		}
		tx.PutServiceAccount(sa)
		return nil
	})
	return sa.Clone(), err
}

// UpdateServiceAccount replaces the token and roles of the account named
// name (the name in the path, not in the body, unlike Orchard).
func (c *Controller) UpdateServiceAccount(ctx context.Context, name string, sa *v1.ServiceAccount) (*v1.ServiceAccount, error) {
	if sa.Token == "" {
		return nil, errorf(http.StatusPreconditionFailed, "service account token is empty")
	}
	if err := checkRoles(sa.Roles); err != nil {
		return nil, err
	}
	var out *v1.ServiceAccount
	err := c.store.Update(func(tx *store.Tx) error {
		cur, ok := tx.ServiceAccount(name)
		if !ok {
			return notFound("service account", name)
		}
		cur.Token, cur.Roles = sa.Token, slices.Clone(sa.Roles)
		tx.PutServiceAccount(cur)
		out = cur.Clone()
		return nil
	})
	return out, err
}

// DeleteServiceAccount deletes the account named name.
func (c *Controller) DeleteServiceAccount(ctx context.Context, name string) error {
	return c.store.Update(func(tx *store.Tx) error {
		if _, ok := tx.ServiceAccount(name); !ok {
			return notFound("service account", name)
		}
		tx.DeleteServiceAccount(name)
		return nil
	})
}

// ServiceAccount returns the account named name.
func (c *Controller) ServiceAccount(name string) (*v1.ServiceAccount, error) {
	sa, ok := c.store.ServiceAccount(name)
	if !ok {
		return nil, notFound("service account", name)
	}
	return sa, nil
}

// ServiceAccounts returns every account.
func (c *Controller) ServiceAccounts() []*v1.ServiceAccount { return c.store.ServiceAccounts() }

// ClusterSettings returns the cluster settings.
func (c *Controller) ClusterSettings() v1.ClusterSettings { return c.store.Settings() }

// SetClusterSettings replaces the cluster settings.
func (c *Controller) SetClusterSettings(ctx context.Context, cs v1.ClusterSettings) (v1.ClusterSettings, error) {
	if cs.SchedulerProfile == "" {
		cs.SchedulerProfile = v1.SchedulerProfileOptimizeUtilization
	}
	if cs.SchedulerProfile != v1.SchedulerProfileOptimizeUtilization && cs.SchedulerProfile != v1.SchedulerProfileDistributeLoad {
		return cs, errorf(http.StatusBadRequest, "unsupported scheduler profile: %q (want optimize-utilization or distribute-load)", cs.SchedulerProfile)
	}
	for _, p := range cs.HostDirPolicies {
		if p.PathPrefix == "" {
			return cs, errorf(http.StatusBadRequest, "pathPrefix field cannot be empty")
		}
	}
	err := c.store.Update(func(tx *store.Tx) error { tx.PutSettings(cs); return nil })
	return cs, err
}
