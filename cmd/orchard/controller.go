package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/orchardci/orchard/config"
	"github.com/orchardci/orchard/fleet"
	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// EnvBootstrapAdminToken fixes the bootstrap admin's token.
const envBootstrapAdminToken = "ORCHARD_BOOTSTRAP_ADMIN_TOKEN"

// controllerFlagKeys binds controller flags to config keys.
var controllerFlagKeys = map[string]string{
	"listen":         "controller.listen",
	"data-dir":       "controller.data_dir",
	"tls-cert":       "controller.tls.cert_file",
	"tls-key":        "controller.tls.key_file",
	"metrics-listen": "controller.metrics_listen",
}

func newControllerCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "controller", Short: "Run the controller"}
	var configFile string
	var insecure bool
	run := &cobra.Command{
		Use:   "run",
		Short: "Run the controller: the API, the scheduler and the workers' tunnels",
		Long: `Run the controller. It serves TLS with a self-signed certificate generated in its data
directory (DNS name orchard-controller) unless --tls-cert and --tls-key give one, and
authenticates every request. On first start it creates the service account bootstrap-admin,
prints its token and the certificate's fingerprint once, and writes a context for it into
$ORCHARD_HOME/.orchard/orchard.yml so that the CLI on this host works at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			env := os.Environ()
			cfg, err := loadConfig(cmd, configFile, env)
			if err != nil {
				return err
			}
			if insecure && (cfg.Controller.TLS.CertFile != "" || cfg.Controller.TLS.KeyFile != "") {
				return errors.New("--insecure-no-tls and a TLS certificate exclude each other: drop one")
			}
			logger := config.NewLogger(cfg.Log, os.Stderr)
			home := client.Home(env)
			dataDir := cfg.Controller.DataDir
			if dataDir == "" {
				dataDir = filepath.Join(client.Dir(home), "controller")
			}
			token := os.Getenv(envBootstrapAdminToken)
			srv, err := fleet.StartServer(cmd.Context(), fleet.ServerConfig{
				Controller:     controllerConfig(cfg, dataDir, logger),
				Listen:         cfg.Controller.Listen,
				MetricsListen:  cfg.Controller.MetricsListen,
				CertFile:       cfg.Controller.TLS.CertFile,
				KeyFile:        cfg.Controller.TLS.KeyFile,
				NoTLS:          insecure,
				BootstrapToken: token,
			})
			if err != nil {
				return err
			}
			if insecure {
				logger.Warn("serving plain HTTP: tokens and VM traffic cross the network unencrypted")
			}
			announce(cmd.OutOrStdout(), srv, token != "")
			if srv.AdminToken != "" {
				if err := saveServerContext(home, "bootstrap-context", srv, false); err != nil {
					logger.Warn("could not write the bootstrap context", "err", err)
				}
			}
			logger.Info("controller serving", "url", srv.URL, "data_dir", dataDir)
			return srv.Wait()
		},
	}
	run.Flags().StringVar(&configFile, "config", "", "config.yaml to read (default: $ORCHARD_CONFIG)")
	run.Flags().String("listen", ":6120", "address to serve the API on")
	run.Flags().String("data-dir", "", "directory for the database and the generated certificate (default $ORCHARD_HOME/.orchard/controller)")
	run.Flags().String("tls-cert", "", "TLS certificate file (PEM); with --tls-key")
	run.Flags().String("tls-key", "", "TLS key file (PEM); with --tls-cert")
	run.Flags().String("metrics-listen", "", "also serve /metrics without authentication on this address")
	run.Flags().BoolVar(&insecure, "insecure-no-tls", false, "serve plain HTTP (only behind a TLS-terminating proxy, or for tests)")
	cmd.AddCommand(run)
	return cmd
}

// loadConfig reads config.yaml (--config or ORCHARD_CONFIG), the
// environment and the flags.
func loadConfig(cmd *cobra.Command, file string, env []string) (config.Config, error) {
	if file == "" {
		file = os.Getenv("ORCHARD_CONFIG")
	}
	return config.Load(config.Source{File: file, Env: env, Flags: cmd.Flags(), FlagKeys: controllerFlagKeys})
}

func controllerConfig(cfg config.Config, dataDir string, logger *slog.Logger) fleet.Config {
	return fleet.Config{
		DataDir:              dataDir,
		WorkerOfflineTimeout: cfg.Controller.WorkerOfflineTimeout,
		RestartDelay:         cfg.Controller.RestartDelay,
		Logger:               logger,
		Version:              version,
		Commit:               commit,
	}
}

// announce tells the operator, once, what they need: where the controller
// is, and on its first start the admin token and certificate fingerprint.
// It writes to stdout, never to the log.
func announce(w io.Writer, srv *fleet.Server, tokenFromEnv bool) {
	fmt.Fprintf(w, "Orchard controller (version %s) is serving on %s\n", version, srv.URL)
	switch {
	case tokenFromEnv:
		fmt.Fprintf(w, "Service account %s (all roles), token: <hidden> (from %s)\n", fleet.BootstrapAdmin, envBootstrapAdminToken)
	case srv.AdminCreated:
		fmt.Fprintf(w, "Service account %s (all roles), token: %s\n", fleet.BootstrapAdmin, srv.AdminToken)
		fmt.Fprintln(w, "This token is shown once. The CLI on this host has it already (context bootstrap-context).")
	default:
		fmt.Fprintf(w, "The %s token was shown at first start and is in this host's bootstrap-context; %s sets a new one.\n", fleet.BootstrapAdmin, envBootstrapAdminToken)
	}
	if srv.Certificate != nil {
		// Not a secret: clients compare it before trusting the certificate.
		fmt.Fprintf(w, "Certificate SHA-256 fingerprint: %s\n", srv.Certificate.Fingerprint())
	}
}

// saveServerContext writes a context for the bootstrap admin, with the
// certificate pinned, so the CLI on this host works at once.
func saveServerContext(home, name string, srv *fleet.Server, makeDefault bool) error {
	token := v1.BootstrapToken{ServiceAccountName: fleet.BootstrapAdmin, ServiceAccountToken: srv.AdminToken}
	if srv.Certificate != nil {
		token.CertificatePEM = srv.Certificate.PEM
	}
	return client.SaveContext(client.ContextsPath(home), name, client.ContextFromToken(srv.URL, token), makeDefault)
}
