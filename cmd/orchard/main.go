// Command orchard is Orchard's one binary: the controller, the worker, a
// one-machine development cluster, and the CLI that talks to them.
//
// This package only parses flags and wires packages together: fleet (the
// controller), worker (the agent), config (controller configuration) and
// fleet/client (the API client and contexts).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Set by the linker (see the Makefile).
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := newRoot().ExecuteContext(ctx)
	if err == nil {
		return
	}
	var exit *exitCode
	if errors.As(err, &exit) {
		os.Exit(exit.code)
	}
	fmt.Fprintln(os.Stderr, "orchard:", err)
	os.Exit(1)
}

// exitCode makes orchard exit with a command's own status (vms ssh)
// without printing anything more.
type exitCode struct{ code int }

func (e *exitCode) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// args checks a command's positional arguments by name, so that a
// missing one is named: "missing NAME (usage: orchard vms get NAME)".
// Names in brackets are optional; a last name ending in "..." repeats.
func args(names ...string) cobra.PositionalArgs {
	required := 0
	for _, n := range names {
		if !strings.HasPrefix(n, "[") || !strings.HasSuffix(n, "]") {
			required++
		}
	}
	return func(cmd *cobra.Command, got []string) error {
		repeats := len(names) > 0 && strings.HasSuffix(strings.TrimSuffix(names[len(names)-1], "]"), "...")
		if len(got) < required {
			return fmt.Errorf("missing %s (usage: %s)", strings.TrimSuffix(names[len(got)], "..."), cmd.UseLine())
		}
		if len(got) > len(names) && !repeats {
			return fmt.Errorf("unexpected argument %q (usage: %s)", got[len(names)], cmd.UseLine())
		}
		return nil
	}
}

// globals are the flags every client command shares.
type globals struct {
	context string
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "orchard",
		Short:         "Run macOS (Tart) VMs across a fleet of Macs",
		Version:       version + " (" + commit + ")",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.context, "context", "", "the context to use (default: the default context; see orchard context list)")
	root.AddCommand(
		newControllerCommand(),
		newWorkerCommand(),
		newDevCommand(),
		newVMsCommand(g),
		newWorkersCommand(g),
		newServiceAccountsCommand(g),
		newClusterSettingsCommand(g),
		newBootstrapTokenCommand(g),
		newContextCommand(g),
	)
	return root
}
