package rules

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// decoder turns the YAML tree into a Config over the defaults. It walks the
// tree against the schema instead of calling yaml.v3's Decode, which words
// a type error in Go's types ("cannot unmarshal !!seq into string") and
// names no key: the walk reports every unknown key, repeated key and value
// of the wrong type, each with its line, the key's path and what to write.
// A value of the wrong type keeps its default and its path is noted as
// refused, so that Compile does not report the consequences a second time.
type decoder struct {
	file    string
	errs    ConfigErrors
	refused map[string]bool // pathString of each refused value
	// budget is how many more nodes the walk may visit. Aliases let a
	// small file name the same nodes many times over; a file without
	// them has fewer nodes than bytes, so the budget never binds it. Once
	// it has run out, the Config is incomplete and not compiled.
	budget int
}

// exhausted reports whether the walk ran out of budget.
func (d *decoder) exhausted() bool { return d.budget < 0 }

// Nodes of the document's null tag: an empty value, "~" or "null".
const nullTag = "!!null"

var patternsType = reflect.TypeFor[Patterns]()

// decode fills cfg from root, a mapping.
func (d *decoder) decode(root *yaml.Node, cfg *Config) {
	d.value(root, reflect.ValueOf(cfg).Elem(), nil)
}

// value decodes n into v, which holds the default, and reports whether it
// took n's value. An empty value keeps the default.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path []any) bool {
	if !d.spend(n) {
		return false
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == nullTag {
		return false
	}
	t := v.Type()
	switch {
	case t == patternsType && n.Kind == yaml.ScalarNode:
		v.Set(reflect.ValueOf(Patterns{n.Value}))
	case t.Kind() == reflect.Pointer:
		p := reflect.New(t.Elem())
		if !d.value(n, p.Elem(), path) {
			return false
		}
		v.Set(p)
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		d.mapping(n, v, path)
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.value(item, s.Index(i), append(path[:len(path):len(path)], i))
		}
		v.Set(s)
	case t.Kind() != reflect.Struct && t.Kind() != reflect.Slice && n.Kind == yaml.ScalarNode:
		// yaml.v3 converts scalars as it always has: only the errors are
		// worded here.
		p := reflect.New(t)
		if err := n.Decode(p.Interface()); err != nil {
			d.refuse(n, v, path)
			return false
		}
		v.Set(p.Elem())
	default:
		d.refuse(n, v, path)
		return false
	}
	return true
}

// spend takes one node from the budget, and says once when it has run out.
func (d *decoder) spend(n *yaml.Node) bool {
	if d.budget--; d.budget >= 0 {
		return true
	}
	if d.budget == -1 {
		d.errs = append(d.errs, ConfigError{File: d.file, Line: n.Line, Msg: "aliases (*name) repeat more values " +
			"than the file holds (write the values out, or use fewer aliases)"})
	}
	return false
}

// mapping decodes the keys of n into the struct v.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path []any) {
	fields := yamlFields(v.Type())
	seen := make(map[string]int, len(fields))
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !d.spend(n.Content[i]) {
			return
		}
		k, val := n.Content[i], n.Content[i+1]
		f, known := fields[k.Value]
		switch {
		case !known:
			d.errs = append(d.errs, ConfigError{File: d.file, Line: k.Line, Msg: unknownKeyMsg(pathString(path), k.Value, fields)})
		case seen[k.Value] > 0:
			d.errs = append(d.errs, ConfigError{File: d.file, Line: k.Line, Msg: fmt.Sprintf(
				"%s: set twice, first at line %d (keep one of them; the first is used meanwhile)",
				pathString(append(path[:len(path):len(path)], k.Value)), seen[k.Value])})
		default:
			seen[k.Value] = k.Line
			d.value(val, v.Field(f), append(path[:len(path):len(path)], k.Value))
		}
	}
}

// refuse reports a value of the wrong type, saying what it should be.
func (d *decoder) refuse(n *yaml.Node, v reflect.Value, path []any) {
	where := pathString(path)
	d.refused[where] = true
	var got string
	switch n.Kind {
	case yaml.MappingNode:
		got = "a mapping (key: value)"
	case yaml.SequenceNode:
		got = "a list"
	default:
		got = strconv.Quote(n.Value)
	}
	want, fix := wanted(n, v, path)
	d.errs = append(d.errs, ConfigError{File: d.file, Line: n.Line, Msg: fmt.Sprintf("%s: %s is not %s (%s)", where, got, want, fix)})
}

// wanted says what a value of v's type is and how to write one, with the
// key's name and, where it has one, its default as the example.
func wanted(n *yaml.Node, v reflect.Value, path []any) (what, fix string) {
	key, item := "", false
	if len(path) > 0 {
		key, item = path[len(path)-1].(string)
		item = !item
	}
	t := v.Type()
	switch {
	case t == patternsType:
		return "a pattern or a list of patterns", fmt.Sprintf("write %[1]s: example.org, or a list in square brackets: %[1]s: [a.example, b.example]", key)
	case t.Kind() == reflect.Struct && item:
		example := "..."
		if n.Kind == yaml.ScalarNode {
			example = n.Value
		}
		return "a mapping of keys", fmt.Sprintf("write the entry's keys after \"- \", e.g. \"- %s: %s\"", fieldNames(t)[0], example)
	case t.Kind() == reflect.Struct:
		return "a mapping of keys", fmt.Sprintf("write its keys indented on the lines below %s:, from %s", key, strings.Join(sortedNames(t), ", "))
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		return "a list", fmt.Sprintf("start each entry with \"- \" on a line of its own below %s:, e.g. \"  - %s: ...\"", key, fieldNames(t.Elem())[0])
	case t.Kind() == reflect.Slice:
		return "a list", fmt.Sprintf("write %s: [\"a\", \"b\"], or one \"- value\" per line below it", key)
	case item:
		return "a single value", "write one value per item, in quotes if it holds \": \" or \"#\""
	case t.Kind() == reflect.Int:
		example := int64(1)
		if v.Int() != 0 {
			example = v.Int()
		}
		return "a whole number", fmt.Sprintf("write digits only, without quotes, e.g. %s: %d", key, example)
	case t.Kind() == reflect.Bool:
		return "true or false", fmt.Sprintf("write %[1]s: true or %[1]s: false", key)
	case t.Kind() == reflect.String && v.String() != "":
		return "a single value", fmt.Sprintf("write one value on the key's line, e.g. %s: %s", key, v.String())
	case t.Kind() == reflect.String:
		return "a single value", fmt.Sprintf("write one value on the key's line, %s: VALUE, in quotes if it holds \": \" or \"#\"", key)
	}
	return t.String(), "see the configuration reference"
}

// yamlFields maps the YAML keys of a struct to its field indexes.
func yamlFields(t reflect.Type) map[string]int {
	fields := make(map[string]int, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			fields[name] = i
		}
	}
	return fields
}

// fieldNames lists a struct's YAML keys in the order of its fields.
func fieldNames(t reflect.Type) []string {
	var names []string
	for i := 0; i < t.NumField(); i++ {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}

func sortedNames(t reflect.Type) []string {
	names := fieldNames(t)
	sort.Strings(names)
	return names
}

func unknownKeyMsg(path, key string, fields map[string]int) string {
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	best, dist := "", 3 // suggest only close spellings
	for _, name := range names {
		if d := editDistance(strings.ToLower(key), name); d < dist {
			best, dist = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key %q %s; did you mean %q?", key, where, best)
	}
	return fmt.Sprintf("unknown key %q %s; valid keys are %s", key, where, strings.Join(names, ", "))
}

// editDistance is the Levenshtein distance, for "did you mean" hints.
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
