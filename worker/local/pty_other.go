//go:build !linux

package local

import "os"

// pollable keeps the pty master as it is: kqueue does not handle ptys
// reliably on macOS. Reads then end only once every process holding the
// pty has closed it, so a background job on the pty keeps the session
// until the VM stops.
func pollable(f *os.File) *os.File { return f }
