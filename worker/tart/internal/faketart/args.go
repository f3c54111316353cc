package main

import (
	"fmt"
	"strconv"
	"strings"
)

// option is one named argument of a subcommand, spelled as Tart's Swift
// ArgumentParser spells it: --long, optionally -s, with a value or not.
type option struct {
	long      string // without the leading dashes
	short     byte   // 0 when the option has no short name
	valueName string // "" for a flag that takes no value
	repeating bool   // may be given more than once, values accumulate
	hidden    bool   // accepted but left out of the usage line
}

// command is one tart subcommand: its arguments and what it does.
type command struct {
	name        string
	positionals []string // value names, in order
	variadic    bool     // the last positional takes one or more values
	options     []option
	run         func(env *environment, inv *invocation) error
}

// invocation is a parsed command line.
type invocation struct {
	cmd    *command
	args   []string            // positionals
	values map[string][]string // option long name -> values ("" for flags)
}

// usageError is an ArgumentParser ValidationError or parse error: exit 64,
// "Error: msg", the usage line and a pointer to --help.
type usageError struct {
	cmd *command // nil for the root command
	msg string
}

func (e *usageError) Error() string { return e.msg }

// runtimeError is Tart's RuntimeError: printed without a prefix, exit 2 for
// the VM-does-not-exist/not-running/already-running family, 1 otherwise.
type runtimeError struct {
	code int
	msg  string
}

func (e *runtimeError) Error() string { return e.msg }

func vmDoesNotExist(name string) error {
	return &runtimeError{code: 2, msg: `the specified VM "` + name + `" does not exist`}
}

// helpRequested is returned by parse for --help and -h.
type helpRequested struct{ cmd *command }

func (helpRequested) Error() string { return "help requested" }

// parse reads argv (everything after the subcommand name) the way
// ArgumentParser does: options and positionals may interleave, "--" ends
// the options, --opt=value and --opt value are both accepted, a value may
// not look like an option, unknown options and surplus or missing
// positionals are usage errors.
func (c *command) parse(argv []string) (*invocation, error) {
	inv := &invocation{cmd: c, values: map[string][]string{}}
	terminated := false
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if terminated || a == "-" || !strings.HasPrefix(a, "-") {
			inv.args = append(inv.args, a)
			continue
		}
		if a == "--" {
			terminated = true
			continue
		}
		if a == "--help" || a == "-h" {
			return nil, helpRequested{cmd: c}
		}
		if strings.HasPrefix(a, "--") {
			name, value, hasValue := strings.Cut(a[2:], "=")
			opt := c.lookupLong(name)
			if opt == nil {
				return nil, &usageError{cmd: c, msg: c.unknownOption("--" + name)}
			}
			if opt.valueName == "" {
				if hasValue {
					return nil, &usageError{cmd: c, msg: fmt.Sprintf("The option '--%s' does not take any value, but '%s' was specified.", name, value)}
				}
				inv.values[opt.long] = append(inv.values[opt.long], "")
				continue
			}
			if !hasValue {
				if i+1 >= len(argv) || looksLikeOption(argv[i+1]) {
					return nil, &usageError{cmd: c, msg: fmt.Sprintf("Missing value for '--%s <%s>'", opt.long, opt.valueName)}
				}
				i++
				value = argv[i]
			}
			inv.set(opt, value)
			continue
		}
		// A cluster of short options such as -q or -t 5.
		for j := 1; j < len(a); j++ {
			opt := c.lookupShort(a[j])
			if opt == nil {
				return nil, &usageError{cmd: c, msg: fmt.Sprintf("Unknown option '-%c'", a[j])}
			}
			if opt.valueName == "" {
				inv.values[opt.long] = append(inv.values[opt.long], "")
				continue
			}
			if j != len(a)-1 || i+1 >= len(argv) || looksLikeOption(argv[i+1]) {
				return nil, &usageError{cmd: c, msg: fmt.Sprintf("Missing value for '-%c <%s>'", a[j], opt.valueName)}
			}
			i++
			inv.set(opt, argv[i])
		}
	}

	if len(inv.args) < len(c.positionals) {
		missing := "<" + c.positionals[len(inv.args)] + ">"
		if c.variadic && len(inv.args) == len(c.positionals)-1 {
			missing += " ..."
		}
		return nil, &usageError{cmd: c, msg: fmt.Sprintf("Missing expected argument '%s'", missing)}
	}
	if !c.variadic && len(inv.args) > len(c.positionals) {
		extra := inv.args[len(c.positionals):]
		if len(extra) == 1 {
			return nil, &usageError{cmd: c, msg: fmt.Sprintf("Unexpected argument '%s'", extra[0])}
		}
		return nil, &usageError{cmd: c, msg: fmt.Sprintf("%d unexpected arguments: '%s'", len(extra), strings.Join(extra, "', '"))}
	}
	return inv, nil
}

func (inv *invocation) set(opt *option, value string) {
	if opt.repeating {
		inv.values[opt.long] = append(inv.values[opt.long], value)
		return
	}
	inv.values[opt.long] = []string{value} // the last one wins, as in ArgumentParser
}

func looksLikeOption(s string) bool { return len(s) > 1 && s[0] == '-' }

func (c *command) lookupLong(name string) *option {
	for i := range c.options {
		if c.options[i].long == name {
			return &c.options[i]
		}
	}
	return nil
}

func (c *command) lookupShort(b byte) *option {
	for i := range c.options {
		if c.options[i].short != 0 && c.options[i].short == b {
			return &c.options[i]
		}
	}
	return nil
}

// unknownOption words the error like ArgumentParser, which suggests a long
// option within an edit distance of 3.
func (c *command) unknownOption(name string) string {
	best, bestDistance := "", 4
	for _, o := range c.options {
		if o.hidden {
			continue
		}
		if d := editDistance("--"+o.long, name); d < bestDistance {
			best, bestDistance = "--"+o.long, d
		}
	}
	if best != "" {
		return fmt.Sprintf("Unknown option '%s'. Did you mean '%s'?", name, best)
	}
	return fmt.Sprintf("Unknown option '%s'", name)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// usage is the synopsis line ArgumentParser prints: positionals first as
// Tart declares them, then options; with more than 12 it abbreviates.
func (c *command) usage() string {
	var parts []string
	for i, p := range c.positionals {
		s := "<" + p + ">"
		if c.variadic && i == len(c.positionals)-1 {
			s += " ..."
		}
		parts = append(parts, s)
	}
	var opts []string
	for _, o := range c.options {
		if o.hidden {
			continue
		}
		s := "--" + o.long
		if o.valueName != "" {
			s += " <" + o.valueName + ">"
		}
		if o.repeating {
			s += " ..."
		}
		opts = append(opts, "["+s+"]")
	}
	if len(opts)+len(parts) > 12 {
		return "tart " + c.name + " [<options>] " + strings.Join(parts, " ")
	}
	return strings.TrimSpace("tart " + c.name + " " + strings.Join(append(parts, opts...), " "))
}

func (inv *invocation) flag(name string) bool { return len(inv.values[name]) > 0 }

func (inv *invocation) value(name string) (string, bool) {
	v := inv.values[name]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// uint parses an unsigned option of the given bit size (Swift's UInt16,
// UInt64...), returning def when absent and a usage error when malformed.
func (inv *invocation) uint(name string, bits int, def uint64) (uint64, bool, error) {
	s, ok := inv.value(name)
	if !ok {
		return def, false, nil
	}
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		return 0, false, inv.invalidValue(name, s, "")
	}
	return n, true, nil
}

// oneOf checks an enumerated option (ExpressibleByArgument enums).
func (inv *invocation) oneOf(name, def string, allowed ...string) (string, error) {
	s, ok := inv.value(name)
	if !ok {
		return def, nil
	}
	for _, a := range allowed {
		if s == a {
			return s, nil
		}
	}
	quoted := make([]string, len(allowed))
	for i, a := range allowed {
		quoted[i] = "'" + a + "'"
	}
	list := strings.Join(quoted, " and ")
	if len(quoted) > 2 {
		list = strings.Join(quoted[:len(quoted)-1], ", ") + " or " + quoted[len(quoted)-1]
	}
	return "", inv.invalidValue(name, s, ". Please provide one of "+list+".")
}

func (inv *invocation) invalidValue(name, value, suffix string) error {
	valueName := name
	if o := inv.cmd.lookupLong(name); o != nil {
		valueName = o.valueName
	}
	return &usageError{cmd: inv.cmd, msg: fmt.Sprintf("The value '%s' is invalid for '--%s <%s>'%s", value, name, valueName, suffix)}
}
