//go:build !linux

package local

// Elsewhere there is no portable way to read another process's
// environment: process groups are all the driver knows, and a daemon that
// left its group (setsid) outlives its VM. doc.go says so.
const (
	scanSupported = false
	// keepOrphanedGroups: a group is the only handle on a background job
	// whose command ended, so it is kept while it has members.
	keepOrphanedGroups = true
)

func scanProcesses() ([]processInfo, error) { return nil, nil }
