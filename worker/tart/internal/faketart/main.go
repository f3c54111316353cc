package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
)

// environment is what a command runs with: TART_HOME, the process
// environment, the output streams and a context cancelled by SIGINT.
type environment struct {
	ctx    context.Context
	home   home
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
}

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(argv []string, getenv func(string) string, stdout, stderr io.Writer) int {
	h, err := openHome(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	logInvocation(h, argv, getenv)

	cmds := commands()
	if len(argv) == 0 || argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help" {
		fmt.Fprintln(stdout, rootHelp(cmds))
		return 0
	}
	if argv[0] == "--version" {
		v := getenv("FAKETART_VERSION")
		if v == "" {
			v = "2.32.1"
		}
		fmt.Fprintln(stdout, v)
		return 0
	}
	var cmd *command
	for i := range cmds {
		if cmds[i].name == argv[0] {
			cmd = &cmds[i]
		}
	}
	if cmd == nil {
		msg := fmt.Sprintf("Unexpected argument '%s'", argv[0])
		if looksLikeOption(argv[0]) {
			msg = fmt.Sprintf("Unknown option '%s'", argv[0])
		}
		return report(stderr, &usageError{msg: msg})
	}

	inv, err := cmd.parse(argv[1:])
	var help helpRequested
	if errors.As(err, &help) {
		fmt.Fprintf(stdout, "USAGE: %s\n", cmd.usage())
		return 0
	}
	if err != nil {
		return report(stderr, err)
	}

	// Tart cancels the running command on SIGINT; `run` installs its own
	// handling, everything else sees a cancelled context.
	ctx := context.Background()
	if cmd.name != "run" {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt)
		defer stop()
	}
	if cmd.name != "pull" && cmd.name != "clone" {
		h.gc()
	}
	env := &environment{ctx: ctx, home: h, getenv: getenv, stdout: stdout, stderr: stderr}
	return report(stderr, cmd.run(env, inv))
}

// report prints err the way Tart's Root does and returns the exit code.
func report(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var usage *usageError
	var rt *runtimeError
	var status exitStatus
	switch {
	case errors.As(err, &status):
		return int(status)
	case errors.As(err, &usage):
		synopsis, name := "tart <subcommand>", ""
		if usage.cmd != nil {
			synopsis, name = usage.cmd.usage(), " "+usage.cmd.name
		}
		fmt.Fprintf(stderr, "Error: %s\nUsage: %s\n  See 'tart%s --help' for more information.\n", usage.msg, synopsis, name)
		return 64
	case errors.As(err, &rt):
		fmt.Fprintf(stderr, "%s\n", rt.msg)
		return rt.code
	default:
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
}

func rootHelp(cmds []command) string {
	var b strings.Builder
	b.WriteString("OVERVIEW: faketart, a test double of Tart\n\nUSAGE: tart <subcommand>\n\nSUBCOMMANDS:\n")
	for _, c := range cmds {
		if c.name != "fqn" {
			fmt.Fprintf(&b, "  %s\n", c.name)
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

// logInvocation appends one JSON line per invocation to
// faketart/invocations.log so that tests can see what their driver ran.
// Only whether CI is set is recorded from the environment, never values.
func logInvocation(h home, argv []string, getenv func(string) string) {
	if err := os.MkdirAll(h.fakeDir(), 0o755); err != nil {
		return
	}
	line, err := json.Marshal(struct {
		Args []string `json:"args"`
		PID  int      `json:"pid"`
		CI   bool     `json:"ci"`
	}{Args: append([]string{}, argv...), PID: os.Getpid(), CI: getenv("CI") != ""})
	if err != nil {
		return
	}
	f, err := os.OpenFile(filepath.Join(h.fakeDir(), "invocations.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	f.Write(append(line, '\n')) // one write: O_APPEND keeps lines whole
}

// commands is Tart's subcommand table with exactly the flags Tart has.
func commands() []command {
	return []command{
		{name: "create", positionals: []string{"name"}, run: runCreate, options: []option{
			{long: "from-ipsw", valueName: "path"},
			{long: "linux"},
			{long: "disk-size", valueName: "disk-size"},
			{long: "disk-format", valueName: "disk-format"},
		}},
		{name: "clone", positionals: []string{"source-name", "new-name"}, run: runClone, options: []option{
			{long: "insecure"},
			{long: "concurrency", valueName: "concurrency"},
			{long: "prune-limit", valueName: "n"},
			{long: "deduplicate", hidden: true},
		}},
		{name: "run", positionals: []string{"name"}, run: runRun, options: []option{
			{long: "no-graphics"},
			{long: "serial"},
			{long: "serial-path", valueName: "serial-path"},
			{long: "graphics", hidden: true},
			{long: "no-audio"},
			{long: "no-clipboard"},
			{long: "recovery"},
			{long: "vnc"},
			{long: "vnc-experimental"},
			{long: "disk", valueName: "path[:ro]", repeating: true},
			{long: "rosetta", valueName: "tag"},
			{long: "dir", valueName: "[name:]path[:options]", repeating: true},
			{long: "nested"},
			{long: "net-bridged", valueName: "interface name", repeating: true},
			{long: "net-softnet"},
			{long: "net-softnet-allow", valueName: "comma-separated CIDRs"},
			{long: "net-softnet-block", valueName: "comma-separated CIDRs"},
			{long: "net-softnet-expose", valueName: "comma-separated port specifications"},
			{long: "net-host"},
			{long: "root-disk-opts", valueName: "options"},
			{long: "suspendable"},
			{long: "capture-system-keys"},
			{long: "no-trackpad"},
			{long: "no-pointer"},
			{long: "no-keyboard"},
		}},
		{name: "set", positionals: []string{"name"}, run: runSet, options: []option{
			{long: "cpu", valueName: "cpu"},
			{long: "memory", valueName: "memory"},
			{long: "display", valueName: "display"},
			{long: "display-refit"},
			{long: "no-display-refit"},
			{long: "random-mac"},
			{long: "random-serial"},
			{long: "disk", valueName: "path"},
			{long: "disk-size", valueName: "disk-size"},
		}},
		{name: "get", positionals: []string{"name"}, run: runGet, options: []option{
			{long: "format", valueName: "format"},
		}},
		{name: "list", run: runList, options: []option{
			{long: "source", valueName: "source"},
			{long: "format", valueName: "format"},
			{long: "quiet", short: 'q'},
		}},
		{name: "login", positionals: []string{"host"}, run: notEmulated, options: []option{
			{long: "username", valueName: "username"},
			{long: "password-stdin"},
			{long: "insecure"},
			{long: "no-validate"},
		}},
		{name: "logout", positionals: []string{"host"}, run: notEmulated},
		{name: "ip", positionals: []string{"name"}, run: runIP, options: []option{
			{long: "wait", valueName: "wait"},
			{long: "resolver", valueName: "resolver"},
		}},
		{name: "exec", positionals: []string{"name", "command"}, variadic: true, run: notEmulated, options: []option{
			{long: "interactive", short: 'i'},
			{long: "tty", short: 't'},
		}},
		{name: "pull", positionals: []string{"remote-name"}, run: runPull, options: []option{
			{long: "insecure"},
			{long: "concurrency", valueName: "concurrency"},
			{long: "deduplicate", hidden: true},
		}},
		{name: "push", positionals: []string{"local-name", "remote-names"}, variadic: true, run: notEmulated},
		{name: "import", positionals: []string{"path", "name"}, run: notEmulated},
		{name: "export", positionals: []string{"name", "path"}, run: notEmulated},
		{name: "prune", run: notEmulated, options: []option{
			{long: "entries", valueName: "entries"},
			{long: "older-than", valueName: "n"},
			{long: "space-budget", valueName: "n"},
			{long: "cache-budget", valueName: "n", hidden: true},
			{long: "gc", hidden: true},
		}},
		{name: "rename", positionals: []string{"name", "new-name"}, run: notEmulated},
		{name: "stop", positionals: []string{"name"}, run: runStop, options: []option{
			{long: "timeout", short: 't', valueName: "timeout"},
		}},
		{name: "delete", positionals: []string{"name"}, variadic: true, run: runDelete},
		{name: "fqn", positionals: []string{"name"}, run: runFQN},
		{name: "suspend", positionals: []string{"name"}, run: runSuspend},
	}
}

func notEmulated(_ *environment, inv *invocation) error {
	return fmt.Errorf("faketart does not emulate %q", "tart "+inv.cmd.name)
}
