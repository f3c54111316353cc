package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

func newContextCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "context", Short: "Manage the controllers this CLI talks to ($ORCHARD_HOME/.orchard/orchard.yml)"}
	var name, bootstrapToken, saName, saToken, fingerprint, format string
	var noDefault bool
	create := &cobra.Command{
		Use:   "create URL",
		Short: "Add a controller: from a bootstrap token, or a service account and trust on first use",
		Long: `Add a context for the controller at URL ([https://]HOST[:6120]).

With --bootstrap-token the token's certificate (if any) is pinned. With --service-account-name and
--service-account-token the host's trusted CAs are tried first; if the controller's certificate is
self-signed, its SHA-256 fingerprint is shown and, once you confirm it (or pass it with
--fingerprint), it is pinned. The credentials are checked before the context is saved.`,
		Args: args("URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			url, err := client.NormalizeURL(args[0])
			if err != nil {
				return err
			}
			var ctx client.Context
			switch {
			case bootstrapToken != "" && (saName != "" || saToken != ""):
				return errors.New("give either --bootstrap-token or --service-account-name/--service-account-token, not both")
			case bootstrapToken != "":
				t, err := v1.ParseBootstrapToken(bootstrapToken)
				if err != nil {
					return err
				}
				// A token without a certificate comes from a controller run
				// with --insecure-no-tls: a URL without a scheme means http.
				if len(t.CertificatePEM) == 0 && !strings.Contains(args[0], "://") {
					url = "http://" + strings.TrimPrefix(url, "https://")
				}
				ctx = client.ContextFromToken(url, t)
			case saName != "" && saToken != "":
				ctx = client.Context{URL: url, ServiceAccountName: saName, ServiceAccountToken: saToken}
				if err := trustOnFirstUse(cmd, &ctx, fingerprint); err != nil {
					return err
				}
			default:
				return errors.New("give --bootstrap-token, or both --service-account-name and --service-account-token")
			}
			cfg, err := ctx.Config()
			if err != nil {
				return err
			}
			c, err := client.New(cfg)
			if err != nil {
				return err
			}
			checkCtx, cancel := context.WithTimeout(cmd.Context(), contextCheckTimeout)
			defer cancel()
			if err := c.Check(checkCtx); err != nil {
				return fmt.Errorf("check the controller at %s: %w", url, err)
			}
			env := os.Environ()
			if err := client.SaveContext(client.ContextsPath(client.Home(env)), name, ctx, !noDefault); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Context %s saved: %s as %s (%s)\n", name, url, ctx.ServiceAccountName, describeContext(ctx))
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "default", "name of the context")
	create.Flags().StringVar(&bootstrapToken, "bootstrap-token", "", "a bootstrap token (orchard bootstrap-token NAME prints one)")
	create.Flags().StringVar(&saName, "service-account-name", "", "service account name")
	create.Flags().StringVar(&saToken, "service-account-token", "", "service account token")
	create.Flags().StringVar(&fingerprint, "fingerprint", "", "trust the controller's self-signed certificate if its SHA-256 fingerprint is this, without asking")
	create.Flags().BoolVar(&noDefault, "no-default", false, "do not make it the default context")

	list := &cobra.Command{
		Use: "list", Short: "List contexts", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := client.LoadContexts(client.ContextsPath(client.Home(os.Environ())))
			if err != nil {
				return err
			}
			type entry struct {
				Name    string `json:"name"`
				URL     string `json:"url"`
				Account string `json:"serviceAccountName"`
				Default bool   `json:"default"`
				Trust   string `json:"trust"`
			}
			var entries []entry
			for _, n := range f.ContextNames() {
				c := f.Contexts[n]
				entries = append(entries, entry{n, c.URL, c.ServiceAccountName, n == f.DefaultContext, describeContext(c)})
			}
			return render(cmd.OutOrStdout(), format, entries, func(tw *tabwriter.Writer) {
				row(tw, "", "NAME", "URL", "SERVICE ACCOUNT", "TRUST")
				for _, e := range entries {
					mark := ""
					if e.Default {
						mark = "*"
					}
					row(tw, mark, e.Name, e.URL, orDash(e.Account), e.Trust)
				}
			})
		},
	}
	addOutputFlag(list, &format)
	use := &cobra.Command{
		Use: "use NAME", Short: "Make a context the default", Args: args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := client.UpdateContexts(client.ContextsPath(client.Home(os.Environ())), func(f *client.Contexts) error {
				if _, ok := f.Contexts[args[0]]; !ok {
					return fmt.Errorf("no context named %q (orchard context list shows them)", args[0])
				}
				f.DefaultContext = args[0]
				return nil
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Default context is now %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, use)
	return cmd
}

// trustOnFirstUse pins the controller's certificate when the host's CAs do
// not vouch for it: after the user confirms its fingerprint, or when it
// matches --fingerprint.
func trustOnFirstUse(cmd *cobra.Command, ctx *client.Context, want string) error {
	if !strings.HasPrefix(ctx.URL, "https://") {
		return nil
	}
	cfg, _ := ctx.Config()
	c, err := client.New(cfg)
	if err != nil {
		return err
	}
	checkCtx, cancel := context.WithTimeout(cmd.Context(), contextCheckTimeout)
	defer cancel()
	err = c.Check(checkCtx)
	var unknown x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &unknown) {
		return nil // trusted by the host, or a failure the final check reports
	}
	certPEM, err := client.FetchCertificate(checkCtx, ctx.URL)
	if err != nil {
		return err
	}
	block, _ := pem.Decode(certPEM)
	fp := v1.CertificateFingerprint(block.Bytes)
	normalize := func(s string) string { return strings.ToUpper(strings.NewReplacer(" ", "", ":", "").Replace(s)) }
	switch {
	case want != "":
		if normalize(want) != normalize(fp) {
			return fmt.Errorf("the controller's certificate has fingerprint %s, not the one given: refusing it", fp)
		}
	case term.IsTerminal(int(os.Stdin.Fd())):
		fmt.Fprintf(cmd.ErrOrStderr(), "The controller's certificate is not signed by a CA this host trusts.\nSHA-256 fingerprint: %s\nTrust it (compare with the fingerprint the controller prints when it starts)? [y/N] ", fp)
		answer, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			return errors.New("certificate not trusted; nothing saved")
		}
	default:
		return fmt.Errorf("the controller's certificate is self-signed, with SHA-256 fingerprint %s: check it against the one the controller prints when it starts and pass it with --fingerprint", fp)
	}
	ctx.Certificate = client.ContextFromToken(ctx.URL, v1.BootstrapToken{CertificatePEM: certPEM}).Certificate
	return nil
}
