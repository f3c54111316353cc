package local

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// How processes are ended: SIGTERM, a grace period, then SIGKILL, polling
// until none is left.
const (
	termGrace    = 1500 * time.Millisecond
	killTimeout  = 5 * time.Second // after SIGKILL; only an unkillable process takes this long
	pollInterval = 20 * time.Millisecond
)

// processMatch says which processes belong to what is being stopped.
type processMatch struct {
	// marker matches a process whose environment holds exactly this
	// markerVar entry; markerPrefix matches entries starting with it.
	marker       string
	markerPrefix string
	// groups are process groups (and, for pty sessions, sessions) led by
	// the VM's commands.
	groups map[int]bool
}

// reaper ends processes. On Linux, concurrent calls share scans of the
// process table, so that deleting many VMs at once costs a scan per poll,
// not a scan per VM per poll.
type reaper struct {
	mu       sync.Mutex
	snapshot []processInfo
	taken    time.Time
}

// processInfo is one process, as a scan of the process table found it.
type processInfo struct {
	pid, pgid, sid int
	marker         string // the markerVar entry of its environment, if any
}

func newReaper() *reaper { return &reaper{} }

// end signals every process m matches, SIGTERM first and SIGKILL after
// termGrace, and returns once none is left.
func (r *reaper) end(ctx context.Context, m processMatch) error {
	start := time.Now()
	termed := make(map[int]bool)
	for {
		now := time.Now()
		targets, err := r.living(now, m)
		if err != nil {
			return err
		}
		if len(targets) == 0 {
			return nil
		}
		if now.Sub(start) > termGrace+killTimeout {
			return fmt.Errorf("%d processes survived SIGKILL", len(targets))
		}
		kill := now.Sub(start) >= termGrace
		for _, t := range targets {
			switch {
			case kill:
				syscall.Kill(t, syscall.SIGKILL)
			case !termed[t]:
				termed[t] = true
				syscall.Kill(t, syscall.SIGTERM)
				// A stopped process acts on SIGTERM only once continued.
				syscall.Kill(t, syscall.SIGCONT)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("end processes: %w", ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// living returns what to signal for the processes m matches that are
// still alive: pids, and negated process group ids where groups are all
// that is known.
func (r *reaper) living(after time.Time, m processMatch) ([]int, error) {
	if !scanSupported {
		return livingGroups(m.groups), nil
	}
	procs, err := r.scan(after)
	if err != nil {
		return nil, err
	}
	var targets []int
	for _, p := range procs {
		if m.matches(p) {
			targets = append(targets, p.pid)
		}
	}
	return targets, nil
}

func (m processMatch) matches(p processInfo) bool {
	switch {
	case m.groups[p.pgid], m.groups[p.sid]:
		return true
	case p.marker == "":
		return false
	case m.marker != "" && p.marker == m.marker:
		return true
	case m.markerPrefix != "" && len(p.marker) > len(m.markerPrefix) && p.marker[:len(m.markerPrefix)] == m.markerPrefix:
		return true
	}
	return false
}

// scan returns a scan of the process table taken no earlier than after,
// scanning again only when the last one is older.
func (r *reaper) scan(after time.Time) ([]processInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.taken.Before(after) {
		return r.snapshot, nil
	}
	taken := time.Now()
	procs, err := scanProcesses()
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	r.snapshot, r.taken = procs, taken
	return procs, nil
}

// livingGroups returns the negated ids of the groups that still have a
// process, for kill(2).
func livingGroups(groups map[int]bool) []int {
	var targets []int
	for g := range groups {
		if err := syscall.Kill(-g, 0); err == nil || !errors.Is(err, syscall.ESRCH) {
			targets = append(targets, -g)
		}
	}
	return targets
}
