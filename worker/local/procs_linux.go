package local

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"strconv"
)

// On Linux the process table says which processes carry a VM's marker,
// whichever group or session they moved to.
const (
	scanSupported = true
	// keepOrphanedGroups: a group outliving its leader is found through
	// its members' markers, so a group is forgotten with its leader and
	// its id, which the system may reuse, is never signalled later.
	keepOrphanedGroups = false
)

var markerKey = []byte(markerVar + "=")

// scanProcesses lists the live processes of /proc, zombies left out (they
// are dead; only their parent's wait removes them).
func scanProcesses() ([]processInfo, error) {
	dir, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	procs := make([]processInfo, 0, len(names))
	buf := make([]byte, 0, 64<<10)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid == self {
			continue
		}
		p, ok := readProcess(pid, &buf)
		if ok {
			procs = append(procs, p)
		}
	}
	return procs, nil
}

// readProcess reads pid's group, session and marker. ok is false when the
// process is gone or a zombie.
func readProcess(pid int, buf *[]byte) (p processInfo, ok bool) {
	base := "/proc/" + strconv.Itoa(pid)
	stat, err := readInto(base+"/stat", buf)
	if err != nil {
		return p, false
	}
	// The command name in parentheses may hold anything; fields resume
	// after the last ')': state ppid pgrp session ...
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return p, false
	}
	fields := bytes.Fields(stat[i+1:])
	if len(fields) < 4 {
		return p, false
	}
	if state := fields[0]; len(state) == 1 && (state[0] == 'Z' || state[0] == 'X') {
		return p, false
	}
	p.pid = pid
	p.pgid, _ = strconv.Atoi(string(fields[2]))
	p.sid, _ = strconv.Atoi(string(fields[3]))

	// Kernel threads and processes of other users give an empty or
	// unreadable environment; neither is a VM's.
	env, err := readInto(base+"/environ", buf)
	if err != nil {
		return p, true
	}
	for entry := range bytes.SplitSeq(env, []byte{0}) {
		if bytes.HasPrefix(entry, markerKey) {
			p.marker = string(entry)
			break
		}
	}
	return p, true
}

// readInto reads the file at path into *buf, reusing its memory across
// the many small files of a scan. The result aliases *buf.
func readInto(path string, buf *[]byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := (*buf)[:0]
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, cap(b)+4096)
		}
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			*buf = b
			return nil, err
		}
	}
	*buf = b
	return b, nil
}
