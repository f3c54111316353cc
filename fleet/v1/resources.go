package v1

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Well-known resource names. A worker offers them; a VM asks for them.
const (
	// ResourceTartVMs counts macOS guests. Apple allows two per host, so a
	// Tart worker offers 2 and every darwin/tart VM asks for 1.
	ResourceTartVMs = "org.cirruslabs.tart-vms"
	// ResourceLogicalCores and ResourceMemoryMiB describe the host; they
	// only count for VMs that ask for them explicitly.
	ResourceLogicalCores = "org.cirruslabs.logical-cores"
	ResourceMemoryMiB    = "org.cirruslabs.memory-mib"
)

// Resources maps a resource name to an amount.
type Resources map[string]uint64

// Fits reports whether need fits into r: only the keys need asks for count.
// When it does not, missing names the first resource that is short.
func (r Resources) Fits(need Resources) (missing string, ok bool) {
	for k, v := range need {
		if r[k] < v {
			// Name the first short key in order, so messages are stable.
			for _, k := range slices.Sorted(maps.Keys(need)) {
				if r[k] < need[k] {
					return k, false
				}
			}
		}
	}
	return "", true
}

// Add adds other to r, creating r's entries as needed.
func (r Resources) Add(other Resources) {
	for k, v := range other {
		r[k] += v
	}
}

// Sub subtracts other from r, never going below zero.
func (r Resources) Sub(other Resources) {
	for k, v := range other {
		if r[k] < v {
			r[k] = 0
		} else {
			r[k] -= v
		}
	}
}

// Labels maps a label key to its value.
type Labels map[string]string

// Contains reports whether l has every key=value pair of want. When it
// does not, missing names the first pair that is absent.
func (l Labels) Contains(want Labels) (missing string, ok bool) {
	for k, v := range want {
		if got, found := l[k]; !found || got != v {
			// Name the first absent pair in order, so messages are stable.
			for _, k := range slices.Sorted(maps.Keys(want)) {
				if got, found := l[k]; !found || got != want[k] {
					return k + "=" + want[k], false
				}
			}
		}
	}
	return "", true
}

// ParseLabels parses "k=v,k2=v2" as written on the command line.
func ParseLabels(s string) (Labels, error) {
	pairs, err := parsePairs(s)
	if err != nil {
		return nil, fmt.Errorf("labels: %w", err)
	}
	return Labels(pairs), nil
}

// ParseResources parses "k=N,k2=M" as written on the command line.
func ParseResources(s string) (Resources, error) {
	pairs, err := parsePairs(s)
	if err != nil {
		return nil, fmt.Errorf("resources: %w", err)
	}
	r := Resources{}
	for k, v := range pairs {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("resources: %s=%q is not a non-negative integer", k, v)
		}
		r[k] = n
	}
	return r, nil
}

func parsePairs(s string) (map[string]string, error) {
	out := map[string]string{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", part)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}
