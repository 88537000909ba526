package postfixlint

import (
	"fmt"
	"strings"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// The smtp_tls_policy_maps checks. Postfix searches the tables of the list
// in order for each key and takes the first answer (postconf(5)). The
// daemon answers every next hop it is asked for (the default floor at
// least), so:
//   - a table before the daemon's answers first for every key it has: each
//     of its entries is reported, those for a destination a rule names
//     with that rule, the others together, since even an entry no rule
//     names takes the destination out of the daemon's probes, pins and
//     published policies (a deliberate exception belongs in the rules, as
//     a rule with upgrade: none);
//   - a table after the daemon's is never consulted.

// maxListed bounds the entries a message lists by name.
const maxListed = 5

// policyMaps checks main.cf's smtp_tls_policy_maps and the -o overrides of
// the smtp(8) services that are not class transports (those are checked
// with their class).
func (l *linter) policyMaps() {
	if l.ourTable(rules.MapTLSPolicy) == "" {
		l.add("no listener", l.settingLine("listen"), l.pf.MainCF()+" smtp_tls_policy_maps",
			"the daemon has no listen.socketmap or listen.tcptable, so Postfix cannot ask it for TLS policies (%s smtp_tls_policy_maps = %s); set listen.socketmap: 127.0.0.1:10028 and smtp_tls_policy_maps = socketmap:inet:127.0.0.1:10028:tlspolicy",
			l.pf.MainCF(), l.pf.mainPolicyMaps())
		return
	}
	l.policyList(l.pf.PolicyMaps, l.pf.MainCF()+" smtp_tls_policy_maps", nil)
	for _, s := range l.pf.Services {
		if s.Command != "smtp" || !s.PolicyMapsSet || l.classOfTransport(s.Name) != nil {
			continue
		}
		l.policyList(s.PolicyMaps, l.pf.MasterCF()+" "+s.Name+" -o smtp_tls_policy_maps", nil)
	}
}

// mainPolicyMaps is main.cf's smtp_tls_policy_maps as written.
func (c *Config) mainPolicyMaps() string {
	specs := make([]string, len(c.PolicyMaps))
	for i, t := range c.PolicyMaps {
		specs[i] = t.Spec
	}
	if len(specs) == 0 {
		return "(empty)"
	}
	return strings.Join(specs, ", ")
}

// classOfTransport returns the class whose transport a service is, or nil.
func (l *linter) classOfTransport(service string) *rules.Class {
	for _, c := range l.rs.Classes {
		if rules.ClassTransport(c.Name) == service {
			return c
		}
	}
	return nil
}

// policyList checks one smtp_tls_policy_maps value (where names it): it
// must name the daemon's map (the class's map for a class transport),
// with no other table before it or after it.
func (l *linter) policyList(tables []*Table, where string, class *rules.Class) {
	want, line, whose := rules.MapTLSPolicy, l.listenLine(), "TLS policies"
	if class != nil {
		want, line, whose = class.Name, class.Line, fmt.Sprintf("class %s's TLS policies", class.Name)
	}
	spec := l.ourTable(want)
	if spec == "" { // a class map needs the socketmap listener
		l.add("no socketmap "+where, line, where,
			"%s needs the daemon's socketmap (tcp_table answers the default map only) but the daemon has no listen.socketmap; set listen.socketmap: 127.0.0.1:10028 and %s = socketmap:inet:127.0.0.1:10028:%s",
			where, where, want)
		return
	}
	if len(tables) == 0 {
		l.add("empty "+where, line, where,
			"%s is empty: Postfix never asks the daemon for %s and sends mail at smtp_tls_security_level whatever the rules say; set %s = %s",
			where, whose, where, spec)
		return
	}
	first := -1
	reported := map[int]bool{}
	for i, t := range tables {
		own, name := l.owner(t)
		if own == foreign {
			continue
		}
		reported[i] = true
		switch {
		case own == elsewhere:
			l.add("elsewhere "+where+t.Spec, line, where,
				"%s lists %s, but the daemon listens on %s: Postfix asks something else for %s, or nothing (and then defers the mail, 4.7.5); write %s",
				where, t.Spec, l.listenText(), whose, spec)
		case own == ownTCP && class != nil:
			l.add("tcp "+where, line, where,
				"%s lists %s, the daemon's tcp_table, which answers the default map only: mail of class %s gets each destination's floor there, not the class level %s; write %s",
				where, t.Spec, class.Name, class.Level, spec)
		case name == want || own == ownTCP || class == nil && l.rs.Class(name) != nil:
			// A class map in main.cf answers every destination at least
			// at the class level: an answer, if a strong one.
			if first < 0 {
				first = i
			}
		case name == rules.MapTransport || name == rules.MapSenderTransport:
			l.add("route map "+where+t.Spec, line, where,
				"%s lists %s, the daemon's %s map, which answers routes, not TLS policies: Postfix cannot use its answers as a policy and defers the mail (4.7.5); write %s",
				where, t.Spec, name, spec)
		case class != nil && name == rules.MapTLSPolicy:
			l.add("default map "+where, line, where,
				"%s lists %s, the default class's map: mail of class %s gets each destination's floor, not the class level %s; write %s",
				where, t.Spec, class.Name, class.Level, spec)
		case class != nil && l.rs.Class(name) != nil:
			l.add("other class "+where, line, where,
				"%s lists %s, the map of class %s: mail of class %s gets that class's level, not %s; write %s",
				where, t.Spec, name, class.Name, class.Level, spec)
		default:
			l.add("unknown map "+where+t.Spec, line, where,
				"%s lists %s, but the daemon has no map %q (no sender class of that name in the rules): it answers PERM and Postfix defers the mail (4.7.5); write %s, or add a class named %q to the rules",
				where, t.Spec, name, spec, name)
		}
	}
	if first < 0 {
		if len(reported) == 0 {
			l.add("not ours "+where, line, where,
				"%s (%s) does not name the daemon (%s): Postfix never asks tlspolicyd for %s, whatever the rules say; write %s first in it",
				where, specList(tables), l.listenText(), whose, spec)
		}
		return
	}
	for i, t := range tables[:first] {
		if !reported[i] {
			l.tableBefore(t, where, tables[first])
		}
	}
	for i, t := range tables[first+1:] {
		if !reported[first+1+i] {
			l.add("after "+where+t.Spec, l.settingLine("destinations"), where,
				"%s lists %s after the daemon's map %s, which answers every next hop Postfix asks for: Postfix never uses %s; write its entries as destination rules here and remove it from %s",
				where, t.Spec, tables[first].Spec, t.Spec, where)
		}
	}
}

func specList(tables []*Table) string {
	specs := make([]string, len(tables))
	for i, t := range tables {
		specs[i] = t.Spec
	}
	return strings.Join(specs, ", ")
}

// tableBefore reports what a table listed before the daemon's map answers
// in its place.
func (l *linter) tableBefore(t *Table, where string, ours *Table) {
	if t.Source == "" {
		l.tableBeforeUnlisted(t, where, ours)
		return
	}
	var unnamed []Entry
	for _, e := range t.Entries {
		if strings.HasPrefix(e.Key, ".") {
			// Postfix asks for a ".parent" key only after every table
			// missed the full name, which the daemon never does.
			continue
		}
		k, err := rules.ParseKey(e.Key)
		if err != nil {
			unnamed = append(unnamed, e)
			continue
		}
		if r := l.rs.Match(k); r.Index >= 0 {
			l.add(fmt.Sprintf("before %s %d %s", where, r.Index, e.Key), r.Line, t.Where(e),
				"%s never applies to %s: %s (%s, listed before the daemon's map %s) answers it first with %q; remove that entry, or set the level in this rule",
				describe(r), e.Key, t.Where(e), where, ours.Spec, e.Value)
			continue
		}
		unnamed = append(unnamed, e)
	}
	if len(unnamed) == 0 {
		return
	}
	names := make([]string, 0, maxListed)
	for i, e := range unnamed {
		if i == maxListed {
			names = append(names, fmt.Sprintf("and %d more", len(unnamed)-maxListed))
			break
		}
		names = append(names, fmt.Sprintf("%s (%s:%d)", e.Key, t.Source, e.Line))
	}
	example := unnamed[0]
	level, _, _ := strings.Cut(example.Value, " ")
	l.add("before "+where+t.Spec, l.settingLine("destinations"), t.Source,
		"%s, listed before the daemon's map %s in %s, answers %d next hop(s) itself: %s; the daemon's probes, pins and published policies never apply to them: write them as destination rules (e.g. match: %s, level: %s, upgrade: none) and remove %s from %s",
		t.Spec, ours.Spec, where, len(unnamed), strings.Join(names, ", "), yamlKey(example.Key), level, t.Spec, where)
}

// tableBeforeUnlisted handles a table before the daemon's whose entries
// cannot be listed: each rule's key is asked where postmap can ask it, and
// the table is reported as a whole.
func (l *linter) tableBeforeUnlisted(t *Table, where string, ours *Table) {
	for _, r := range l.rs.Rules {
		k, err := rules.ParseKey(r.Match)
		if err != nil || k.Kind == rules.KeyParent {
			continue
		}
		e, found, asked := l.lookup(t, k.String())
		if !asked {
			break
		}
		if found {
			l.add(fmt.Sprintf("before %s %d", where, r.Index), r.Line, t.Spec,
				"%s never applies: %s (listed before the daemon's map %s in %s) answers %s first with %q; remove that entry, or set the level in this rule",
				describe(r), t.Spec, ours.Spec, where, k, e.Value)
		}
	}
	l.add("before "+where+t.Spec, l.settingLine("destinations"), t.Spec,
		"%s is listed before the daemon's map %s in %s, and tlspolicyd cannot list its entries (a %s table): whatever it answers overrides the rules and the daemon's evidence; write its entries as destination rules and remove it from %s",
		t.Spec, ours.Spec, where, t.Type, where)
}
