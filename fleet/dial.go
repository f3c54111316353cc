package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// headerTimeout bounds how long a worker may take to answer a stream
// request; its own dial to the VM is bounded tighter.
const headerTimeout = 15 * time.Second

// errUnreachable marks a VM port that refused or timed out: worth a retry
// while the caller is willing to wait.
var errUnreachable = errors.New("VM port unreachable")

// DialVM connects to a TCP port of a running VM through its worker's
// tunnel. It makes one attempt; DialVMWait waits and retries.
func (c *Controller) DialVM(ctx context.Context, name string, port uint16) (net.Conn, error) {
	vm, err := c.VM(name)
	if err != nil {
		return nil, err
	}
	st, resp, err := c.request(ctx, vm, tunnel.Request{Op: tunnel.OpDial, Port: port, LocalName: vm.LocalName})
	if err != nil {
		return nil, err
	}
	if resp.Code != tunnel.CodeOK {
		st.Close()
		return nil, responseError(vm, resp)
	}
	c.metrics.streams.WithLabelValues("dial").Inc()
	return st, nil
}

// DialVMWait waits up to wait for the VM to run and its port to accept,
// retrying the dial until then, and returns the connection.
func (c *Controller) DialVMWait(ctx context.Context, name string, port uint16, wait time.Duration) (net.Conn, error) {
	return untilRunning(c, ctx, name, wait, func(ctx context.Context, vm *v1.VM) (net.Conn, error) {
		return c.DialVM(ctx, name, port)
	})
}

// VMIP returns the VM's IP address as its worker sees it, waiting up to
// wait for the VM to run and have one. A wait of zero makes one attempt
// (Orchard answers 500 there).
func (c *Controller) VMIP(ctx context.Context, name string, wait time.Duration) (string, error) {
	return untilRunning(c, ctx, name, wait, func(ctx context.Context, vm *v1.VM) (string, error) {
		st, resp, err := c.request(ctx, vm, tunnel.Request{Op: tunnel.OpIP, LocalName: vm.LocalName})
		if err != nil {
			return "", err
		}
		st.Close()
		if resp.Code != tunnel.CodeOK {
			return "", responseError(vm, resp)
		}
		return resp.Message, nil
	})
}

// untilRunning waits up to wait for the VM to run, then calls attempt,
// retrying failures that time may fix (a port that does not accept yet, a
// worker reconnecting), backing off from 50 ms to 1 s, until wait is up.
// Every attempt gets its own time, so a wait of zero still makes one.
func untilRunning[T any](c *Controller, ctx context.Context, name string, wait time.Duration, attempt func(context.Context, *v1.VM) (T, error)) (T, error) {
	var zero T
	deadline := time.Now().Add(wait)
	delay := 50 * time.Millisecond
	for {
		vm, err := c.waitRunning(ctx, name, max(time.Until(deadline), 0))
		if err != nil {
			return zero, err
		}
		v, err := attempt(ctx, vm)
		if err == nil || !retryable(err) {
			return v, err
		}
		if time.Now().Add(delay).After(deadline) {
			return zero, fmt.Errorf("gave up after %s: %w", wait, err)
		}
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
	}
}

// request opens a stream to the VM's worker and exchanges the headers.
func (c *Controller) request(ctx context.Context, vm *v1.VM, req tunnel.Request) (tunnel.Stream, tunnel.Response, error) {
	if vm.Status != v1.VMStatusRunning || vm.Worker == "" {
		return tunnel.Stream{}, tunnel.Response{}, errorf(http.StatusServiceUnavailable, "VM %q is %s, not running on a worker", vm.Name, vm.Status)
	}
	c.mu.Lock()
	s := c.sessions[vm.Worker]
	c.mu.Unlock()
	if s == nil {
		return tunnel.Stream{}, tunnel.Response{}, errorf(http.StatusServiceUnavailable, "worker %q of VM %q is not connected", vm.Worker, vm.Name)
	}
	st, err := tunnel.OpenStream(s.mux)
	if err != nil {
		return tunnel.Stream{}, tunnel.Response{}, errorf(http.StatusServiceUnavailable, "open a stream to worker %q: %v", vm.Worker, err)
	}
	deadline := time.Now().Add(headerTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = st.SetDeadline(deadline)
	// yamux's Close only half-closes: the deadline is what ends a read in
	// progress.
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Now()); st.Close() })
	defer stop()
	if err := tunnel.WriteRequest(st, req); err != nil {
		st.Close()
		return tunnel.Stream{}, tunnel.Response{}, errorf(http.StatusServiceUnavailable, "send request to worker %q: %v", vm.Worker, err)
	}
	resp, err := tunnel.ReadResponse(st)
	if err != nil {
		st.Close()
		if ctx.Err() != nil {
			return tunnel.Stream{}, tunnel.Response{}, ctx.Err()
		}
		return tunnel.Stream{}, tunnel.Response{}, errorf(http.StatusServiceUnavailable, "worker %q did not answer: %v", vm.Worker, err)
	}
	_ = st.SetDeadline(time.Time{})
	return st, resp, nil
}

func responseError(vm *v1.VM, resp tunnel.Response) error {
	e := errorf(http.StatusServiceUnavailable, "worker %q: %s", vm.Worker, resp.Message)
	if resp.Code == tunnel.CodeUnreachable {
		return errors.Join(errUnreachable, e)
	}
	return e
}

// retryable reports whether time may fix err: a VM port that does not
// accept yet, or a worker that is not connected (yet).
func retryable(err error) bool {
	return errors.Is(err, errUnreachable) || StatusOf(err) == http.StatusServiceUnavailable
}
