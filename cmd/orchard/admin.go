package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

func newWorkersCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "workers", Aliases: []string{"worker"}, Short: "Inspect, pause, resume and delete workers"}
	var listFormat, getFormat string
	list := &cobra.Command{
		Use: "list", Short: "List workers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			ws, err := c.ListWorkers(cmd.Context())
			if err != nil {
				return err
			}
			if len(ws) == 0 && listFormat == "table" {
				fmt.Fprintln(cmd.OutOrStdout(), "No workers. Start one: orchard worker run URL --bootstrap-token TOKEN (or orchard dev)")
				return nil
			}
			return render(cmd.OutOrStdout(), listFormat, ws, func(tw *tabwriter.Writer) {
				row(tw, "NAME", "STATE", "DRIVER", "PLATFORM", "LAST SEEN", "SCHEDULING", "RESOURCES", "LABELS")
				for _, w := range ws {
					row(tw, w.Name, connection(&w), orDash(w.Driver), fmt.Sprintf("%s/%s", w.Arch, w.Runtime), ago(w.LastSeen), scheduling(&w), orDash(formatResources(w.Resources)), orDash(formatMap(w.Labels)))
				}
			})
		},
	}
	addOutputFlag(list, &listFormat)
	get := &cobra.Command{
		Use: "get NAME", Short: "Show a worker", Args: args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			w, err := c.GetWorker(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), getFormat, w, func(tw *tabwriter.Writer) {
				row(tw, "Name", w.Name)
				row(tw, "State", connection(w))
				row(tw, "Driver", orDash(w.Driver))
				row(tw, "Platform", fmt.Sprintf("%s/%s", w.Arch, w.Runtime))
				row(tw, "Last seen", ago(w.LastSeen))
				row(tw, "Scheduling", scheduling(w))
				row(tw, "Resources", orDash(formatResources(w.Resources)))
				row(tw, "Labels", orDash(formatMap(w.Labels)))
				row(tw, "Default CPU", w.DefaultCPU)
				row(tw, "Default memory", fmt.Sprintf("%d MiB", w.DefaultMemory))
				row(tw, "Machine ID", strings.TrimSpace(w.MachineID))
			})
		},
	}
	addOutputFlag(get, &getFormat)
	pause := func(paused bool) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			if _, err := c.SetWorkerPaused(cmd.Context(), args[0], paused); err != nil {
				return err
			}
			state := "resumed: new VMs may be scheduled onto it"
			if paused {
				state = "paused: no new VMs will be scheduled onto it; its VMs keep running"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Worker %s %s\n", args[0], state)
			return nil
		}
	}
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a worker; its VMs fail (a running worker registers again: stop it first)", Args: args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			if err := c.DeleteWorker(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Worker %s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, get,
		&cobra.Command{Use: "pause NAME", Short: "Stop scheduling new VMs onto a worker", Args: args("NAME"), RunE: pause(true)},
		&cobra.Command{Use: "resume NAME", Short: "Schedule VMs onto a paused worker again", Args: args("NAME"), RunE: pause(false)},
		del)
	return cmd
}

// connection says whether the worker holds its tunnel: the controller
// reports last_seen as now while it does.
func connection(w *v1.Worker) string {
	if time.Since(w.LastSeen) < 5*time.Second {
		return "connected"
	}
	return "disconnected"
}

func scheduling(w *v1.Worker) string {
	if w.SchedulingPaused {
		return "paused"
	}
	return "active"
}

func newServiceAccountsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "service-accounts", Aliases: []string{"service-account", "sa"}, Short: "Manage service accounts"}
	var roles []string
	var token, listFormat string
	create := &cobra.Command{
		Use: "create NAME --roles ROLE,...", Short: "Create a service account and print its token", Args: args("NAME"),
		Long: "Create a service account. Roles: " + rolesList() + ".",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			sa := &v1.ServiceAccount{Token: token, Meta: v1.Meta{Name: args[0]}}
			for _, r := range roles {
				sa.Roles = append(sa.Roles, v1.Role(strings.TrimSpace(r)))
			}
			out, err := c.CreateServiceAccount(cmd.Context(), sa)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Service account %s created with roles %s\ntoken: %s\n", out.Name, joinRoles(out.Roles), out.Token)
			return nil
		},
	}
	create.Flags().StringSliceVar(&roles, "roles", nil, "roles, comma-separated: "+rolesList())
	create.Flags().StringVar(&token, "token", "", "the token (default: generated)")
	list := &cobra.Command{
		Use: "list", Short: "List service accounts", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			sas, err := c.ListServiceAccounts(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), listFormat, sas, func(tw *tabwriter.Writer) {
				row(tw, "NAME", "ROLES", "CREATED")
				for _, sa := range sas {
					row(tw, sa.Name, orDash(joinRoles(sa.Roles)), ago(sa.CreatedAt))
				}
			})
		},
	}
	addOutputFlag(list, &listFormat)
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a service account", Args: args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			if err := c.DeleteServiceAccount(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Service account %s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}

func rolesList() string { return joinRoles(v1.AllRoles) }

func joinRoles(roles []v1.Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ",")
}

func newClusterSettingsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster-settings", Short: "Show or change cluster-wide settings"}
	var format, profile string
	var policies []string
	get := &cobra.Command{
		Use: "get", Short: "Show the cluster settings", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			cs, err := c.ClusterSettings(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), format, cs, func(tw *tabwriter.Writer) {
				row(tw, "Scheduler profile", cs.Profile())
				var ps []string
				for _, p := range cs.HostDirPolicies {
					s := p.PathPrefix
					if p.ReadOnly {
						s += ":ro"
					}
					ps = append(ps, s)
				}
				row(tw, "Host directory policies", orDash(strings.Join(ps, ",")))
			})
		},
	}
	addOutputFlag(get, &format)
	set := &cobra.Command{
		Use: "set", Short: "Change the cluster settings", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("scheduler-profile") && !cmd.Flags().Changed("host-dir-policies") {
				return errors.New("nothing to set: give --scheduler-profile or --host-dir-policies")
			}
			c, err := g.newClient()
			if err != nil {
				return err
			}
			cs, err := c.ClusterSettings(cmd.Context())
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("scheduler-profile") {
				cs.SchedulerProfile = v1.SchedulerProfile(profile)
			}
			if cmd.Flags().Changed("host-dir-policies") {
				cs.HostDirPolicies = nil
				for _, p := range policies {
					prefix, ro := strings.CutSuffix(strings.TrimSpace(p), ":ro")
					cs.HostDirPolicies = append(cs.HostDirPolicies, v1.HostDirPolicy{PathPrefix: prefix, ReadOnly: ro})
				}
			}
			out, err := c.SetClusterSettings(cmd.Context(), cs)
			if err != nil {
				return err
			}
			policies := "no host directory policy"
			if n := len(out.HostDirPolicies); n == 1 {
				policies = "1 host directory policy"
			} else if n > 1 {
				policies = fmt.Sprintf("%d host directory policies", n)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cluster settings saved: scheduler profile %s, %s\n", out.Profile(), policies)
			return nil
		},
	}
	set.Flags().StringVar(&profile, "scheduler-profile", "", "optimize-utilization (pack VMs) or distribute-load (spread them)")
	set.Flags().StringSliceVar(&policies, "host-dir-policies", nil, "path prefixes VMs may mount, /path[:ro],... (replaces the list; empty disallows all)")
	cmd.AddCommand(get, set)
	return cmd
}

func newBootstrapTokenCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "bootstrap-token SERVICE-ACCOUNT",
		Short: "Print a bootstrap token for a service account, with the controller's certificate inside",
		Long: `Print a bootstrap token: the service account's name and token and, when the current context
pins one, the controller's certificate, in Orchard's orchard-bootstrap-token-v0 format. Give it to
orchard worker run --bootstrap-token, or to orchard context create --bootstrap-token. Workers need
an account with compute:read and compute:write.`,
		Args: args("SERVICE-ACCOUNT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			sa, err := c.GetServiceAccount(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			token := v1.BootstrapToken{ServiceAccountName: sa.Name, ServiceAccountToken: sa.Token, CertificatePEM: c.Config().CertificatePEM}
			fmt.Fprintln(cmd.OutOrStdout(), token.String())
			return nil
		},
	}
}

// contextCheckTimeout bounds the credential check of context create.
const contextCheckTimeout = 15 * time.Second

// describeContext is a context's one-line summary for context list.
func describeContext(ctx client.Context) string {
	pinned := "system trust"
	if ctx.Certificate != "" {
		pinned = "pinned certificate"
	} else if strings.HasPrefix(ctx.URL, "http://") {
		pinned = "no TLS"
	}
	return pinned
}
