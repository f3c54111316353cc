package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The file is parsed here rather than by viper.ReadConfig because viper keeps
// neither line numbers nor the keys' spelling (it lower-cases them), and both
// are needed to point at a mistake. viper merges the result like any map.

const (
	// maxFileSize bounds what is read, so that --config /dev/zero fails
	// instead of filling memory.
	maxFileSize = 4 << 20
	// maxNodes bounds the values built from the file, counting every copy an
	// alias makes, so that nested aliases ("billion laughs") cannot explode.
	maxNodes = 100_000
)

// fileSource is config.yaml in raw form, with the line of every key and list
// element by its dotted path.
type fileSource struct {
	path  string
	tree  map[string]any
	lines map[string]int
}

func (f *fileSource) source() string { return "config " + f.path }

func (f *fileSource) sourceOf(key string) string {
	if line, ok := f.lines[key]; ok {
		return f.source() + ":" + strconv.Itoa(line)
	}
	return f.source()
}

func (f *fileSource) errorAt(line int, format string, args ...any) *Error {
	src := f.source()
	if line > 0 {
		src += ":" + strconv.Itoa(line)
	}
	return &Error{Source: src, text: fmt.Sprintf(format, args...)}
}

// readFile reads and parses the file at path. A missing file is an error:
// a path is only given when the operator asked for it.
func readFile(path string) (*fileSource, error) {
	f := &fileSource{path: path, tree: map[string]any{}, lines: map[string]int{}}
	data, err := readLimited(path)
	if err != nil {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err
		}
		e := f.errorAt(0, "cannot read: %v", err)
		if errors.Is(err, fs.ErrNotExist) {
			e = f.errorAt(0, "file does not exist")
		}
		e.err = err
		return nil, e
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return f, nil // an empty file sets nothing
		}
		return nil, f.syntaxError(err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, f.errorAt(extra.Line, "a second YAML document starts here; config.yaml holds one")
	case !errors.Is(err, io.EOF):
		return nil, f.syntaxError(err)
	}

	if len(doc.Content) == 0 {
		return f, nil
	}
	conv := converter{file: f, budget: maxNodes, expanding: map[*yaml.Node]bool{}}
	top := doc.Content[0]
	raw := conv.value(top, "")
	if conv.err != nil {
		return nil, conv.err
	}
	switch raw := raw.(type) {
	case nil: // "~" or "null": nothing set
	case map[string]any:
		f.tree = raw
	default:
		return nil, f.errorAt(top.Line, "want a mapping of sections (controller:, log:, ...) at the top, got %s", describeRaw(raw))
	}
	return f, nil
}

func readLimited(path string) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("larger than %d MiB; is this the right file?", maxFileSize>>20)
	}
	return data, nil
}

var yamlLineError = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (f *fileSource) syntaxError(err error) *Error {
	if m := yamlLineError.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return f.errorAt(line, "YAML syntax error: %s", m[2])
	}
	msg, _ := strings.CutPrefix(err.Error(), "yaml: ")
	return f.errorAt(0, "YAML syntax error: %s", msg)
}

// converter turns YAML nodes into raw values: a scalar's text, []any for a
// sequence, map[string]any for a mapping. A null is "not set" (nil), so that
// "data_dir:" with nothing after it means the default. Aliases are expanded
// and merge keys (<<) applied, as yaml.Unmarshal would.
type converter struct {
	file      *fileSource
	budget    int
	expanding map[*yaml.Node]bool // anchors being expanded, to catch cycles
	aliasLine int                 // the line of the outermost alias being expanded
	err       *Error              // the first problem; conversion stops there
}

func (c *converter) fail(line int, format string, args ...any) {
	if c.err == nil {
		c.err = c.file.errorAt(line, format, args...)
	}
}

func (c *converter) value(n *yaml.Node, path string) any {
	if c.err != nil {
		return nil
	}
	if c.budget--; c.budget < 0 {
		line := n.Line
		if len(c.expanding) > 0 {
			line = c.aliasLine // blame the alias, not the anchored value far above
		}
		c.fail(line, "more than %d values once aliases are expanded", maxNodes)
		return nil
	}
	switch n.Kind {
	case yaml.AliasNode:
		if c.expanding[n.Alias] {
			c.fail(n.Line, "alias *%s refers to the value that contains it", n.Value)
			return nil
		}
		if len(c.expanding) == 0 {
			c.aliasLine = n.Line
		}
		c.expanding[n.Alias] = true
		defer delete(c.expanding, n.Alias)
		return c.value(n.Alias, path)
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return nil
		}
		return n.Value
	case yaml.SequenceNode:
		list := make([]any, len(n.Content))
		for i, item := range n.Content {
			key := indexKey(path, i)
			c.file.lines[key] = item.Line
			list[i] = c.value(item, key)
		}
		return list
	case yaml.MappingNode:
		return c.mapping(n, path)
	}
	c.fail(n.Line, "unexpected YAML node")
	return nil
}

// mapping converts a mapping. Its own keys win over merged ones (<<: *base),
// and of several merged mappings the first wins, as in YAML's merge key.
func (c *converter) mapping(n *yaml.Node, path string) map[string]any {
	out := make(map[string]any)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, n.Content[i+1])
		}
	}
	for i := len(merges) - 1; i >= 0; i-- {
		c.merge(out, merges[i], path)
	}

	firstLine := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			c.fail(k.Line, "a key must be a plain name, not %s", describeKind(k))
			return out
		}
		name := k.Value
		if first, dup := firstLine[name]; dup {
			c.fail(k.Line, "duplicate key %q (first at line %d)", joinKey(path, name), first)
			return out
		}
		firstLine[name] = k.Line
		key := joinKey(path, name)
		c.file.lines[key] = k.Line
		if raw := c.value(v, key); raw != nil {
			out[name] = raw
		} else {
			delete(out, name) // an explicit null overrides a merged value too
		}
	}
	return out
}

func (c *converter) merge(out map[string]any, n *yaml.Node, path string) {
	target := n
	if target.Kind == yaml.AliasNode {
		target = target.Alias
	}
	if target.Kind == yaml.SequenceNode {
		for i := len(target.Content) - 1; i >= 0; i-- {
			item := target.Content[i]
			if item.Kind == yaml.SequenceNode {
				c.fail(item.Line, "<< merges a mapping or a list of mappings, not a list of lists")
				return
			}
			c.merge(out, item, path)
		}
		return
	}
	raw, ok := c.value(n, path).(map[string]any)
	if !ok {
		c.fail(n.Line, "<< merges a mapping or a list of mappings, not %s", describeKind(target))
		return
	}
	for k, v := range raw {
		out[k] = v
	}
}

func describeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias"
	}
	return "a single value"
}
