package config

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// envSource is what the ORCHARD_* variables set, in raw form.
type envSource struct {
	tree  map[string]any
	names map[string]string // key -> the variable that set it
}

func (e envSource) sourceOf(key string) string { return "env " + e.names[key] }

// envName is the variable for a key: controller.tls.cert_file ->
// ORCHARD_CONTROLLER_TLS_CERT_FILE.
func envName(key string) string {
	return "ORCHARD_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// isClientVariable reports whether name is one of the CLI's own variables,
// which share the ORCHARD_ prefix but are not config keys.
func isClientVariable(name string) bool {
	switch name {
	case "ORCHARD_HOME", "ORCHARD_URL", "ORCHARD_SERVICE_ACCOUNT_NAME", "ORCHARD_SERVICE_ACCOUNT_TOKEN",
		"ORCHARD_BOOTSTRAP_ADMIN_TOKEN", "ORCHARD_CONFIG":
		return true
	}
	return false
}

// readEnv picks the config variables out of environ. A variable under a
// known section's prefix (ORCHARD_CONTROLLER_, ORCHARD_LOG_) must name a
// key, so that a typo is an error rather than a setting silently not
// applied; other ORCHARD_ variables belong to someone else and are ignored.
// An empty variable counts as unset, as in viper.
func readEnv(root reflect.Type, environ []string) (envSource, []error) {
	env := envSource{tree: map[string]any{}, names: map[string]string{}}
	byName := envNames(root)
	var sections []string
	for _, f := range fieldsOf(root) {
		if root.Field(f.index).Type.Kind() == reflect.Struct {
			sections = append(sections, envName(f.key)+"_")
		}
	}

	values := make(map[string]string)
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(name, "ORCHARD_") && !isClientVariable(name) {
			values[name] = value // the last of duplicates wins, as in os/exec
		}
	}

	var errs []error
	for _, name := range slices.Sorted(maps.Keys(values)) {
		l, known := byName[name]
		switch {
		case !known:
			i := slices.IndexFunc(sections, func(s string) bool { return strings.HasPrefix(name, s) })
			if i >= 0 {
				errs = append(errs, unknownVariable(name, sections[i], byName))
			}
		case l.list:
			errs = append(errs, &Error{Source: "env " + name, Key: l.key,
				text: fmt.Sprintf("%s is a list; set it in the config file", l.key)})
		case values[name] != "":
			setRaw(env.tree, l.key, values[name])
			env.names[l.key] = name
		}
	}
	return env, errs
}

// envNames maps each variable to its leaf. Two keys that would share a
// variable (a.b_c and a_b.c) are a mistake in the structs.
func envNames(root reflect.Type) map[string]leaf {
	byName := make(map[string]leaf)
	for _, l := range leavesOf(root, "") {
		name := envName(l.key)
		if other, dup := byName[name]; dup {
			panic(fmt.Sprintf("config: keys %q and %q both map to %s", other.key, l.key, name))
		}
		byName[name] = l
	}
	return byName
}

func unknownVariable(name, sectionPrefix string, byName map[string]leaf) error {
	var inSection []string
	for n, l := range byName {
		if strings.HasPrefix(n, sectionPrefix) && !l.list {
			inSection = append(inSection, n)
		}
	}
	slices.Sort(inSection)
	section := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(sectionPrefix, "ORCHARD_"), "_"))
	text := fmt.Sprintf("not a key of section %q", section)
	suffixes := make([]string, len(inSection))
	for i, n := range inSection {
		suffixes[i] = strings.TrimPrefix(n, sectionPrefix)
	}
	if near := nearest(strings.TrimPrefix(name, sectionPrefix), suffixes); near != "" {
		text += fmt.Sprintf(" (did you mean %s?)", sectionPrefix+near)
	} else {
		text += fmt.Sprintf(" (known: %s)", strings.Join(inSection, ", "))
	}
	return &Error{Source: "env " + name, text: text}
}

// flagSource is what the command-line flags set, in raw form.
type flagSource struct {
	tree   map[string]any
	values map[string]flagValue // key -> the flag that set it
}

func (s flagSource) sourceOf(key string) string { return s.values[key].source() }

// flagValue is a set flag's text, in the form viper binds as a flag.
type flagValue struct {
	name, text string
}

func (f flagValue) HasChanged() bool    { return true }
func (f flagValue) Name() string        { return f.name }
func (f flagValue) ValueString() string { return f.text }
func (f flagValue) ValueType() string   { return "string" }
func (f flagValue) source() string      { return "flag --" + f.name }

// readFlags takes the text of every flag in keys that was set on the command
// line. A flag that keys names but set lacks, or a key that does not exist,
// is the caller's mistake and reported as an error on every run.
func readFlags(root reflect.Type, set *pflag.FlagSet, keys map[string]string) (flagSource, []error) {
	flags := flagSource{tree: map[string]any{}, values: map[string]flagValue{}}
	if set == nil {
		return flags, nil
	}
	leaves := make(map[string]leaf)
	for _, l := range leavesOf(root, "") {
		leaves[l.key] = l
	}

	var errs []error
	for _, name := range slices.Sorted(maps.Keys(keys)) {
		key := keys[name]
		bad := func(format string, args ...any) {
			errs = append(errs, &Error{Source: "flag --" + name, Key: key, text: fmt.Sprintf(format, args...)})
		}
		f := set.Lookup(name)
		l, known := leaves[key]
		switch {
		case f == nil:
			bad("not defined, yet mapped to %s", key)
		case !known:
			bad("mapped to unknown key %q", key)
		case l.list:
			bad("%s is a list; set it in the config file", key)
		case !f.Changed:
		case flags.values[key].name != "":
			bad("%s is also set by %s; give one of them", key, flags.values[key].source())
		default:
			text := f.Value.String()
			flags.values[key] = flagValue{name: name, text: text}
			setRaw(flags.tree, key, text)
		}
	}
	return flags, errs
}
