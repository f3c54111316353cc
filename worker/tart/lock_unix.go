//go:build unix

package tart

import (
	"io"
	"os"
	"os/exec"
	"syscall"
)

// lockHolder returns the PID of the process holding an fcntl write lock on
// path, 0 when none does. Tart's `tart run` holds one on the VM's
// config.json for as long as the VM runs; `tart stop` finds it the same
// way. The descriptor is only read from: this process never holds that
// lock, so closing it releases nothing.
func lockHolder(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		return 0, err
	}
	if lk.Type == syscall.F_UNLCK {
		return 0, nil
	}
	return int(lk.Pid), nil
}

// ownProcessGroup keeps a Ctrl-C in the worker's terminal from reaching
// tart directly: the driver decides when its VMs stop.
func ownProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}
