package config

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file maps between the Go structs and the "raw" form every source is
// turned into: nested map[string]any for sections, []any for lists and the
// value's text (a string) for every scalar. Text is the common ground of a
// YAML scalar, an environment variable and a flag's value, so one parser per
// Go type serves all three.
//
// The structs describe themselves: the `config` tag of each field is its key,
// and the Go type says how its text parses. Supported field types are
// structs (sections), string, bool, integers, floats, time.Duration, and
// slices of those or of structs.

var durationType = reflect.TypeFor[time.Duration]()

// keyError is a problem with the value at key (a full dotted path such as
// "controller.tls.cert_file" or "autoscaler.pools[0].cpu"). Load adds where
// the value came from.
type keyError struct {
	key     string
	message string // the whole text after the source, key included
}

// structField is one tagged field of a config struct.
type structField struct {
	key   string
	index int
}

// fieldsOf lists t's fields by their config keys. A field without a tag is a
// mistake in this package, caught by every test that loads a config.
func fieldsOf(t reflect.Type) []structField {
	var fields []structField
	for i := range t.NumField() {
		f := t.Field(i)
		key := f.Tag.Get("config")
		if key == "" || !f.IsExported() {
			panic(fmt.Sprintf("config: field %s.%s needs an exported name and a `config` tag", t.Name(), f.Name))
		}
		checkSupported(f.Type, t.Name()+"."+f.Name)
		fields = append(fields, structField{key: key, index: i})
	}
	return fields
}

func checkSupported(t reflect.Type, where string) {
	switch {
	case isScalar(t), t.Kind() == reflect.Struct:
	case t.Kind() == reflect.Slice && (isScalar(t.Elem()) || t.Elem().Kind() == reflect.Struct):
	default:
		panic(fmt.Sprintf("config: field %s has unsupported type %s", where, t))
	}
}

func isScalar(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.String, reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

// leaf is a key that holds a value rather than a section: a scalar, or a list
// (which only the file can set).
type leaf struct {
	key  string
	list bool
}

// leavesOf lists every leaf under t, with keys prefixed by prefix.
func leavesOf(t reflect.Type, prefix string) []leaf {
	var leaves []leaf
	for _, f := range fieldsOf(t) {
		key := joinKey(prefix, f.key)
		ft := t.Field(f.index).Type
		switch {
		case ft.Kind() == reflect.Struct:
			leaves = append(leaves, leavesOf(ft, key)...)
		case ft.Kind() == reflect.Slice:
			leaves = append(leaves, leaf{key: key, list: true})
		default:
			leaves = append(leaves, leaf{key: key})
		}
	}
	return leaves
}

func joinKey(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func indexKey(prefix string, i int) string {
	return prefix + "[" + strconv.Itoa(i) + "]"
}

// elementDefaulter is implemented (on the pointer) by struct types used in
// lists whose elements have defaults: a new element gets them before the
// file's keys are decoded onto it.
type elementDefaulter interface {
	applyDefaults()
}

// decoder fills Go values from raw values, collecting every problem.
type decoder struct {
	errs []keyError
}

func (d *decoder) fail(key, format string, args ...any) {
	d.errs = append(d.errs, keyError{key: key, message: key + ": " + fmt.Sprintf(format, args...)})
}

// decode sets dst from raw, the value at key.
func (d *decoder) decode(dst reflect.Value, raw any, key string) {
	t := dst.Type()
	switch {
	case t.Kind() == reflect.Struct:
		m, ok := raw.(map[string]any)
		if !ok {
			d.fail(key, "want a mapping of keys, got %s", describeRaw(raw))
			return
		}
		d.decodeStruct(dst, m, key)
	case t.Kind() == reflect.Slice:
		list, ok := raw.([]any)
		if !ok {
			d.fail(key, "want a list, got %s", describeRaw(raw))
			return
		}
		d.decodeList(dst, list, key)
	default:
		text, ok := raw.(string)
		if !ok {
			d.fail(key, "want %s, got %s", describeType(t), describeRaw(raw))
			return
		}
		if err := parseScalar(dst, text); err != nil {
			d.fail(key, "%v", err)
		}
	}
}

func (d *decoder) decodeStruct(dst reflect.Value, m map[string]any, key string) {
	fields := fieldsOf(dst.Type())
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		i := slices.IndexFunc(fields, func(f structField) bool { return f.key == name })
		if i < 0 {
			full := joinKey(key, name)
			msg := fmt.Sprintf("unknown key %q", full)
			if near := nearest(name, fieldKeys(fields)); near != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", joinKey(key, near))
			}
			d.errs = append(d.errs, keyError{key: full, message: msg})
			continue
		}
		d.decode(dst.Field(fields[i].index), m[name], joinKey(key, name))
	}
}

func (d *decoder) decodeList(dst reflect.Value, list []any, key string) {
	if len(list) == 0 {
		dst.SetZero()
		return
	}
	out := reflect.MakeSlice(dst.Type(), len(list), len(list))
	for i, raw := range list {
		elem := out.Index(i)
		if defaulter, ok := elem.Addr().Interface().(elementDefaulter); ok {
			defaulter.applyDefaults()
		}
		d.decode(elem, raw, indexKey(key, i))
	}
	dst.Set(out)
}

func fieldKeys(fields []structField) []string {
	keys := make([]string, len(fields))
	for i, f := range fields {
		keys[i] = f.key
	}
	return keys
}

// parseScalar sets dst, a scalar, from its text. Integers are decimal only:
// a YAML-style 0755 or 0x1F is more likely a slip than a wish.
func parseScalar(dst reflect.Value, text string) error {
	if dst.Type() == durationType {
		d, err := time.ParseDuration(text)
		if err != nil {
			return fmt.Errorf("%q is not a duration (e.g. 90s, 3m)", text)
		}
		dst.SetInt(int64(d))
		return nil
	}
	switch dst.Kind() {
	case reflect.String:
		dst.SetString(text)
	case reflect.Bool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return fmt.Errorf("%q is not a boolean (want true or false)", text)
		}
		dst.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(text, 10, dst.Type().Bits())
		if err != nil {
			return numberError(text, err, "a whole number")
		}
		dst.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(text, 10, dst.Type().Bits())
		if err != nil {
			return numberError(text, err, "a whole number of 0 or more")
		}
		dst.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(text, dst.Type().Bits())
		if err == nil && (math.IsNaN(f) || math.IsInf(f, 0)) {
			return fmt.Errorf("%q is not a finite number", text)
		}
		if err != nil {
			return numberError(text, err, "a number")
		}
		dst.SetFloat(f)
	}
	return nil
}

func numberError(text string, err error, want string) error {
	if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
		return fmt.Errorf("%q is out of range", text)
	}
	return fmt.Errorf("%q is not %s", text, want)
}

// describeType names what a scalar of type t looks like, for "want ..." messages.
func describeType(t reflect.Type) string {
	if t == durationType {
		return "a duration"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Float32, reflect.Float64:
		return "a number"
	default:
		return "a whole number"
	}
}

// describeRaw names the shape of a raw value without showing it: it may be
// a secret.
func describeRaw(raw any) string {
	switch raw.(type) {
	case nil:
		return "null"
	case string:
		return "a single value"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", raw)
}

// encode turns v into its raw form: the inverse of decode.
func encode(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Struct:
		m := make(map[string]any)
		for _, f := range fieldsOf(v.Type()) {
			m[f.key] = encode(v.Field(f.index))
		}
		return m
	case reflect.Slice:
		list := make([]any, v.Len())
		for i := range list {
			list[i] = encode(v.Index(i))
		}
		return list
	}
	if v.Type() == durationType {
		return time.Duration(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Float32, reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, v.Type().Bits())
	}
	return v.String()
}

// rawAt returns the raw value at a dotted key of a raw tree, if present.
func rawAt(tree map[string]any, key string) (any, bool) {
	var node any = tree
	for part := range strings.SplitSeq(key, ".") {
		m, ok := node.(map[string]any)
		if !ok {
			return nil, false
		}
		if node, ok = m[part]; !ok {
			return nil, false
		}
	}
	return node, true
}

// setRaw sets the raw value at a dotted key, creating sections on the way.
func setRaw(tree map[string]any, key string, value any) {
	parts := strings.Split(key, ".")
	m := tree
	for _, part := range parts[:len(parts)-1] {
		next, ok := m[part].(map[string]any)
		if !ok {
			next = make(map[string]any)
			m[part] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = value
}

// validator is implemented by config structs whose values have rules beyond
// their type. Keys given to check are relative to the struct.
type validator interface {
	validate(check checks)
}

// checks collects validation problems under one struct's key.
type checks struct {
	prefix string
	found  *[]keyError
}

func (c checks) fail(key, format string, args ...any) {
	full := joinKey(c.prefix, key)
	*c.found = append(*c.found, keyError{key: full, message: full + ": " + fmt.Sprintf(format, args...)})
}

// validateValue runs every validator in v, sections and list elements
// alike, outermost first.
func validateValue(v reflect.Value, key string, found *[]keyError) {
	switch v.Kind() {
	case reflect.Struct:
		if val, ok := v.Interface().(validator); ok {
			val.validate(checks{prefix: key, found: found})
		}
		for _, f := range fieldsOf(v.Type()) {
			validateValue(v.Field(f.index), joinKey(key, f.key), found)
		}
	case reflect.Slice:
		for i := range v.Len() {
			validateValue(v.Index(i), indexKey(key, i), found)
		}
	}
}

// nearest returns the candidate a typo most likely meant, or "".
func nearest(name string, candidates []string) string {
	best, bestDist := "", 0
	for _, c := range candidates {
		d := editDistance(strings.ToLower(name), strings.ToLower(c))
		if d <= max(2, len(c)/4) && (best == "" || d < bestDist) {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
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
