package local

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"
)

// addressing is how VMs get their addresses on this host.
type addressing struct {
	// shared is set where only 127.0.0.1 routes to the loopback interface
	// (macOS): every VM listens there, on a port the OS picks.
	shared bool
	// port is the SSH port VMs listen on otherwise: 22 when this process
	// may bind it, else 2222. Binding it claims the address.
	port uint16
	// pick returns a candidate address: randomVMAddr.
	pick func() netip.Addr
}

// VM addresses come from 127.64.0.0/10, far from the 127.0.0.x addresses
// that hosts use for their own services.
var vmNetwork = netip.MustParsePrefix("127.64.0.0/10")

const (
	unprivilegedSSHPort = 2222
	// claimAttempts is how many random addresses Start tries at the
	// preferred port before it lets the OS pick the port.
	claimAttempts = 8
)

// detectAddressing probes the host: can we bind 127.0.0.2, and port 22?
func detectAddressing() addressing {
	probe, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		return addressing{shared: true, pick: randomVMAddr}
	}
	probe.Close()
	for range 3 {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(randomVMAddr(), 22).String())
		if err == nil {
			ln.Close()
			return addressing{port: 22, pick: randomVMAddr}
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			break // EACCES: not privileged
		}
		// In use at three random addresses: something (sshd) listens on
		// 0.0.0.0:22, and would take every address's port 22.
	}
	return addressing{port: unprivilegedSSHPort, pick: randomVMAddr}
}

// randomVMAddr picks an address in vmNetwork whose last octet is neither 0
// nor 255, which some tools take for network and broadcast addresses.
func randomVMAddr() netip.Addr {
	base := vmNetwork.Addr().As4()
	size := uint32(1) << (32 - vmNetwork.Bits())
	for {
		n := rand.Uint32N(size)
		if last := byte(n); last == 0 || last == 255 {
			continue
		}
		a := [4]byte{base[0], base[1] | byte(n>>16), byte(n >> 8), byte(n)}
		return netip.AddrFrom4(a)
	}
}

// listen opens the SSH listener of the VM called name, preferring its
// previous address prev, and records the address as in use.
func (d *Driver) listen(name string, prev netip.AddrPort) (net.Listener, error) {
	if d.addrs.shared {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("listen on 127.0.0.1: %w", err)
		}
		return ln, nil
	}

	var lastErr error
	try := func(addr netip.Addr, port uint16) net.Listener {
		d.mu.Lock()
		defer d.mu.Unlock()
		if _, taken := d.inUse[addr]; taken {
			return nil
		}
		ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, port).String())
		if err != nil {
			lastErr = err
			return nil
		}
		d.inUse[addr] = name
		return ln
	}

	if prev.IsValid() && vmNetwork.Contains(prev.Addr()) {
		if ln := try(prev.Addr(), d.addrs.port); ln != nil {
			return ln, nil
		}
	}
	// EADDRINUSE means another VM, here or in another worker on this
	// host, holds the address: try another.
	for range claimAttempts {
		if ln := try(d.addrs.pick(), d.addrs.port); ln != nil {
			return ln, nil
		}
		if lastErr != nil && !errors.Is(lastErr, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("listen for ssh: %w", lastErr)
		}
	}
	// The preferred port is busy everywhere we looked. An OS-picked port
	// always binds; the address is then distinct within this driver only.
	for range claimAttempts {
		if ln := try(d.addrs.pick(), 0); ln != nil {
			return ln, nil
		}
	}
	return nil, fmt.Errorf("listen for ssh: no free loopback address found: %w", lastErr)
}
