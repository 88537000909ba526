package postfixlint

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// Finding is one way the Postfix configuration and the rules disagree.
type Finding struct {
	// File and Line are the rules side: the configuration file as given
	// and the line of the rule or setting (0: the file as a whole).
	File string
	Line int
	// Postfix is the Postfix side: a setting ("/etc/postfix/main.cf
	// relayhost"), a master.cf service or a table's line
	// ("/etc/postfix/transport:3"). Msg names it too.
	Postfix string
	// Msg says what happens and what to do.
	Msg string
}

// String is the finding as `check -postfix` prints it.
func (f Finding) String() string {
	if f.Line > 0 {
		return fmt.Sprintf("warning: %s:%d: %s", f.File, f.Line, f.Msg)
	}
	return fmt.Sprintf("warning: %s: %s", f.File, f.Msg)
}

// Lint compares the rules with the Postfix configuration and returns the
// findings in the order of the rules file's lines. It asks tables without
// a readable source with postmap -q.
func Lint(ctx context.Context, rs *rules.Rules, pf *Config) []Finding {
	l := &linter{
		ctx:     ctx,
		rs:      rs,
		pf:      pf,
		root:    readYAML(rs.File),
		seen:    map[string]bool{},
		queries: map[[2]string]queryResult{},
	}
	l.prefetch()
	l.staleTables()
	l.policyMaps()
	l.classes()
	l.version()
	l.routes()
	sort.SliceStable(l.findings, func(i, j int) bool { return l.findings[i].Line < l.findings[j].Line })
	return l.findings
}

// linter holds one Lint run.
type linter struct {
	ctx      context.Context
	rs       *rules.Rules
	pf       *Config
	root     *yaml.Node // the rules file, for the lines of settings
	findings []Finding
	seen     map[string]bool // findings already made, by a key of their own
	queries  map[[2]string]queryResult
}

type queryResult struct {
	value string
	found bool
}

// add records a finding once per key.
func (l *linter) add(key string, line int, postfix, format string, args ...any) {
	if l.seen[key] {
		return
	}
	l.seen[key] = true
	l.findings = append(l.findings, Finding{File: l.rs.File, Line: line, Postfix: postfix, Msg: fmt.Sprintf(format, args...)})
}

// settingLine is the line of a setting's key in the rules file (0: not
// there).
func (l *linter) settingLine(path ...string) int {
	n := l.root
	line := 0
	for _, p := range path {
		if n == nil || n.Kind != yaml.MappingNode {
			return 0
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == p {
				line, next = n.Content[i].Line, n.Content[i+1]
			}
		}
		if next == nil {
			return 0
		}
		n = next
	}
	return line
}

// readYAML parses the rules file again for the lines of settings, which
// the compiled rules do not keep; nil if it cannot be read.
func readYAML(file string) *yaml.Node {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) != 1 {
		return nil
	}
	return doc.Content[0]
}

// lookup finds key in a table as Postfix would: in the source entries
// when they were read, else with postmap -q. Tables that postmap cannot
// ask without side effects (remote ones) report found false and asked
// false.
func (l *linter) lookup(t *Table, key string) (e Entry, found, asked bool) {
	if t.Source != "" {
		e, found = t.find(key)
		return e, found, true
	}
	if remoteTypes[t.Type] {
		return Entry{}, false, false
	}
	q := [2]string{t.Spec, strings.ToLower(key)}
	if _, ok := l.queries[q]; !ok {
		l.fetch(t, []string{key})
	}
	r := l.queries[q]
	return Entry{Key: key, Value: r.value}, r.found, true
}

// fetch asks a table without a source for keys in one postmap run and
// keeps the answers for lookup.
func (l *linter) fetch(t *Table, keys []string) {
	var ask []string
	asking := map[string]bool{}
	for _, k := range keys {
		lk := strings.ToLower(k)
		if _, ok := l.queries[[2]string{t.Spec, lk}]; !ok && !asking[lk] {
			asking[lk] = true
			ask = append(ask, k)
		}
	}
	found, err := l.pf.query(l.ctx, t, ask)
	if err != nil {
		l.add("query "+t.Spec, l.settingLine("destinations"), t.Param,
			"cannot ask %s (%s): %v; fix the table (postmap -q KEY %s must work) and check again",
			t.Spec, t.Param, err, t.Spec)
	}
	for _, k := range ask {
		v, ok := found[k]
		l.queries[[2]string{t.Spec, strings.ToLower(k)}] = queryResult{value: v, found: ok}
	}
}

// prefetch asks each table without a source, in one postmap run per
// table, for every key the checks will look up in it.
func (l *linter) prefetch() {
	asks := func(t *Table) bool {
		own, _ := l.owner(t)
		return own == foreign && t.Source == "" && !remoteTypes[t.Type]
	}
	for _, t := range l.pf.TransportMaps {
		if !asks(t) {
			continue
		}
		var keys []string
		for _, d := range l.dests(true) {
			switch {
			case !patternTypes[t.Type]:
				keys = append(keys, l.transportKeys(d)...)
			case d.name != "*" && !strings.HasPrefix(d.name, "*."):
				keys = append(keys, "postmaster@"+d.name)
			}
		}
		l.fetch(t, keys)
	}
	lists := [][]*Table{l.pf.PolicyMaps}
	for _, s := range l.pf.Services {
		lists = append(lists, s.PolicyMaps)
	}
	for _, list := range lists {
		for _, t := range list {
			if !asks(t) {
				continue
			}
			var keys []string
			for _, r := range l.rs.Rules {
				if k, err := rules.ParseKey(r.Match); err == nil && k.Kind != rules.KeyParent {
					keys = append(keys, k.String())
				}
			}
			l.fetch(t, keys)
		}
	}
}

// staleTables reports table sources whose database Postfix reads is
// missing or older: the checks read the source, so they may describe what
// Postfix will do after postmap, not what it does now.
func (l *linter) staleTables() {
	lists := [][]*Table{l.pf.TransportMaps, l.pf.SenderTransportMaps, l.pf.SenderRelayhostMaps, l.pf.PolicyMaps}
	for _, s := range l.pf.Services {
		lists = append(lists, s.PolicyMaps)
	}
	for _, list := range lists {
		for _, t := range list {
			if t.Stale != "" {
				l.add("stale "+t.Spec, l.settingLine("destinations"), t.Source,
					"%s (%s) %s, and these checks read the source, not what Postfix reads; run postmap %s, then postfix reload",
					t.Source, t.Param, t.Stale, t.Spec)
			}
		}
	}
}

// describe names a destination rule for messages.
func describe(r *rules.Rule) string {
	if r.Index < 0 {
		return fmt.Sprintf("the defaults (level %s)", r.Level)
	}
	return fmt.Sprintf("destinations[%d] match %q (%s)", r.Index, r.Match, r.Level)
}

// floorOf says where a next hop's floor comes from, for messages.
func (l *linter) floorOf(r *rules.Rule) string {
	if r.Index < 0 {
		return fmt.Sprintf("the default floor %s (defaults.level)", r.Level)
	}
	return fmt.Sprintf("%s from %s:%d (match %q)", r.Level, l.rs.File, r.Line, r.Match)
}

// yamlKey writes a key as a YAML scalar for a suggested rule: quoted when
// it has brackets or a colon.
func yamlKey(k string) string {
	if strings.ContainsAny(k, "[]:") {
		return fmt.Sprintf("%q", k)
	}
	return k
}

// fixFor says what rule makes next hop k get level: a new one, or the
// rule that matches it now raised (or, when that rule is for a parent
// domain, a rule of its own before it: the first match wins).
func (l *linter) fixFor(k rules.Key, have *rules.Rule, level rules.Level) string {
	if have.Index < 0 {
		return fmt.Sprintf("add a destination rule for the next hop: match: %s, level: %s", yamlKey(k.String()), level)
	}
	if hk, err := rules.ParseKey(have.Match); err == nil && hk == k {
		return fmt.Sprintf("raise %s:%d (match %q) to level: %s", l.rs.File, have.Line, have.Match, level)
	}
	return fmt.Sprintf("raise %s:%d (match %q) to level: %s, or add a rule for the next hop before it: match: %s, level: %s",
		l.rs.File, have.Line, have.Match, level, yamlKey(k.String()), level)
}
