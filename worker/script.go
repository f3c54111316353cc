package worker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/tunnel"
)

// runStartupScript runs the VM's startup script over SSH, as Orchard
// does: the login shell reads "set -e", the script's environment as
// exports, and the script from stdin. Its output becomes the VM's log. It
// waits up to the boot timeout for the VM to accept SSH.
func (i *instance) runStartupScript(ctx context.Context, vm *v1.VM) error {
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, k := range slices.Sorted(maps.Keys(vm.StartupScript.Env)) {
		fmt.Fprintf(&script, "export %s=%s\n", k, shellQuote(vm.StartupScript.Env[k]))
	}
	script.WriteString(vm.StartupScript.ScriptContent)
	script.WriteString("\nexit\n")

	out := &logWriter{emit: func(lines []string) {
		now := time.Now().Unix()
		events := make([]v1.Event, len(lines))
		for n, l := range lines {
			events[n] = v1.Event{Kind: v1.EventKindLogLine, Timestamp: now, Payload: l}
		}
		i.w.out.log(vm, events)
	}}
	defer out.flush()
	login := tunnel.SSHLogin{User: vm.Username, Password: vm.Password}
	deadline := time.Now().Add(i.w.cfg.BootTimeout)
	for {
		err := i.sshOnce(ctx, login, tunnel.SSHCommand{Stdin: strings.NewReader(script.String()), Stdout: out, Stderr: out})
		var connect *tunnel.ConnectError
		if !errors.As(err, &connect) && !errors.Is(err, errNoSSH) {
			return err // it ran: nil, an exit status, or a lost session
		}
		if connect != nil && connect.AuthFailed() {
			return fmt.Errorf("the VM refused the SSH login of %q: check the VM's username and password", vm.Username)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the VM did not accept SSH within %s: %w", i.w.cfg.BootTimeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

var errNoSSH = errors.New("the VM's SSH port does not accept connections yet")

func (i *instance) sshOnce(ctx context.Context, login tunnel.SSHLogin, cmd tunnel.SSHCommand) error {
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := i.w.cfg.Driver.Dial(dialCtx, i.name, 22)
	cancel()
	if err != nil {
		return fmt.Errorf("%w: %v", errNoSSH, err)
	}
	return tunnel.RunSSH(ctx, conn, login, cmd)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// logWriter turns a byte stream into whole lines, handed to emit once per
// Write (so a chunk of output is one batch of events). A partial last
// line waits for its end, or for flush.
type logWriter struct {
	mu      sync.Mutex
	partial []byte
	emit    func(lines []string)
}

// maxLine splits runaway lines so that one event stays small.
const maxLine = 16 << 10

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	var lines []string
	for {
		i := strings.IndexByte(string(w.partial), '\n')
		if i < 0 {
			if len(w.partial) >= maxLine {
				lines = append(lines, string(w.partial[:maxLine]))
				w.partial = w.partial[maxLine:]
				continue
			}
			break
		}
		lines = append(lines, strings.TrimSuffix(string(w.partial[:i]), "\r"))
		w.partial = w.partial[i+1:]
	}
	if len(lines) > 0 {
		w.emit(lines)
	}
	return len(p), nil
}

func (w *logWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.partial) > 0 {
		w.emit([]string{string(w.partial)})
		w.partial = nil
	}
}
