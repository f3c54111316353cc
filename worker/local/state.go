package local

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/crypto/ssh"
)

// What the driver keeps in its directory, beside the VM directories:
// what must survive a restart of the worker (the id, the host key) and
// what keeps two drivers off one directory (the lock).

// Files directly under Options.Dir.
const (
	hostKeyFile  = "ssh_host_ed25519_key"
	driverIDFile = "driver-id"
	lockFile     = "driver.lock"
	shutdownFIFO = "shutdown.fifo"
)

// lockDir takes an exclusive lock on path, so that two drivers never share
// a directory: each would end the other's processes as left-overs. The
// lock goes with the process; the descriptor is close-on-exec, so no
// command of a VM holds it.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is in use by another local driver", path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// loadOrCreateID returns the driver id stored at path, creating it on the
// first run.
func loadOrCreateID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		id := string(b)
		if len(id) == 16 && isHex(id) {
			return id, nil
		}
		return "", fmt.Errorf("read driver id %s: malformed content", path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read driver id: %w", err)
	}
	var raw [8]byte
	rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	if err := writeFileAtomic(path, []byte(id), 0o600); err != nil {
		return "", fmt.Errorf("write driver id: %w", err)
	}
	return id, nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// writeFileAtomic writes data to path through a temporary file, so that a
// crash never leaves a half-written file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// removeStaleVMDirs removes the VM directories under Dir: at New the driver
// knows no VM, so every one is a previous run's. A VM directory is one with
// the .orchard subdirectory Create makes; anything else is left alone.
func (d *Driver) removeStaleVMDirs() error {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", d.dir, err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		vmDir := filepath.Join(d.dir, e.Name())
		if _, err := os.Stat(filepath.Join(vmDir, orchardDir)); err != nil {
			continue
		}
		if err := os.RemoveAll(vmDir); err != nil {
			return fmt.Errorf("remove stale vm directory %s: %w", vmDir, err)
		}
		d.log.Info("removed vm directory left by a previous run", "vm", e.Name())
	}
	return nil
}

// loadOrCreateHostKey returns the host key kept at path, generating an
// ed25519 key on the first run, so that clients that pinned the key keep
// trusting the VMs after a restart of the worker. Errors never quote the
// file's content.
func loadOrCreateHostKey(path string) (ssh.Signer, error) {
	pemBytes, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createHostKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("parse host key %s: %w", path, err)
	}
	return signer, nil
}

func createHostKey(path string) (ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, fmt.Errorf("encode host key: %w", err)
	}
	if err := writeFileAtomic(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("write host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	return signer, nil
}
