package tart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// Conditions a failed tart command can report, for errors.Is on an *Error.
var (
	// ErrNotExist: the VM named does not exist (exit 2; exit 1 from run).
	ErrNotExist = errors.New("tart: VM does not exist")
	// ErrNotRunning: stop, suspend or exec of a VM that is not running.
	ErrNotRunning = errors.New("tart: VM is not running")
	// ErrAlreadyRunning: run of a VM another process is running.
	ErrAlreadyRunning = errors.New("tart: VM is already running")
	// ErrNoIPAddress: tart ip found no address (yet).
	ErrNoIPAddress = errors.New("tart: no IP address found")
)

// Error is a tart command that failed: what ran, how it exited, and what
// it said on stderr. It never holds the environment, where registry
// credentials live.
type Error struct {
	Args     []string // tart's arguments, without the binary
	ExitCode int      // -1 when tart did not exit on its own (a signal)
	Stderr   string   // trimmed, lines joined with "; "
	Err      error    // *exec.ExitError, a context error, or why it could not start
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("tart")
	for _, a := range e.Args {
		b.WriteByte(' ')
		b.WriteString(quoteArg(a))
	}
	b.WriteString(": ")
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString("exit status " + strconv.Itoa(e.ExitCode))
	}
	if e.Stderr != "" {
		b.WriteString(": ")
		b.WriteString(e.Stderr)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinel errors by exit code and message, as Tart
// distinguishes them only so.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotExist:
		return (e.ExitCode == 2 || e.ExitCode == 1) &&
			strings.Contains(e.Stderr, `the specified VM "`) && strings.Contains(e.Stderr, `" does not exist`)
	case ErrNotRunning:
		return e.ExitCode == 2 && strings.Contains(e.Stderr, `" is not running`)
	case ErrAlreadyRunning:
		return e.ExitCode == 2 && strings.Contains(e.Stderr, `" is already running`)
	case ErrNoIPAddress:
		return e.ExitCode == 1 && strings.HasPrefix(e.Stderr, "no IP address found")
	}
	return false
}

func quoteArg(a string) string {
	if a == "" || strings.ContainsAny(a, " \t\n\"'\\") {
		return strconv.Quote(a)
	}
	return a
}

// newCmd prepares one tart invocation. Cancelling ctx interrupts tart
// (SIGINT, as Ctrl-C would: Tart then cleans up) and kills it only if it
// is still there InterruptGrace later.
func (d *Driver) newCmd(ctx context.Context, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.binary, args...)
	cmd.Env = d.env
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = d.opts.InterruptGrace
	ownProcessGroup(cmd)
	return cmd
}

// command runs tart to completion and returns its stdout. onLine, when
// set, receives each stdout line as it arrives.
func (d *Driver) command(ctx context.Context, onLine func(string), args ...string) (string, error) {
	cmd := d.newCmd(ctx, args)
	stdout := &lineWriter{onLine: onLine, limit: stdoutLimit}
	stderr := &lineWriter{limit: stderrLimit}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	d.log.Debug("running tart", "args", args)
	err := cmd.Run()
	stdout.Close()
	if err != nil {
		return stdout.String(), commandError(ctx, args, err, stderr.String())
	}
	return stdout.String(), nil
}

// commandError wraps how a tart command failed.
func commandError(ctx context.Context, args []string, err error, stderr string) *Error {
	e := &Error{Args: args, ExitCode: -1, Stderr: cleanStderr(stderr), Err: err}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		e.ExitCode = exitErr.ExitCode()
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		e.Err = fmt.Errorf("%w: %w", ctxErr, err)
	}
	return e
}

// cleanStderr keeps the last few KiB of tart's stderr on one line.
func cleanStderr(s string) string {
	const max = 4 << 10
	if len(s) > max {
		s = "..." + s[len(s)-max:]
	}
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}

// lineWriter splits a stream into lines for onLine and keeps the newest
// limit bytes it saw (none when limit is 0).
type lineWriter struct {
	onLine func(string)
	limit  int

	mu      sync.Mutex
	partial []byte
	kept    bytes.Buffer
}

// How much output a driver keeps: all of a command's stdout (tart list
// of thousands of VMs is a few MiB), the tail of stderr for errors.
const (
	stdoutLimit = 64 << 20
	stderrLimit = 64 << 10
	maxLine     = 64 << 10
)

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.limit > 0 {
		w.kept.Write(p)
		if over := w.kept.Len() - w.limit; over > 0 {
			tail := append([]byte(nil), w.kept.Bytes()[over:]...)
			w.kept.Reset()
			w.kept.Write(tail)
		}
	}
	if w.onLine == nil {
		return len(p), nil
	}
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimRight(string(w.partial[:i]), "\r")
		w.partial = w.partial[i+1:]
		w.onLine(line)
	}
	if len(w.partial) > maxLine { // a "line" that never ends is cut up
		w.onLine(string(w.partial))
		w.partial = nil
	}
	return len(p), nil
}

// Close hands a last unterminated line to onLine.
func (w *lineWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.onLine != nil && len(w.partial) > 0 {
		w.onLine(string(w.partial))
		w.partial = nil
	}
	return nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.kept.String()
}
