package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/orchardci/orchard/config"
	"github.com/orchardci/orchard/fleet"
	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/worker"
)

// devContext is the context orchard dev writes, and makes the default.
const devContext = "dev"

func newDevCommand() *cobra.Command {
	var (
		configFile, driverName, resources string
		workers                           int
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a whole cluster on this machine: a controller and a worker, no set-up",
		Long: `Run a controller and one worker (or --workers N) in one process. The worker uses the tart
driver where tart is on PATH, else the local driver (VMs as directories with an SSH server: it runs
on Linux and isolates nothing). The controller listens on 127.0.0.1:6120 with plain HTTP and keeps
authentication on: its admin account goes into the "dev" context, made the default, so the CLI in
another terminal needs no flags. A --listen address other than loopback needs --tls-cert and
--tls-key. Ctrl-C stops everything it started.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			env := os.Environ()
			cfg, err := loadConfig(cmd, configFile, env)
			if err != nil {
				return err
			}
			// Dev's own default: loopback. A listen address from the file,
			// the environment or the flag stands.
			if cfg.Controller.Listen == config.Default().Controller.Listen {
				cfg.Controller.Listen = "127.0.0.1:6120"
			}
			withTLS := cfg.Controller.TLS.CertFile != ""
			if !withTLS && !loopback(cfg.Controller.Listen) {
				return fmt.Errorf("refusing to serve plain HTTP on %s, beyond this machine: give --tls-cert and --tls-key, or listen on 127.0.0.1", cfg.Controller.Listen)
			}
			if workers < 1 {
				return errors.New("--workers must be at least 1")
			}
			res, err := workerResources(resources)
			if err != nil {
				return err
			}
			logger := config.NewLogger(cfg.Log, os.Stderr)
			home := client.Home(env)
			dataDir := cfg.Controller.DataDir
			if dataDir == "" {
				dataDir = filepath.Join(client.Dir(home), "dev")
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			srv, err := fleet.StartServer(ctx, fleet.ServerConfig{
				Controller:     controllerConfig(cfg, dataDir, logger),
				Listen:         cfg.Controller.Listen,
				MetricsListen:  cfg.Controller.MetricsListen,
				CertFile:       cfg.Controller.TLS.CertFile,
				KeyFile:        cfg.Controller.TLS.KeyFile,
				NoTLS:          !withTLS,
				BootstrapToken: os.Getenv(envBootstrapAdminToken),
			})
			if err != nil {
				return err
			}
			var wg sync.WaitGroup
			// fail stops what was started so far, then reports err.
			fail := func(err error) error {
				cancel()
				wg.Wait()
				return errors.Join(err, srv.Wait())
			}
			if srv.AdminToken == "" {
				// Not generated on this start: the dev context gets the stored one.
				admin, err := srv.ServiceAccount(fleet.BootstrapAdmin)
				if err != nil {
					return fail(fmt.Errorf("the dev controller has no %s account: delete %s to start afresh", fleet.BootstrapAdmin, dataDir))
				}
				srv.AdminToken = admin.Token
			}
			previous := ""
			if f, err := client.LoadContexts(client.ContextsPath(home)); err == nil {
				previous = f.DefaultContext
			}
			if err := saveServerContext(home, devContext, srv, true); err != nil {
				return fail(fmt.Errorf("write the dev context: %w", err))
			}
			defer restoreDefaultContext(home, previous)

			token := v1.BootstrapToken{ServiceAccountName: fleet.BootstrapAdmin, ServiceAccountToken: srv.AdminToken}
			if srv.Certificate != nil {
				token.CertificatePEM = srv.Certificate.PEM
			}
			machineID, err := worker.MachineID(dataDir)
			if err != nil {
				return fail(err)
			}
			var names []string
			driverKind := ""
			for n := range workers {
				name := fmt.Sprintf("dev-%d", n+1)
				driver, closeDriver, err := openDriver(ctx, driverName, filepath.Join(dataDir, "vms", name), logger)
				if err != nil {
					return fail(err)
				}
				driverKind = driver.Kind()
				w, err := worker.New(worker.Config{
					ControllerURL: srv.URL, Token: token, Name: name, MachineID: machineID,
					Resources: res, Driver: driver, Logger: logger, Version: version,
				})
				if err != nil {
					closeDriver()
					return fail(err)
				}
				names = append(names, name)
				wg.Go(func() {
					defer closeDriver()
					if err := w.Run(ctx); err != nil {
						logger.Error("worker stopped", "worker", name, "err", err)
					}
				})
			}
			printDevBanner(cmd.OutOrStdout(), srv.URL, driverKind, names)
			<-ctx.Done()
			fmt.Fprintln(cmd.OutOrStdout(), "Stopping the dev cluster; its VMs stop with it and are deleted...")
			wg.Wait()
			// The workers took their VMs down: drop the records, so that the
			// next orchard dev starts clean instead of with failed VMs.
			for _, vm := range srv.VMs(nil) {
				_ = srv.DeleteVM(context.Background(), vm.Name)
			}
			return srv.Wait()
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "config.yaml to read (default: $ORCHARD_CONFIG)")
	f.String("listen", "127.0.0.1:6120", "address to serve the API on")
	f.String("data-dir", "", "directory for the dev cluster's state (default $ORCHARD_HOME/.orchard/dev)")
	f.String("tls-cert", "", "TLS certificate file, needed for a non-loopback --listen")
	f.String("tls-key", "", "TLS key file")
	f.String("metrics-listen", "", "also serve /metrics without authentication on this address")
	f.StringVar(&driverName, "driver", "", "tart or local (default: tart where tart is on PATH, else local)")
	f.IntVar(&workers, "workers", 1, "number of workers")
	f.StringVar(&resources, "resources", "", "resources each worker offers, k=N,..., e.g. org.cirruslabs.tart-vms=10")
	return cmd
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// restoreDefaultContext gives the default back to the context that had it
// before orchard dev, so the CLI does not keep pointing at a stopped dev
// controller.
func restoreDefaultContext(home, previous string) {
	if previous == "" || previous == devContext {
		return
	}
	_ = client.UpdateContexts(client.ContextsPath(home), func(f *client.Contexts) error {
		if _, ok := f.Contexts[previous]; ok && f.DefaultContext == devContext {
			f.DefaultContext = previous
		}
		return nil
	})
}

func printDevBanner(w io.Writer, url, driver string, workers []string) {
	fmt.Fprintf(w, "Orchard dev cluster is up: controller %s, %d %s worker(s): %v\n", url, len(workers), driver, workers)
	if driver == v1.DriverLocal {
		fmt.Fprintln(w, "The local driver runs each VM as a directory with an SSH server on a loopback address; it isolates nothing.")
	}
	// Suggest the binary as it was run (bin/orchard after make dev).
	self := "orchard"
	if strings.Contains(os.Args[0], "/") && !strings.Contains(os.Args[0], "go-build") {
		self = os.Args[0]
	}
	fmt.Fprintf(w, `The CLI is set up (context %q, the default while this runs). In another terminal, try:
  %[2]s vms create demo --image ghcr.io/cirruslabs/macos-sequoia-base:latest --wait
  %[2]s vms ssh demo -- uname -a
  %[2]s vms port-forward demo 8080:8080
  %[2]s vms logs demo
  %[2]s vms delete demo
Ctrl-C here stops everything.
`, devContext, self)
}
