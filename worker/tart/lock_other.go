//go:build !unix

package tart

import (
	"errors"
	"os/exec"
)

// lockHolder cannot inspect fcntl locks here (Tart runs only on macOS).
func lockHolder(string) (int, error) { return 0, errors.ErrUnsupported }

func ownProcessGroup(*exec.Cmd) {}
