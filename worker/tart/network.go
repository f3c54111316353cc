package tart

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// agentWait is how long a bridged VM's guest agent gets to answer before
// the ARP table is asked instead, as Orchard does.
const agentWait = 5 * time.Second

// IP asks `tart ip --wait` for the VM's IPv4 address, again and again
// while the VM runs and ctx allows. Bridged VMs have no lease on this host:
// their guest agent is asked, then the ARP table. A VM that does not run
// gets a single attempt (a lease from its last boot may still answer).
func (d *Driver) IP(ctx context.Context, name string) (string, error) {
	bridged := false
	if inst := d.instance(name); inst != nil {
		bridged = inst.bridged
	}
	for {
		running := d.running(name)
		ip, err := d.resolveIP(ctx, name, bridged, running)
		if err == nil {
			return ip, nil
		}
		if !errors.Is(err, ErrNoIPAddress) || !running || ctx.Err() != nil {
			return "", fmt.Errorf("ip of vm %q: %w", name, err)
		}
		// tart ip has waited already; this pause only guards against a
		// tart that returns at once.
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("ip of vm %q: %w", name, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func (d *Driver) resolveIP(ctx context.Context, name string, bridged, running bool) (string, error) {
	wait := d.opts.IPWait
	if deadline, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(deadline))
	}
	if !running {
		wait = 0
	}
	if !bridged {
		return d.ipWith(ctx, name, wait, "")
	}
	ip, err := d.ipWith(ctx, name, min(wait, agentWait), "agent")
	if err == nil || !errors.Is(err, ErrNoIPAddress) {
		return ip, err
	}
	return d.ipWith(ctx, name, wait, "arp")
}

func (d *Driver) ipWith(ctx context.Context, name string, wait time.Duration, resolver string) (string, error) {
	secs := max(0, int((wait+time.Second-1)/time.Second))
	args := []string{"ip", "--wait", strconv.Itoa(min(secs, 65535))}
	if resolver != "" {
		args = append(args, "--resolver", resolver)
	}
	out, err := d.command(ctx, nil, append(args, name)...)
	if err != nil {
		return "", err
	}
	ip := strings.TrimSpace(out)
	if parsed := net.ParseIP(ip); parsed == nil || parsed.To4() == nil {
		return "", fmt.Errorf("tart %s printed %q, not an IPv4 address", strings.Join(args, " "), ip)
	}
	return ip, nil
}

// Dial connects to port on the VM's IP address.
func (d *Driver) Dial(ctx context.Context, name string, port uint16) (net.Conn, error) {
	ip, err := d.IP(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("dial vm %q port %d: %w", name, port, err)
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(int(port))))
	if err != nil {
		return nil, fmt.Errorf("dial vm %q port %d: %w", name, port, err)
	}
	return conn, nil
}
