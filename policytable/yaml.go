package policytable

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// WriteYAML writes the rules as a "destinations:" list for rules.yaml,
// each rule under a comment with its source line and what of it was not
// carried over, and the skipped lines as comments after the list. source
// names the table in the comments.
func WriteYAML(w io.Writer, source string, res Result) error {
	var out bytes.Buffer
	fmt.Fprintf(&out, `# Destination rules imported from %s by tlspolicyd import-postfix.
# Put them in place of the destinations: list of rules.yaml, then run
# tlspolicyd check. They are in the order Postfix looks keys up: exact
# names first, then .parent keys from the most specific. Levels from
# encrypt up carry protocols=>= from minimum_tls; probes may raise a
# destination up to defaults.upgrade (entries at none have upgrade: none).
`, oneLine(source))

	list := &yaml.Node{Kind: yaml.SequenceNode}
	for _, r := range res.Rules {
		item := &yaml.Node{Kind: yaml.MappingNode}
		add := func(key, value string) {
			if value == "" {
				return
			}
			v := &yaml.Node{Kind: yaml.ScalarNode, Value: value}
			if key == "match" {
				// Keys like "[host]:port" and ".parent" read better, and
				// always parse, quoted.
				v.Style = yaml.DoubleQuotedStyle
			}
			item.Content = append(item.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, v)
		}
		add("match", r.Destination.Match)
		add("level", r.Destination.Level)
		add("upgrade", r.Destination.Upgrade)
		comment := []string{oneLine(fmt.Sprintf("%s:%d: %s %s", source, r.Entry.Line, r.Entry.Key, r.Entry.Value))}
		for _, l := range r.Lost {
			comment = append(comment, oneLine("NOT CARRIED OVER: "+l))
		}
		for _, n := range r.Notes {
			comment = append(comment, oneLine("note: "+n))
		}
		item.HeadComment = strings.Join(comment, "\n")
		list.Content = append(list.Content, item)
	}
	if len(list.Content) == 0 {
		list.Style = yaml.FlowStyle
	}
	doc := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Value: "destinations"}, list,
	}}
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	if len(res.Skipped) > 0 {
		fmt.Fprintf(&out, "\n# Lines of %s that gave no rule:\n", oneLine(source))
		for _, s := range res.Skipped {
			fmt.Fprintf(&out, "#   line %d: %s\n", s.Line, oneLine(s.Msg))
		}
	}
	_, err := w.Write(out.Bytes())
	return err
}

// oneLine keeps text that goes into a comment on one line and within what
// YAML allows: line breaks become spaces, other control characters and
// bytes that are not UTF-8 are written as \xNN.
func oneLine(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == '\n' || r == '\r':
			b.WriteByte(' ')
		case r == utf8.RuneError && size <= 1, unicode.IsControl(r) && r != '\t', r == '\uFEFF':
			for _, c := range []byte(s[i : i+size]) {
				fmt.Fprintf(&b, "\\x%02x", c)
			}
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
