// Package policytable turns a Postfix TLS policy table into tlspolicyd
// destination rules, for sites moving from smtp_tls_policy_maps =
// hash:/etc/postfix/tls_policy (or lmdb:, cdb:, texthash:) to the daemon.
//
// The input is the table's source file as postmap(1) reads it: "key
// whitespace value" lines, "#" comment lines, blank lines, and lines that
// start with white space continuing the one before. Values are a policy as
// Postfix's TLS_README ("TLS policy table") and smtp_tls_policy_maps
// describe it: a security level followed by name=value attributes, the
// attributes separated by white space or commas, a value holding either in
// braces ("{ match = a b }").
//
// Postfix looks a domain up exactly first, then as ".parent" from the
// nearest parent up; the daemon takes the first rule that matches. The
// rules are therefore ordered exact names first, then ".parent" keys from
// the most specific, so that the daemon picks what Postfix picked. A key
// that occurs twice keeps its first line, as postmap does.
//
// What the daemon cannot express is reported, never dropped silently:
// attributes (match=, ciphers=, tafile=, ...), the fingerprint level
// (imported as encrypt, without the pinning), and lines Postfix itself
// would refuse (an unknown level, a key with no value).
package policytable

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// maxLine bounds a logical line of the table (continuations included).
const maxLine = 1 << 20

// Entry is one logical line of the table.
type Entry struct {
	Line  int    // where it starts, 1-based
	Key   string // as written
	Value string // the policy as written, continuation lines joined by a space
}

// Problem is a line that postmap itself would not load.
type Problem struct {
	Line int
	Msg  string
}

// Parse reads a table's source. Lines postmap would refuse are problems,
// not errors: the rest of the table still counts. The error is for input
// that cannot be read at all.
func Parse(r io.Reader) ([]Entry, []Problem, error) {
	var entries []Entry
	var problems []Problem
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), maxLine)
	var cur *Entry
	var text strings.Builder
	flush := func() {
		if cur == nil {
			return
		}
		key, value, _ := strings.Cut(text.String(), " ")
		if value = strings.TrimSpace(value); value == "" {
			problems = append(problems, Problem{cur.Line, fmt.Sprintf("%q has no policy: postmap skips it (expected format: key whitespace value)", key)})
		} else {
			cur.Key, cur.Value = key, value
			entries = append(entries, *cur)
		}
		cur = nil
		text.Reset()
	}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), " \t\r")
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "" || trimmed[0] == '#':
			// Comments and blank lines neither start nor end a logical line.
		case line[0] == ' ' || line[0] == '\t':
			if cur == nil {
				problems = append(problems, Problem{n, "a continuation line with no line before it: postmap skips it"})
				continue
			}
			text.WriteByte(' ')
			text.WriteString(trimmed)
		default:
			flush()
			cur = &Entry{Line: n}
			text.WriteString(strings.Join(strings.Fields(line), " "))
		}
		if text.Len() > maxLine {
			return nil, nil, fmt.Errorf("line %d: longer than %d bytes", cur.Line, maxLine)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	flush()
	return entries, problems, nil
}

// Attr is one name=value attribute of a policy.
type Attr struct{ Name, Value string }

// String renders the attribute as written in a table.
func (a Attr) String() string { return a.Name + "=" + a.Value }

// parsePolicy splits a policy into its level word and attributes, as
// Postfix's smtp(8) does: tokens separated by white space or commas, a
// token in braces taken whole.
func parsePolicy(value string) (level string, attrs []Attr, err error) {
	tokens, err := splitPolicy(value)
	if err != nil {
		return "", nil, err
	}
	if len(tokens) == 0 {
		return "", nil, fmt.Errorf("no security level")
	}
	for _, tok := range tokens[1:] {
		if inner, ok := strings.CutPrefix(tok, "{"); ok {
			tok = strings.TrimSpace(strings.TrimSuffix(inner, "}"))
		}
		name, val, ok := strings.Cut(tok, "=")
		if !ok {
			return "", nil, fmt.Errorf("%q is no name=value attribute", tok)
		}
		attrs = append(attrs, Attr{strings.TrimSpace(name), strings.TrimSpace(val)})
	}
	return tokens[0], attrs, nil
}

// splitPolicy splits on white space and commas outside braces.
func splitPolicy(s string) ([]string, error) {
	var tokens []string
	depth, start := 0, -1
	for i, c := range s {
		switch {
		case c == '{':
			if depth == 0 && start < 0 {
				start = i
			}
			depth++
		case c == '}':
			if depth == 0 {
				return nil, fmt.Errorf("unbalanced } in %q", s)
			}
			depth--
		case depth == 0 && (c == ' ' || c == '\t' || c == ','):
			if start >= 0 {
				tokens = append(tokens, s[start:i])
				start = -1
			}
		default:
			if start < 0 {
				start = i
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced { in %q", s)
	}
	if start >= 0 {
		tokens = append(tokens, s[start:])
	}
	return tokens, nil
}

// Destination is what an imported rule sets of a rules.yaml destination
// entry. It is its own type, not the configuration's, so that the import
// writes the plain form every version of the schema reads (one match, one
// level) whatever that type grows.
type Destination struct {
	Match   string // the table's key as written
	Level   string
	Upgrade string // "none", or "" for the defaults' upgrade
}

// Rule is one imported destination rule with where it came from and what
// of its line it could not keep.
type Rule struct {
	Entry       Entry
	Destination Destination
	// Lost says what the daemon will do differently from the table's
	// line (an attribute it cannot send, a level it does not have).
	Lost []string
	// Notes say what carries over only through a setting of the whole
	// configuration, which must stay as it is shipped.
	Notes []string
}

// Skipped is a line that gave no rule.
type Skipped struct {
	Line int
	Msg  string
}

// Result is a converted table.
type Result struct {
	Rules   []Rule    // in the order the daemon must try them
	Skipped []Skipped // lines postmap or smtp(8) would refuse, and duplicates
}

// Exact reports whether the rules do what the table did: no line skipped
// (duplicates aside, which postmap ignores too) and nothing lost.
func (r Result) Exact() bool {
	for _, s := range r.Skipped {
		if !strings.HasPrefix(s.Msg, duplicatePrefix) {
			return false
		}
	}
	for _, rule := range r.Rules {
		if len(rule.Lost) > 0 {
			return false
		}
	}
	return true
}

const duplicatePrefix = "duplicate key"

// Convert turns parsed entries into rules.
func Convert(entries []Entry, problems []Problem) Result {
	var res Result
	for _, p := range problems {
		res.Skipped = append(res.Skipped, Skipped(p))
	}
	type placed struct {
		Rule
		kind   rules.KeyKind
		labels int
	}
	var all []placed
	seen := map[string]int{} // normalised key -> line
	for _, e := range entries {
		key, err := rules.ParseKey(e.Key)
		if err != nil {
			res.Skipped = append(res.Skipped, Skipped{e.Line, fmt.Sprintf("%q: %v", e.Key, err)})
			continue
		}
		id := key.Kind.String() + " " + key.Name
		if first, dup := seen[id]; dup {
			res.Skipped = append(res.Skipped, Skipped{e.Line, fmt.Sprintf("%s %q: line %d has it already; postmap keeps the first", duplicatePrefix, e.Key, first)})
			continue
		}
		r, err := convertEntry(e)
		if err != nil {
			res.Skipped = append(res.Skipped, Skipped{e.Line, fmt.Sprintf("%q: %v", e.Key, err)})
			continue
		}
		seen[id] = e.Line
		all = append(all, placed{r, key.Kind, strings.Count(key.Name, ".") + 1})
	}
	// Exact names and next hops first, in file order; then .parent keys,
	// nearest first, as Postfix tries them.
	sort.SliceStable(all, func(i, j int) bool {
		pi, pj := all[i].kind == rules.KeyParent, all[j].kind == rules.KeyParent
		if pi != pj {
			return pj
		}
		return pi && all[i].labels > all[j].labels
	})
	for _, p := range all {
		res.Rules = append(res.Rules, p.Rule)
	}
	sort.SliceStable(res.Skipped, func(i, j int) bool { return res.Skipped[i].Line < res.Skipped[j].Line })
	return res
}

// convertEntry turns one line into a rule, or says why it cannot.
func convertEntry(e Entry) (Rule, error) {
	word, attrs, err := parsePolicy(e.Value)
	if err != nil {
		return Rule{}, err
	}
	r := Rule{Entry: e, Destination: Destination{Match: e.Key}}
	var level rules.Level
	if strings.EqualFold(word, "fingerprint") {
		level = rules.LevelEncrypt
		r.Lost = append(r.Lost, "level fingerprint: certificate pinning by fingerprint has no equivalent here; "+
			"imported as encrypt (TLS required, the certificate not checked)")
	} else if level, err = rules.ParseLevel(word); err != nil {
		return Rule{}, fmt.Errorf("unknown security level %q (Postfix knows none, may, encrypt, dane, dane-only, fingerprint, verify and secure); smtp(8) defers mail on such a policy", word)
	}
	r.Destination.Level = level.String()
	if level == rules.LevelNone {
		// The table turned TLS off here, most likely because this
		// destination's TLS fails: probes must not turn it back on.
		r.Destination.Upgrade = "none"
	}
	for _, a := range attrs {
		if lost, note := attrFate(a, level); lost != "" {
			r.Lost = append(r.Lost, lost)
		} else if note != "" {
			r.Notes = append(r.Notes, note)
		}
	}
	return r, nil
}

// attrFate says what becomes of an attribute: lost (the daemon behaves
// differently), or kept only through a configuration-wide setting (note).
func attrFate(a Attr, level rules.Level) (lost, note string) {
	switch strings.ToLower(a.Name) {
	case "protocols":
		if floor, ok := protocolFloor(a.Value); ok && floor == defaultMinimumTLS && level.AtLeast(rules.LevelEncrypt) {
			return "", a.String() + ": kept by minimum_tls " + defaultMinimumTLS + " (the shipped value), which the daemon sends with this level"
		}
		if level.AtLeast(rules.LevelEncrypt) {
			return a.String() + ": the daemon sends protocols=>=MINIMUM_TLS from minimum_tls (" + defaultMinimumTLS + " as shipped) instead", ""
		}
		return a.String() + ": the daemon sends no protocols with this level; smtp_tls_protocols applies", ""
	case "ciphers", "exclude":
		return a.String() + ": smtp_tls_mandatory_ciphers and smtp_tls_mandatory_exclude_ciphers (smtp_tls_ciphers, smtp_tls_exclude_ciphers for may) apply instead", ""
	case "match":
		return a.String() + ": smtp_tls_verify_cert_match or smtp_tls_secure_cert_match applies instead (the daemon sends match= only for MTA-STS policies)", ""
	case "tafile":
		return a.String() + ": the trust anchors of smtp_tls_CAfile and smtp_tls_CApath apply instead", ""
	case "connection_reuse":
		return a.String() + ": smtp_tls_connection_reuse applies instead", ""
	case "servername":
		return a.String() + ": smtp_tls_servername applies instead", ""
	case "enable_rpk":
		return a.String() + ": smtp_tls_enable_rpk applies instead", ""
	case "policy_type", "policy_domain", "policy_string", "policy_ttl", "policy_failure", "mx_host_pattern":
		return a.String() + ": TLSRPT attributes are the daemon's own (with postfix_version 3.10 or later, for MTA-STS answers)", ""
	}
	return a.String() + ": not a policy attribute this importer knows; Postfix's default for it applies", ""
}

// defaultMinimumTLS is minimum_tls in the shipped configuration.
const defaultMinimumTLS = "TLSv1.2"

// tlsOrder lists protocol versions, oldest first.
var tlsOrder = []string{"SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}

// protocolFloor returns the oldest protocol a protocols= value allows:
// ">=TLSv1.2", an exclusion list ("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1"), or a
// list of protocols ("TLSv1.2:TLSv1.3"); separators are ":", "," or white
// space. A value it cannot read, or one mixing both kinds of list, gives
// false: a person must look at it.
func protocolFloor(v string) (string, bool) {
	if min, ok := strings.CutPrefix(strings.TrimSpace(v), ">="); ok {
		return protocolName(min)
	}
	included, excluded := map[string]bool{}, map[string]bool{}
	for _, tok := range strings.FieldsFunc(v, func(r rune) bool { return r == ':' || r == ',' || r == ' ' || r == '\t' }) {
		name, not := strings.CutPrefix(tok, "!")
		p, ok := protocolName(name)
		switch {
		case !ok:
			return "", false
		case not:
			excluded[p] = true
		default:
			included[p] = true
		}
	}
	if len(included) > 0 == (len(excluded) > 0) {
		return "", false
	}
	for _, p := range tlsOrder {
		if included[p] || len(included) == 0 && !excluded[p] {
			return p, true
		}
	}
	return "", false
}

// protocolName returns a protocol's name as tlsOrder spells it.
func protocolName(s string) (string, bool) {
	for _, p := range tlsOrder {
		if strings.EqualFold(p, s) {
			return p, true
		}
	}
	return "", false
}
