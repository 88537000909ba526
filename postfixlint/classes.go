package postfixlint

import (
	"fmt"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// classes checks the delivery-time wiring of each sender class: the
// daemon's sender.transport map routes a class's mail to the smtp-CLASS
// transport, whose smtp_tls_policy_maps is the class's map.
func (l *linter) classes() {
	if len(l.rs.Classes) == 0 {
		return
	}
	routed := false
	for _, t := range l.pf.SenderTransportMaps {
		if own, name := l.owner(t); own == ownSocketmap && name == rules.MapSenderTransport {
			routed = true
		}
	}
	sdtm := l.pf.MainCF() + " sender_dependent_default_transport_maps"
	for _, c := range l.rs.Classes {
		name := rules.ClassTransport(c.Name)
		where := l.pf.MasterCF() + " " + name
		want := l.ourTable(c.Name)
		if want == "" {
			l.add("no socketmap class "+c.Name, c.Line, where,
				"class %s needs the daemon's socketmap for its transport %s (tcp_table answers the default map only), but the daemon has no listen.socketmap; set listen.socketmap: 127.0.0.1:10028",
				c.Name, name)
			continue
		}
		service := fmt.Sprintf("%s unix - - - - - smtp -o smtp_tls_policy_maps=%s", name, want)
		s := l.pf.Service(name)
		switch {
		case s == nil:
			l.add("no transport "+c.Name, c.Line, l.pf.MasterCF(),
				"class %s has no transport: %s has no %s service, so Postfix defers the class's mail that the daemon routes there (unknown mail transport) and the class's map is never asked; add to master.cf: %s",
				c.Name, l.pf.MasterCF(), name, service)
		case s.Command != "smtp":
			l.add("not smtp "+c.Name, c.Line, where,
				"class %s's transport %s runs %s, not the smtp(8) client, so smtp_tls_policy_maps does not apply to it; make it: %s",
				c.Name, where, s.Command, service)
		case !s.PolicyMapsSet:
			l.add("no override "+c.Name, c.Line, where,
				"class %s's transport %s has no -o smtp_tls_policy_maps, so it uses main.cf's (%s), which answers the default class's floor, not the class level %s; add -o smtp_tls_policy_maps=%s to it",
				c.Name, where, l.pf.mainPolicyMaps(), c.Level, want)
		default:
			l.policyList(s.PolicyMaps, where+" -o smtp_tls_policy_maps", c)
		}
		if !routed {
			l.add("not routed "+c.Name, c.Line, sdtm,
				"mail of class %s is never routed to its transport %s: %s (%s) does not name the daemon's %s map, so the class level holds only at RCPT time, not for mail that bypasses that check; set sender_dependent_default_transport_maps = %s",
				c.Name, name, sdtm, orEmpty(specList(l.pf.SenderTransportMaps)), rules.MapSenderTransport, l.ourTable(rules.MapSenderTransport))
		}
	}
	l.classBypass()
}

func orEmpty(s string) string {
	if s == "" {
		return "empty"
	}
	return s
}

// classBypass reports transport_maps entries that send a class's mail
// through another transport than the class's: transport(5) overrules
// sender_dependent_default_transport_maps, so that mail is looked up in
// that transport's policy map, at the next hop's floor rather than the
// class level.
func (l *linter) classBypass() {
	for _, c := range l.rs.Classes {
		classTransport := rules.ClassTransport(c.Name)
		for _, d := range l.dests(true) {
			r, ok := l.transportRoute(d)
			if !ok || r.transport == "" || r.transport == classTransport || !l.isSMTP(r.transport) || l.answersClass(r.transport, c) {
				continue
			}
			// The weakest next hop decides what the class's mail may get.
			floor, key := l.rs.Match(d.key()), d.text()
			first := true
			for _, n := range r.nexthops {
				k, err := rules.ParseKey(n)
				if err != nil {
					continue // reported with the route
				}
				if f := l.rs.Match(k); first || !f.Level.Meets(floor.Level) {
					floor, key, first = f, yamlKey(k.String()), false
				}
			}
			if floor.Level.Meets(c.Level) {
				continue
			}
			l.add("bypass "+c.Name+" "+r.where, c.Line, r.where,
				"mail of class %s for %s leaves through %s, not through %s: %s overrules the class's route, and %s's policy map answers %s for %s, not the class level %s; route it through the class transport (%s:%s) or give the next hop a rule at level %s",
				c.Name, d.text(), r.transport, classTransport, r.source, r.transport, l.floorOf(floor), key, c.Level, classTransport, r.nexthop, c.Level)
		}
	}
}

// answersClass reports whether a transport's policy map is the class's
// map on the daemon.
func (l *linter) answersClass(transport string, c *rules.Class) bool {
	tables := l.pf.PolicyMaps
	if s := l.pf.Service(transport); s != nil && s.PolicyMapsSet {
		tables = s.PolicyMaps
	}
	for _, t := range tables {
		if own, name := l.owner(t); own == ownSocketmap && name == c.Name {
			return true
		}
	}
	return false
}
