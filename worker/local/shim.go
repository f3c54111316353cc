package local

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
)

// Where Create puts the shims; the VM's PATH starts there.
const (
	orchardDir = ".orchard"
	shimDir    = orchardDir + "/bin"
	// shimFile is the one shim script, in the driver directory; each VM's
	// shims are hard links to it (a link costs a small fraction of a new
	// file). It tells what it is from the name it was run by. A VM that
	// writes into a shim changes every VM's: nothing is isolated.
	shimFile = "shim.sh"
)

// shimNames are the commands a VM gets shims for: those that would power
// off a real guest, and sudo.
var shimNames = []string{"shutdown", "halt", "poweroff", "sudo"}

// installShimSource writes the shim script into the driver directory,
// replacing an older one (links of VMs made before keep theirs).
func installShimSource(driverDir, fifoPath string) (string, error) {
	path := filepath.Join(driverDir, shimFile)
	if err := writeFileAtomic(path, []byte(shimScript(fifoPath)), 0o700); err != nil {
		return "", fmt.Errorf("install shim script: %w", err)
	}
	return path, nil
}

// writeShims links the shims into vmDir/.orchard/bin.
func writeShims(vmDir, source string) error {
	bin := filepath.Join(vmDir, shimDir)
	for _, dir := range []string{filepath.Dir(bin), bin} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("install shims: %w", err)
		}
	}
	for _, name := range shimNames {
		if err := os.Link(source, filepath.Join(bin, name)); err != nil {
			return fmt.Errorf("install shim %s: %w", name, err)
		}
	}
	return nil
}

// shimScript is the shims' source.
//
// shutdown, halt and poweroff ask the driver, by writing the VM's marker
// value to the FIFO at fifoPath, to stop this VM, and return, as macOS's
// shutdown returns while the system goes down. A reboot is refused rather
// than turned into a halt.
//
// sudo runs its command as the same user: a local VM runs as the worker's
// user, so there is no privilege to gain. Options are accepted and
// ignored; VAR=value words before the command are kept (env does that). A
// power command given by path still reaches the shims.
func shimScript(fifoPath string) string {
	return `#!/bin/sh
# Installed by Orchard's local driver. A local VM is a directory on the
# host: these shims keep "sudo shutdown -h now" from stopping the host.
bin=${0%/*}
case "${0##*/}" in
shutdown|halt|poweroff)
	for arg in "$@"; do
		case "$arg" in
		--reboot) reboot=1 ;;
		--*) ;;
		-*r*) reboot=1 ;;
		esac
	done
	if [ -n "$reboot" ]; then
		echo "${0##*/}: reboot is not supported in a local Orchard VM" >&2
		exit 1
	fi
	if [ -z "$` + markerVar + `" ]; then
		echo "${0##*/}: not in a local Orchard VM (` + markerVar + ` is unset)" >&2
		exit 1
	fi
	printf '%s\n' "$` + markerVar + `" > ` + shellQuote(fifoPath) + ` || exit 1
	echo "${0##*/}: stopping the local VM" >&2
	exit 0
	;;
sudo)
	shell=
	while [ $# -gt 0 ]; do
		case "$1" in
		--) shift; break ;;
		-u|-g|-p|-C|-D|-h|-r|-t|-T|-U) shift; [ $# -gt 0 ] && shift ;;
		-s|-i) shell=1; shift ;;
		-?*) shift ;;
		*) break ;;
		esac
	done
	if [ $# -eq 0 ]; then
		if [ -n "$shell" ]; then exec /bin/sh; fi
		echo "usage: sudo command [args...]" >&2
		exit 1
	fi
	case "${1##*/}" in
	shutdown|halt|poweroff) cmd=${1##*/}; shift; exec "$bin/$cmd" "$@" ;;
	esac
	exec env -- "$@"
	;;
esac
echo "${0##*/}: unknown Orchard shim" >&2
exit 1
`
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shutdownListener reads the power shims' requests from a FIFO: one line
// "<driver id>/<vm name>" per request. One reader serves every VM of the
// driver; writes of a line this short are atomic, so concurrent shims never
// interleave.
type shutdownListener struct {
	path    string
	fifo    *os.File
	closing atomic.Bool
	done    chan struct{}
}

// maxShutdownLine bounds a request line; longer ones are not requests.
const maxShutdownLine = 512

func listenShutdowns(path, driverID string, log *slog.Logger, onShutdown func(name string)) (*shutdownListener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove old shutdown fifo: %w", err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		return nil, fmt.Errorf("create shutdown fifo: %w", err)
	}
	// Opened for reading and writing: opening never blocks, and the reader
	// never sees end-of-file when a shim closes its end.
	fifo, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("open shutdown fifo: %w", err)
	}
	l := &shutdownListener{path: path, fifo: fifo, done: make(chan struct{})}
	go l.serve(driverID, log, onShutdown)
	return l, nil
}

func (l *shutdownListener) serve(driverID string, log *slog.Logger, onShutdown func(name string)) {
	defer close(l.done)
	r := bufio.NewReaderSize(l.fifo, maxShutdownLine)
	for {
		line, isPrefix, err := r.ReadLine()
		if err != nil || l.closing.Load() {
			return
		}
		if isPrefix {
			// Too long to be a request: skip the rest of the line.
			for isPrefix && err == nil {
				_, isPrefix, err = r.ReadLine()
			}
			continue
		}
		name, ok := parseShutdownRequest(string(line), driverID)
		if !ok {
			if len(line) > 0 {
				log.Warn("ignored malformed guest shutdown request", "length", len(line))
			}
			continue
		}
		onShutdown(name)
	}
}

// parseShutdownRequest returns the VM name in a request line written by a
// power shim of the driver driverID.
func parseShutdownRequest(line, driverID string) (name string, ok bool) {
	rest, found := strings.CutPrefix(line, driverID+"/")
	if !found || validName(rest) != nil {
		return "", false
	}
	return rest, true
}

// close stops the reader and removes the FIFO. The reader may sit in a
// blocking read (FIFOs are not pollable everywhere), so wake it with an
// empty line of our own.
func (l *shutdownListener) close() {
	if l.closing.Swap(true) {
		return
	}
	l.fifo.Write([]byte("\n"))
	<-l.done
	l.fifo.Close()
	os.Remove(l.path)
}
