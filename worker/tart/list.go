package tart

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/orchardci/orchard/worker"
)

// namePrefix marks the instances this driver owns; v1.LocalNameFor makes
// every name so.
const namePrefix = "orchard-"

// List returns the local VMs whose names start with "orchard-", from
// `tart list --format json --source local`.
func (d *Driver) List(ctx context.Context) ([]worker.Instance, error) {
	out, err := d.command(ctx, nil, "list", "--format", "json", "--source", "local")
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	instances, err := parseList([]byte(out))
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	return instances, nil
}

// listEntry is one element of `tart list --format json`. Tart's encoder
// escapes "/" and does not promise a key order, so this is decoded, never
// matched as text.
type listEntry struct {
	Source  string `json:"Source"`
	Name    string `json:"Name"`
	Running *bool  `json:"Running"`
	State   string `json:"State"`
}

// parseList decodes `tart list --format json` and keeps the local VMs
// named with namePrefix. Running comes from "Running", or from "State"
// where a tart lacks that field.
func parseList(data []byte) ([]worker.Instance, error) {
	var entries []listEntry
	if err := json.Unmarshal(data, &entries); err != nil {
		return nil, fmt.Errorf("parse tart list output: %w", err)
	}
	instances := []worker.Instance{}
	for i, e := range entries {
		if e.Name == "" {
			return nil, fmt.Errorf("parse tart list output: entry %d has no Name", i)
		}
		if e.Source != "" && !strings.EqualFold(e.Source, "local") {
			continue
		}
		if !strings.HasPrefix(e.Name, namePrefix) {
			continue
		}
		running := e.State == "running"
		if e.Running != nil {
			running = *e.Running
		}
		instances = append(instances, worker.Instance{Name: e.Name, Running: running})
	}
	return instances, nil
}

// state is the VM's State as `tart get --format json` reports it:
// "running", "suspended" or "stopped".
func (d *Driver) state(ctx context.Context, name string) (string, error) {
	out, err := d.command(ctx, nil, "get", name, "--format", "json")
	if err != nil {
		return "", err
	}
	var info struct {
		State string `json:"State"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return "", fmt.Errorf("parse tart get output: %w", err)
	}
	if info.State == "" {
		return "", fmt.Errorf("parse tart get output: no State")
	}
	return info.State, nil
}
