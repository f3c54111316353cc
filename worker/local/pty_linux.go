package local

import (
	"os"

	"golang.org/x/sys/unix"
)

// pollable returns the pty master f as a file of the runtime poller, so
// that a read deadline can end the drain after the command exited and
// Close interrupts a pending read. The original descriptor was put in
// blocking mode by the pty package; a non-blocking duplicate replaces it.
func pollable(f *os.File) *os.File {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return f
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return f
	}
	dup := os.NewFile(uintptr(fd), f.Name())
	f.Close()
	return dup
}
