package tart

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Create clones vm.Image into name (tart clone pulls a remote image it
// does not have; ImagePullPolicy Always pulls first, for a newer tag),
// gives it a random MAC address (clones of one image share the image's,
// and with it a stale DHCP lease) and, when asked, a random serial, and
// sets CPU, memory and disk size. Pull output reaches progress as short
// status lines. On failure nothing is left behind.
func (d *Driver) Create(ctx context.Context, name string, vm *v1.VM, progress func(line string)) (string, error) {
	if err := checkName(name); err != nil {
		return "", fmt.Errorf("create vm %q: %w", name, err)
	}
	if vm == nil {
		return "", fmt.Errorf("create vm %q: no VM spec", name)
	}
	image := vm.Image
	if image == "" {
		return "", fmt.Errorf("create vm %q: no image", name)
	}
	onLine := func(line string) {
		if status := pullStatus(image, line); status != "" && progress != nil {
			progress(status)
		}
	}

	if vm.ImagePullPolicy == v1.ImagePullPolicyAlways {
		if _, err := d.command(ctx, onLine, "pull", image); err != nil {
			return "", fmt.Errorf("create vm %q: pull %s: %w", name, image, err)
		}
	}
	if _, err := d.command(ctx, onLine, "clone", image, name); err != nil {
		return "", fmt.Errorf("create vm %q: clone %s: %w", name, image, err)
	}
	if err := d.configure(ctx, name, vm); err != nil {
		d.removeHalfMade(name)
		return "", fmt.Errorf("create vm %q: %w", name, err)
	}

	// fqn is a hidden command: an older tart may not have it, and a
	// local image has no digest; the FQN is a nicety.
	fqn := ""
	if out, err := d.command(ctx, nil, "fqn", image); err == nil {
		fqn = strings.TrimSpace(out)
	} else {
		d.log.Debug("no fully qualified image name", "image", image, "error", err)
	}
	d.log.Info("vm created", "vm", name, "image", image, "image_fqn", fqn)
	return fqn, nil
}

// configure is the `tart set` half of Create.
func (d *Driver) configure(ctx context.Context, name string, vm *v1.VM) error {
	identity := []string{"set", name, "--random-mac"}
	if vm.RandomSerial {
		identity = append(identity, "--random-serial")
	}
	if _, err := d.command(ctx, nil, identity...); err != nil {
		return err
	}
	resources := []string{"set", name}
	if cpu := firstNonZero(vm.AssignedCPU, vm.CPU); cpu != 0 {
		resources = append(resources, "--cpu", strconv.FormatUint(cpu, 10))
	}
	if memory := firstNonZero(vm.AssignedMemory, vm.Memory); memory != 0 {
		resources = append(resources, "--memory", strconv.FormatUint(memory, 10))
	}
	if vm.DiskSize != 0 {
		resources = append(resources, "--disk-size", strconv.FormatUint(vm.DiskSize, 10))
	}
	if len(resources) == 2 {
		return nil
	}
	_, err := d.command(ctx, nil, resources...)
	return err
}

// firstNonZero returns the first of its arguments that is not zero.
func firstNonZero(values ...uint64) uint64 {
	for _, v := range values {
		if v != 0 {
			return v
		}
	}
	return 0
}

// removeHalfMade deletes a clone whose configuration failed, even when
// Create's context is what failed.
func (d *Driver) removeHalfMade(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.command(ctx, nil, "delete", name); err != nil {
		d.log.Warn("cannot remove half-made vm", "vm", name, "error", err)
	}
}

// pullStatus turns one line tart prints while pulling (with CI set) into
// a status line naming the image, or "" for nothing worth showing:
//
//	pulling manifest...                 -> pulling IMAGE: manifest
//	pulling disk (25.3 GB compressed)... -> pulling IMAGE: disk (25.3 GB compressed)
//	12%                                 -> pulling IMAGE: 12%
func pullStatus(image, line string) string {
	line = strings.TrimSpace(line)
	if line == "" {
		return ""
	}
	if strings.HasSuffix(line, "%") {
		if _, err := strconv.ParseFloat(strings.TrimSuffix(line, "%"), 64); err == nil {
			return "pulling " + image + ": " + line
		}
	}
	what, ok := strings.CutPrefix(line, "pulling ")
	if !ok {
		if line == "waiting for lock..." {
			return "pulling " + image + ": waiting for another pull"
		}
		return line
	}
	what = strings.TrimSuffix(what, "...")
	if what == image || strings.Contains(what, "/") {
		return "pulling " + what
	}
	return "pulling " + image + ": " + what
}
