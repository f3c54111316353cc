package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/orchardci/orchard/config"
	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/worker"
	"github.com/orchardci/orchard/worker/local"
	"github.com/orchardci/orchard/worker/tart"
)

func newWorkerCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "worker", Short: "Run a worker"}
	var (
		token, name, labels, resources, driverName, dataDir, logLevel string
		tokenStdin                                                    bool
		defaultCPU, defaultMemory                                     uint64
	)
	run := &cobra.Command{
		Use:   "run URL --bootstrap-token TOKEN",
		Short: "Run VMs on this host for the controller at URL",
		Long: `Run a worker: it dials the controller at URL (it listens on no port itself), holds a tunnel
to it, and runs the VMs the controller places here with the tart driver (the Tart CLI; the default
on macOS when tart is on PATH) or the local driver (a development stand-in that runs "VMs" as
directories with an SSH server, isolating nothing).

The bootstrap token (orchard bootstrap-token NAME prints one) names a service account with
compute:read and compute:write, and carries the controller's certificate, which the worker pins.`,
		Args: args("URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tokenStdin {
				line, err := bufio.NewReader(os.Stdin).ReadString('\n')
				if err != nil && line == "" {
					return fmt.Errorf("read the bootstrap token from stdin: %w", err)
				}
				token = strings.TrimSpace(line)
			}
			if token == "" {
				return errors.New("a bootstrap token is required: --bootstrap-token TOKEN or --bootstrap-token-stdin")
			}
			bt, err := v1.ParseBootstrapToken(token)
			if err != nil {
				return err
			}
			logCfg := config.Default()
			logCfg.Log.Level = logLevel
			if err := logCfg.Validate(); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			logger := config.NewLogger(logCfg.Log, os.Stderr)
			home := client.Home(os.Environ())
			if dataDir == "" {
				dataDir = filepath.Join(client.Dir(home), "worker")
			}
			res, err := workerResources(resources)
			if err != nil {
				return err
			}
			lbls, err := v1.ParseLabels(labels)
			if err != nil {
				return err
			}
			machineID, err := worker.MachineID(dataDir)
			if err != nil {
				return err
			}
			driver, closeDriver, err := openDriver(cmd.Context(), driverName, filepath.Join(dataDir, "vms"), logger)
			if err != nil {
				return err
			}
			defer closeDriver()
			w, err := worker.New(worker.Config{
				ControllerURL: args[0], Token: bt, Name: name, MachineID: machineID,
				Labels: lbls, Resources: res, DefaultCPU: defaultCPU, DefaultMemory: defaultMemory,
				Driver: driver, Logger: logger, Version: version,
			})
			if err != nil {
				return err
			}
			logger.Info("worker starting", "name", name, "driver", driver.Kind(), "controller", args[0])
			return w.Run(cmd.Context())
		},
	}
	f := run.Flags()
	f.StringVar(&token, "bootstrap-token", "", "bootstrap token (visible to other users in ps: prefer --bootstrap-token-stdin)")
	f.BoolVar(&tokenStdin, "bootstrap-token-stdin", false, "read the bootstrap token from stdin")
	f.StringVar(&name, "name", worker.DefaultName(), "worker name")
	f.StringVar(&labels, "labels", "", "labels VMs can ask for, k=v,k2=v2")
	f.StringVar(&resources, "resources", "", "resources to offer, k=N,..., over the defaults (org.cirruslabs.tart-vms=2, the host's cores and memory)")
	f.StringVar(&driverName, "driver", "", "tart or local (default: tart where tart is on PATH, else local)")
	f.StringVar(&dataDir, "data-dir", "", "worker state: machine id, local VMs (default $ORCHARD_HOME/.orchard/worker)")
	f.Uint64Var(&defaultCPU, "default-cpu", 4, "CPUs for VMs that ask for none")
	f.Uint64Var(&defaultMemory, "default-memory", 8192, "memory (MiB) for VMs that ask for none")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.AddCommand(run)
	return cmd
}

// workerResources merges --resources over the defaults.
func workerResources(flag string) (v1.Resources, error) {
	res := worker.DefaultResources()
	extra, err := v1.ParseResources(flag)
	if err != nil {
		return nil, err
	}
	maps.Copy(res, extra)
	return res, nil
}

// openDriver opens the named driver, or picks one: tart where it is on
// PATH (on macOS), else local. The returned func closes it.
func openDriver(ctx context.Context, name, vmDir string, logger *slog.Logger) (worker.Driver, func(), error) {
	if name == "" {
		name = v1.DriverLocal
		if _, err := exec.LookPath("tart"); err == nil && runtime.GOOS == "darwin" {
			name = v1.DriverTart
		}
	}
	switch name {
	case v1.DriverTart:
		d, err := tart.New(ctx, tart.Options{Logger: logger})
		if err != nil {
			return nil, nil, err
		}
		return d, func() { _ = d.Close() }, nil
	case v1.DriverLocal:
		d, err := local.New(ctx, local.Options{Dir: vmDir, Logger: logger})
		if err != nil {
			return nil, nil, err
		}
		return d, func() { _ = d.Close() }, nil
	default:
		return nil, nil, fmt.Errorf("unknown driver %q: want tart or local", name)
	}
}
