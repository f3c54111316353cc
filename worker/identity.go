package worker

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// MachineID identifies this host: /etc/machine-id on Linux, the
// platform UUID on macOS, and otherwise an id generated once and kept in
// stateDir.
func MachineID(stateDir string) (string, error) {
	switch runtime.GOOS {
	case "linux":
		if b, err := os.ReadFile("/etc/machine-id"); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return string(bytes.TrimSpace(b)), nil
		}
	case "darwin":
		out, err := exec.Command("ioreg", "-rd1", "-c", "IOPlatformExpertDevice").Output()
		if err == nil {
			if m := regexp.MustCompile(`"IOPlatformUUID" = "([^"]+)"`).FindSubmatch(out); m != nil {
				return string(m[1]), nil
			}
		}
	}
	path := filepath.Join(stateDir, "machine-id")
	if b, err := os.ReadFile(path); err == nil && len(bytes.TrimSpace(b)) > 0 {
		return string(bytes.TrimSpace(b)), nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	id := strings.ToLower(rand.Text())
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return "", fmt.Errorf("keep the machine id: %w", err)
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keep the machine id: %w", err)
	}
	return id, nil
}

// DefaultResources are what a worker offers unless told otherwise: two
// macOS VMs (Apple's limit, and the local driver's default too, so it
// behaves like a Mac), and the host's logical cores and memory, which
// count only for VMs that ask for them.
func DefaultResources() v1.Resources {
	r := v1.Resources{v1.ResourceTartVMs: 2, v1.ResourceLogicalCores: uint64(runtime.NumCPU())}
	if mib := memoryMiB(); mib > 0 {
		r[v1.ResourceMemoryMiB] = mib
	}
	return r
}

func memoryMiB() uint64 {
	switch runtime.GOOS {
	case "linux":
		b, err := os.ReadFile("/proc/meminfo")
		if err != nil {
			return 0
		}
		var kb uint64
		for line := range strings.SplitSeq(string(b), "\n") {
			if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
				return kb / 1024
			}
		}
	case "darwin":
		out, err := exec.Command("sysctl", "-n", "hw.memsize").Output()
		if err == nil {
			var bytes uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "%d", &bytes); err == nil {
				return bytes >> 20
			}
		}
	}
	return 0
}

// DefaultName is the worker's name unless told otherwise: the host name,
// cut at the first dot and to what a name may hold.
func DefaultName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "worker"
	}
	h, _, _ = strings.Cut(h, ".")
	h = regexp.MustCompile(`[^A-Za-z0-9:_.-]`).ReplaceAllString(h, "-")
	if len(h) > v1.MaxNameLength {
		h = h[:v1.MaxNameLength]
	}
	return strings.TrimLeft(h, ".-")
}
