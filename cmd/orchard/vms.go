package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

func newVMsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "vms", Aliases: []string{"vm"}, Short: "Create, inspect, reach and delete VMs"}
	cmd.AddCommand(newVMsCreate(g), newVMsList(g), newVMsGet(g), newVMsDelete(g), newVMsLogs(g),
		newVMsSSH(g), newVMsPortForward(g), newVMsVNC(g))
	return cmd
}

func newVMsCreate(g *globals) *cobra.Command {
	var (
		vm                                   v1.VM
		labels, resources, script, hostDirs  string
		osName, arch, runtime, restart, pull string
		wait                                 bool
		waitTimeout                          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create NAME --image IMAGE",
		Short: "Create a VM; the scheduler places it on a worker that fits",
		Args:  args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm.Name = args[0]
			var err error
			if vm.Labels, err = v1.ParseLabels(labels); err != nil {
				return err
			}
			if vm.Resources, err = v1.ParseResources(resources); err != nil {
				return err
			}
			if len(vm.Labels) == 0 {
				vm.Labels = nil
			}
			if len(vm.Resources) == 0 {
				vm.Resources = nil
			}
			if script != "" {
				content := script
				if path, ok := strings.CutPrefix(script, "@"); ok {
					b, err := os.ReadFile(path)
					if err != nil {
						return fmt.Errorf("read the startup script: %w", err)
					}
					content = string(b)
				}
				vm.StartupScript = &v1.VMScript{ScriptContent: content}
			}
			if vm.HostDirs, err = parseHostDirs(hostDirs); err != nil {
				return err
			}
			for _, f := range []struct{ flag, value, allowed string }{
				{"--os", osName, "darwin linux"}, {"--arch", arch, "arm64 amd64"}, {"--runtime", runtime, "tart vetu"},
				{"--restart-policy", restart, "Never OnFailure"}, {"--image-pull-policy", pull, "IfNotPresent Always"},
			} {
				if !slices.Contains(strings.Fields(f.allowed), f.value) {
					return fmt.Errorf("%s %q: want one of %s", f.flag, f.value, strings.ReplaceAll(f.allowed, " ", ", "))
				}
			}
			vm.OS, vm.Arch, vm.Runtime = v1.OS(osName), v1.Arch(arch), v1.Runtime(runtime)
			vm.RestartPolicy, vm.ImagePullPolicy = v1.RestartPolicy(restart), v1.ImagePullPolicy(pull)
			c, err := g.newClient()
			if err != nil {
				return err
			}
			created, err := c.CreateVM(cmd.Context(), &vm)
			if err != nil {
				return fmt.Errorf("create VM %q: %w", vm.Name, err)
			}
			if !wait {
				fmt.Fprintf(cmd.OutOrStdout(), "VM %s created; it is %s\n", created.Name, created.Status)
				return nil
			}
			return waitRunning(cmd.Context(), c, created.Name, waitTimeout, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&vm.Image, "image", "", "image to clone, e.g. ghcr.io/cirruslabs/macos-sequoia-base:latest (required)")
	_ = cmd.MarkFlagRequired("image")
	f.Uint64Var(&vm.CPU, "cpu", 0, "CPUs (default: the worker's default, 4)")
	f.Uint64Var(&vm.Memory, "memory", 0, "memory in MiB (default: the worker's default, 8192)")
	f.Uint64Var(&vm.DiskSize, "disk-size", 0, "grow the disk to this many GB")
	f.StringVar(&labels, "labels", "", "labels a worker must have, k=v,k2=v2")
	f.StringVar(&resources, "resources", "", "resources the VM takes from its worker, k=N,k2=M")
	f.StringVar(&vm.Username, "username", "", "SSH user (default admin)")
	f.StringVar(&vm.Password, "password", "", "SSH password (default admin)")
	f.StringVar(&script, "startup-script", "", "script to run over SSH once the VM is up, or @FILE")
	f.StringVar(&restart, "restart-policy", "Never", "Never or OnFailure")
	f.StringVar(&pull, "image-pull-policy", "IfNotPresent", "IfNotPresent or Always")
	f.StringVar(&osName, "os", "darwin", "guest OS: darwin or linux")
	f.StringVar(&arch, "arch", "arm64", "guest architecture: arm64 or amd64")
	f.StringVar(&runtime, "runtime", "tart", "runtime: tart or vetu")
	f.BoolVar(&vm.NetSoftnet, "net-softnet", false, "isolate the VM's network with Softnet")
	f.StringSliceVar(&vm.NetSoftnetAllow, "net-softnet-allow", nil, "CIDRs Softnet lets through")
	f.StringSliceVar(&vm.NetSoftnetBlock, "net-softnet-block", nil, "CIDRs Softnet blocks")
	f.StringVar(&vm.NetBridged, "net-bridged", "", "bridge the VM onto this host interface")
	f.BoolVar(&vm.Headless, "headless", true, "run without a display")
	f.BoolVar(&vm.Nested, "nested", false, "enable nested virtualization")
	f.BoolVar(&vm.Suspendable, "suspendable", false, "allow suspending the VM")
	f.BoolVar(&vm.RandomSerial, "random-serial", false, "give the VM a random serial number")
	f.StringVar(&hostDirs, "host-dirs", "", "host directories to share, name:path[:ro],...")
	f.BoolVar(&wait, "wait", false, "wait until the VM runs, showing progress")
	f.DurationVar(&waitTimeout, "wait-timeout", 30*time.Minute, "give up waiting after this long")
	return cmd
}

func parseHostDirs(s string) ([]v1.HostDir, error) {
	var out []v1.HostDir
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		fields := strings.Split(part, ":")
		if len(fields) < 2 || len(fields) > 3 || (len(fields) == 3 && fields[2] != "ro") {
			return nil, fmt.Errorf("host directory %q: want name:path or name:path:ro", part)
		}
		out = append(out, v1.HostDir{Name: fields[0], Path: fields[1], ReadOnly: len(fields) == 3})
	}
	return out, nil
}

// scriptFinished is the worker's status message once a startup script
// has exited 0.
const scriptFinished = "the startup script finished"

// waitRunning follows the VM's watch until it runs (and its startup
// script has finished), printing each status message: rewritten in place
// on a terminal, one line each otherwise.
func waitRunning(ctx context.Context, c *client.Client, name string, timeout time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	last := ""
	var result error
	err := c.WatchVM(ctx, name, func(ev v1.WatchEvent) bool {
		vm := ev.Object
		line := string(vm.Status)
		if vm.StatusMessage != "" {
			line += ": " + vm.StatusMessage
		}
		if line != last {
			if tty {
				fmt.Fprintf(out, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(out, line)
			}
			last = line
		}
		switch {
		case ev.Type == v1.WatchDeleted:
			result = fmt.Errorf("VM %q was deleted while waiting", name)
			return true
		case vm.Status == v1.VMStatusFailed:
			result = fmt.Errorf("VM %q failed: %s", name, vm.StatusMessage)
			return true
		case vm.Status == v1.VMStatusRunning:
			// With a startup script, wait for it too: it may still fail.
			return vm.StartupScript == nil || vm.StatusMessage == scriptFinished
		}
		return false
	})
	if tty && last != "" {
		fmt.Fprintln(out)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("VM %q is not running after %s", name, timeout)
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintf(out, "Stopped waiting; VM %s is %s (orchard vms get %s)\n", name, last, name)
		return &exitCode{code: 130}
	}
	if err != nil {
		return err
	}
	if result == nil {
		fmt.Fprintf(out, "VM %s is running\n", name)
	}
	return result
}

func newVMsList(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List VMs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			vms, err := c.ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if len(vms) == 0 && format == "table" {
				fmt.Fprintln(cmd.OutOrStdout(), "No VMs. Create one: orchard vms create NAME --image IMAGE")
				return nil
			}
			return render(cmd.OutOrStdout(), format, vms, func(tw *tabwriter.Writer) {
				row(tw, "NAME", "IMAGE", "STATUS", "WORKER", "RESTARTS", "CREATED", "MESSAGE")
				for _, vm := range vms {
					row(tw, vm.Name, vm.Image, vm.Status, orDash(vm.Worker), vm.RestartCount, ago(vm.CreatedAt), orDash(vm.StatusMessage))
				}
			})
		},
	}
	addOutputFlag(cmd, &format)
	return cmd
}

func newVMsGet(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a VM",
		Args:  args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			vm, err := c.GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), format, vm, func(tw *tabwriter.Writer) {
				row(tw, "Name", vm.Name)
				row(tw, "UID", vm.UID)
				row(tw, "Image", vm.Image)
				row(tw, "Status", vm.Status)
				row(tw, "Message", orDash(vm.StatusMessage))
				row(tw, "Worker", orDash(vm.Worker))
				row(tw, "Platform", fmt.Sprintf("%s/%s/%s", vm.OS, vm.Arch, vm.Runtime))
				row(tw, "CPU", fmt.Sprintf("%d (assigned %d)", vm.CPU, vm.AssignedCPU))
				row(tw, "Memory", fmt.Sprintf("%d MiB (assigned %d)", vm.Memory, vm.AssignedMemory))
				row(tw, "Power state", vm.PowerState)
				row(tw, "Restart policy", fmt.Sprintf("%s (restarted %d times)", vm.RestartPolicy, vm.RestartCount))
				row(tw, "Labels", orDash(formatMap(vm.Labels)))
				row(tw, "Resources", orDash(formatResources(vm.Resources)))
				row(tw, "Created", ago(vm.CreatedAt))
				row(tw, "Started", ago(vm.StartedAt))
			})
		},
	}
	addOutputFlag(cmd, &format)
	return cmd
}

func newVMsDelete(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME...",
		Short: "Delete VMs; their workers stop and remove them",
		Args:  args("NAME..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.newClient()
			if err != nil {
				return err
			}
			var errs []error
			for _, name := range args {
				if err := c.DeleteVM(cmd.Context(), name); err != nil {
					errs = append(errs, fmt.Errorf("delete VM %q: %w", name, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "VM %s deleted\n", name)
			}
			return errors.Join(errs...)
		},
	}
}

func newVMsLogs(g *globals) *cobra.Command {
	var follow bool
	var tail int
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's log: startup-script output and the worker's notes",
		Args:  args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tail < 0 {
				return fmt.Errorf("--tail %d: want 0 or more lines", tail)
			}
			if !cmd.Flags().Changed("tail") {
				tail = -1 // all of it
			}
			c, err := g.newClient()
			if err != nil {
				return err
			}
			return printLogs(cmd.Context(), c, args[0], tail, follow, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until the VM is deleted or Ctrl-C")
	cmd.Flags().IntVar(&tail, "tail", 0, "print only the last N lines (before following)")
	return cmd
}

// printLogs prints the VM's log (only the last tail lines when tail is 0
// or more) and
// with follow keeps printing lines as they are appended, until the VM is
// deleted or ctx ends.
func printLogs(ctx context.Context, c *client.Client, name string, tail int, follow bool, out io.Writer) error {
	var lines []string
	emit := func(l string) {
		if tail < 0 {
			fmt.Fprintln(out, l)
			return
		}
		if lines = append(lines, l); len(lines) > tail {
			lines = lines[1:]
		}
	}
	cursor := ""
	for {
		page, next, err := c.VMEvents(ctx, name, client.EventsQuery{Cursor: cursor, Limit: 1000})
		if err != nil {
			return err
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			emit(strings.TrimSuffix(e.Payload, "\n"))
		}
		cursor = next
	}
	for _, l := range lines {
		fmt.Fprintln(out, l)
	}
	if !follow {
		return nil
	}
	err := c.FollowVMEvents(ctx, name, cursor, func(e v1.Event) bool {
		fmt.Fprintln(out, strings.TrimSuffix(e.Payload, "\n"))
		return true
	})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func formatMap(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func formatResources(m v1.Resources) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, ",")
}
