package config

import (
	"errors"
	"reflect"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Source says where configuration comes from.
type Source struct {
	File     string            // config.yaml's path; "" = no file
	Env      []string          // os.Environ() form, "KEY=value"
	Flags    *pflag.FlagSet    // may be nil
	FlagKeys map[string]string // flag name -> config key, e.g. "listen" -> "controller.listen"; only flags that were set (Changed) apply
}

// Load reads the configuration from src on top of Default(), with flags over
// environment over file over defaults, and validates it. Every source must be
// well formed on its own (known keys, values of the right type), even where
// a higher one overrides it; the merged result must then pass Validate. The
// error, if any, lists every problem with its key and source.
func Load(src Source) (Config, error) {
	var cfg Config
	if err := load(src, reflect.ValueOf(Default()), reflect.ValueOf(&cfg).Elem()); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// load is Load for any config struct: defaults and dst are of the same
// struct type. Tests use it to exercise field types Config does not have yet.
func load(src Source, defaults, dst reflect.Value) error {
	root := dst.Type()
	var (
		layers layers
		errs   []error
	)
	if src.File != "" {
		file, err := readFile(src.File)
		if err != nil {
			return err
		}
		errs = append(errs, check(root, file.tree, file.sourceOf))
		layers.file = file
	}
	env, envErrs := readEnv(root, src.Env)
	errs = append(errs, envErrs...)
	errs = append(errs, check(root, env.tree, env.sourceOf))
	layers.env = env

	flags, flagErrs := readFlags(root, src.Flags, src.FlagKeys)
	errs = append(errs, flagErrs...)
	errs = append(errs, check(root, flags.tree, flags.sourceOf))
	layers.flags = flags
	if err := errors.Join(errs...); err != nil {
		return err
	}

	merged, err := layers.merge(defaults)
	if err != nil {
		return err
	}
	var d decoder
	d.decode(dst, merged, "")
	if len(d.errs) > 0 {
		return joinWithSource(d.errs, layers.sourceOf)
	}
	var found []keyError
	validateValue(dst, "", &found)
	return joinWithSource(found, layers.sourceOf)
}

// Error is one problem with the configuration: a bad value, an unknown key or
// a source that cannot be read. Load returns them joined (errors.Join), so
// errors.As finds the first; every line of the joined text is one Error.
type Error struct {
	// Source is where the value came from: "config PATH:LINE" (or
	// "config PATH" for the file as a whole), "env NAME", "flag --NAME" or
	// "default". Empty for Config.Validate, which knows no sources.
	Source string
	// Key is the dotted config key, e.g. "controller.listen"; empty when the
	// problem is not one key's (a YAML syntax error, an unreadable file).
	Key string
	// text is the problem, naming the key where there is one.
	text string
	// err is the underlying error, such as fs.ErrNotExist for a missing file.
	err error
}

func (e *Error) Error() string {
	if e.Source == "" {
		return e.text
	}
	return e.Source + ": " + e.text
}

func (e *Error) Unwrap() error { return e.err }

func joinWithSource(found []keyError, sourceOf func(key string) string) error {
	errs := make([]error, len(found))
	for i, f := range found {
		errs[i] = &Error{Source: sourceOf(f.key), Key: f.key, text: f.message}
	}
	return errors.Join(errs...)
}

// check decodes one source's raw tree into a scratch value of the root type,
// so that its unknown keys and malformed values are reported with their
// source even when a higher source overrides them.
func check(root reflect.Type, tree map[string]any, sourceOf func(key string) string) error {
	var d decoder
	d.decode(reflect.New(root).Elem(), tree, "")
	// The decoder walks keys alphabetically; report them in source order
	// (file lines, variable names) instead.
	slices.SortStableFunc(d.errs, func(a, b keyError) int {
		return compareSources(sourceOf(a.key), sourceOf(b.key))
	})
	return joinWithSource(d.errs, sourceOf)
}

// compareSources orders "config PATH:9" before "config PATH:10".
func compareSources(a, b string) int {
	ai, bi := strings.LastIndexByte(a, ':'), strings.LastIndexByte(b, ':')
	if ai > 0 && bi > 0 && a[:ai] == b[:bi] && len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

// layers holds what each source set, in raw form, and merges them through
// viper: defaults as viper defaults, the file and then the environment
// merged into its config map, flags bound as viper flags.
type layers struct {
	file  *fileSource
	env   envSource
	flags flagSource
}

func (l *layers) merge(defaults reflect.Value) (map[string]any, error) {
	v := viper.New()
	rawDefaults := encode(defaults).(map[string]any)
	for _, leaf := range leavesOf(defaults.Type(), "") {
		value, _ := rawAt(rawDefaults, leaf.key)
		v.SetDefault(leaf.key, value)
	}
	// viper.MergeConfigMap lower-cases keys in place; the trees are ours and
	// already checked, and every key we accept is lower case.
	if l.file != nil {
		if err := v.MergeConfigMap(l.file.tree); err != nil {
			return nil, &Error{Source: l.file.source(), text: "merge: " + err.Error()}
		}
	}
	if err := v.MergeConfigMap(l.env.tree); err != nil {
		return nil, &Error{Source: "env", text: "merge: " + err.Error()}
	}
	for key, flag := range l.flags.values {
		if err := v.BindFlagValue(key, flag); err != nil {
			return nil, &Error{Source: flag.source(), Key: key, text: "bind: " + err.Error()}
		}
	}
	return v.AllSettings(), nil
}

// sourceOf names where the merged value at key came from: the highest
// source that set it. A key inside a list element that no source set itself
// (an element default) is blamed on the nearest enclosing value the file set.
func (l *layers) sourceOf(key string) string {
	if flag, ok := l.flags.values[key]; ok {
		return flag.source()
	}
	if name, ok := l.env.names[key]; ok {
		return "env " + name
	}
	if l.file == nil {
		return "default"
	}
	for k := key; ; k = k[:strings.LastIndexAny(k, ".[")] {
		if _, ok := l.file.lines[k]; ok {
			return l.file.sourceOf(k)
		}
		if !strings.Contains(k, "[") {
			return "default" // walk up only to the list element that holds key
		}
	}
}
