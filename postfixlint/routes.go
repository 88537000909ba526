package postfixlint

import (
	"fmt"
	"strings"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// Routing, as trivial-rewrite(8) decides it for a recipient domain that is
// delivered by the default transport (not local, virtual or relay_domains
// mail): a transport_maps entry first (transport(5): the full address,
// the domain, its ".parent" forms, then "*"; a null transport and null
// next hop change nothing, a transport with a null next hop resets the
// next hop to the recipient domain); else the next hop of a
// sender-dependent default transport, of default_transport, of a
// sender-dependent relayhost, of relayhost, or the recipient domain, in
// that order (postconf(5) default_transport). The policy map is then asked
// for the next hop's key, not the recipient domain's.

// dest is a set of recipient domains that Postfix routes alike.
type dest struct {
	// name is a domain ("notls.test"), any subdomain of one
	// ("*.example.org"), or any domain at all ("*").
	name string
}

// key is the lookup key the rules match the destination by. "*.example.org"
// is no valid domain, so no exact rule matches it: only the ".parent"
// rules that cover every subdomain, as for any real subdomain.
func (d dest) key() rules.Key { return rules.Key{Kind: rules.KeyDomain, Name: d.name} }

func (d dest) text() string {
	if d.name == "*" {
		return "every destination without a transport_maps entry of its own"
	}
	if parent, ok := strings.CutPrefix(d.name, "*."); ok {
		return "the subdomains of " + parent
	}
	return d.name
}

// dests are the destinations worth routing: those the rules name, and
// those the transport tables' entries name; with wildcard, also "*".
func (l *linter) dests(wildcard bool) []dest {
	var ds []dest
	seen := map[string]bool{}
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			ds = append(ds, dest{name})
		}
	}
	for _, r := range l.rs.Rules {
		k, err := rules.ParseKey(r.Match)
		switch {
		case err != nil:
		case k.Kind == rules.KeyDomain:
			add(k.Name)
		case k.Kind == rules.KeyParent:
			add("*." + k.Name)
		}
	}
	for _, t := range l.pf.TransportMaps {
		for _, e := range t.Entries {
			if e.Key == "*" || strings.Contains(e.Key, "@") {
				continue
			}
			k, err := rules.ParseKey(e.Key)
			switch {
			case err != nil:
			case k.Kind == rules.KeyDomain:
				add(k.Name)
				if l.pf.ParentMatchesSubdomains {
					add("*." + k.Name)
				}
			case k.Kind == rules.KeyParent:
				add("*." + k.Name)
			}
		}
	}
	if wildcard {
		add("*")
	}
	return ds
}

// transportKeys are the keys trivial-rewrite looks a destination up by in
// transport_maps, in order (the full address aside).
func (l *linter) transportKeys(d dest) []string {
	if d.name == "*" {
		return []string{"*"}
	}
	var keys, parents []string
	name, sub := strings.CutPrefix(d.name, "*.")
	if sub {
		parents = append(parents, name)
	} else {
		keys = append(keys, name)
	}
	for p := name; strings.Contains(p, "."); {
		_, p, _ = strings.Cut(p, ".")
		parents = append(parents, p)
	}
	for _, p := range parents {
		if l.pf.ParentMatchesSubdomains {
			keys = append(keys, p)
		} else {
			keys = append(keys, "."+p)
		}
	}
	return append(keys, "*")
}

// route is where Postfix sends a destination's mail.
type route struct {
	transport string   // the transport named, "" when unchanged
	nexthop   string   // the next hop as written, "" for the recipient domain
	nexthops  []string // nexthop split (Postfix 3.5 takes a list)
	senders   string   // "" for every sender, else the sender key
	source    string   // what decided it, for messages
	where     string   // the Postfix side: a table line or a setting
}

// parseRoute splits "transport:nexthop".
func parseRoute(v string) (transport, nexthop string) {
	transport, nexthop, _ = strings.Cut(strings.TrimSpace(v), ":")
	return transport, nexthop
}

// transportRoute is the transport_maps entry that routes d, if any
// changes its route.
func (l *linter) transportRoute(d dest) (route, bool) {
	hit := func(t *Table, e Entry, key string) (route, bool) {
		tr, nh := parseRoute(e.Value)
		if tr == "" && nh == "" {
			return route{}, false // "do not change"
		}
		r := route{transport: tr, nexthop: nh, nexthops: splitList(nh)}
		if e.Line > 0 {
			r.where = t.Where(e)
			r.source = fmt.Sprintf("the transport_maps entry %q at %s", e.Key+" "+e.Value, r.where)
		} else {
			r.where = fmt.Sprintf("%s (postmap -q %s)", t.Spec, key)
			r.source = fmt.Sprintf("transport_maps %s, which answers %q for %s,", t.Spec, e.Value, key)
		}
		return r, true
	}
	if d.name != "*" && !strings.HasPrefix(d.name, "*.") {
		// Pattern tables see the full address only; any local part
		// stands for all.
		addr := "postmaster@" + d.name
		for _, t := range l.pf.TransportMaps {
			if own, _ := l.owner(t); own == foreign && patternTypes[t.Type] {
				if e, found, _ := l.lookup(t, addr); found {
					return hit(t, e, addr)
				}
			}
		}
	}
	for _, key := range l.transportKeys(d) {
		for _, t := range l.pf.TransportMaps {
			if own, _ := l.owner(t); own != foreign || patternTypes[t.Type] {
				continue
			}
			if e, found, _ := l.lookup(t, key); found {
				return hit(t, e, key)
			}
		}
	}
	return route{}, false
}

// defaultRoutes are the routes of mail that no transport_maps entry
// routes: those of sender-dependent entries (which the tables' source
// lists), and the one for every other sender.
func (l *linter) defaultRoutes() []route {
	var rs []route
	routed := map[string]bool{}
	for _, t := range l.pf.SenderTransportMaps {
		if own, _ := l.owner(t); own != foreign {
			continue // the daemon's sender.transport names no next hop
		}
		for _, e := range t.Entries {
			tr, nh := parseRoute(e.Value)
			if strings.EqualFold(e.Value, "DUNNO") || nh == "" || routed[e.Key] {
				continue
			}
			routed[e.Key] = true
			rs = append(rs, route{transport: tr, nexthop: nh, nexthops: splitList(nh), senders: e.Key, where: t.Where(e),
				source: fmt.Sprintf("the sender_dependent_default_transport_maps entry %q at %s", e.Key+" "+e.Value, t.Where(e))})
		}
	}
	main := l.pf.MainCF()
	if tr, nh := parseRoute(l.pf.DefaultTransport); nh != "" {
		return append(rs, route{transport: tr, nexthop: nh, nexthops: splitList(nh), where: main + " default_transport",
			source: fmt.Sprintf("default_transport = %s in %s", l.pf.DefaultTransport, main)})
	}
	for _, t := range l.pf.SenderRelayhostMaps {
		for _, e := range t.Entries {
			if strings.EqualFold(e.Value, "DUNNO") || routed[e.Key] {
				continue
			}
			routed[e.Key] = true
			rs = append(rs, route{nexthop: e.Value, nexthops: splitList(e.Value), senders: e.Key, where: t.Where(e),
				source: fmt.Sprintf("the sender_dependent_relayhost_maps entry %q at %s", e.Key+" "+e.Value, t.Where(e))})
		}
	}
	if l.pf.Relayhost != "" {
		rs = append(rs, route{nexthop: l.pf.Relayhost, nexthops: splitList(l.pf.Relayhost), where: main + " relayhost",
			source: fmt.Sprintf("relayhost = %s in %s, which applies to every destination without a transport_maps entry,", l.pf.Relayhost, main)})
	}
	return rs
}

// isSMTP reports whether a transport is delivered by the smtp(8) client,
// whose smtp_tls_policy_maps applies; "" is default_transport's. A
// transport master.cf does not define is taken for one.
func (l *linter) isSMTP(transport string) bool {
	if transport == "" {
		transport, _ = parseRoute(l.pf.DefaultTransport)
	}
	s := l.pf.Service(transport)
	return s == nil || s.Command == "smtp"
}

// routes reports destination rules whose mail Postfix sends to a next hop
// with a weaker floor. A next hop whose floor meets the rule's level is
// not reported: the mail is as protected as the rule asks, if on another
// hop.
func (l *linter) routes() {
	l.routeMaps()
	defaults := l.defaultRoutes()
	for _, d := range l.dests(false) {
		rule := l.rs.Match(d.key())
		if rule.Index < 0 {
			continue
		}
		routes := defaults
		if r, ok := l.transportRoute(d); ok {
			routes = []route{r}
		}
		for _, r := range routes {
			if !l.isSMTP(r.transport) {
				continue
			}
			for _, n := range r.nexthops {
				l.nexthop(d, rule, r, n)
			}
		}
	}
}

// nexthop reports the mail for d that r sends to next hop n, if the rules
// give n a weaker floor than rule.
func (l *linter) nexthop(d dest, rule *rules.Rule, r route, n string) {
	applies := "never applies to mail"
	if r.senders != "" {
		applies = "does not apply to mail from " + r.senders
	}
	k, err := rules.ParseKey(n)
	if err != nil {
		l.add(fmt.Sprintf("bad hop %s %s", r.where, n), rule.Line, r.where,
			"%s %s for %s: %s sends it to %s, so Postfix asks the policy map for %q, which the daemon refuses (%v), and Postfix defers that mail (4.7.5); write the next hop as [host], [host]:port or host:port with a numeric port",
			describe(rule), applies, d.text(), r.source, r.nexthop, n, err)
		return
	}
	got := l.rs.Match(k)
	if got.Level.Meets(rule.Level) {
		return
	}
	outcome := "less than this rule asks"
	if rule.Level.Encrypted() && !got.Level.Encrypted() {
		outcome = "so that mail may leave in plaintext"
	}
	l.add(fmt.Sprintf("hop %d %s %s", rule.Index, r.where, k), rule.Line, r.where,
		"%s %s for %s: %s sends it to %s, so Postfix asks the policy map for %q, which gets %s, %s; %s",
		describe(rule), applies, d.text(), r.source, r.nexthop, k, l.floorOf(got), outcome, l.fixFor(k, got, rule.Level))
}

// routeMaps checks the routing tables themselves: the daemon's maps in
// them must be the routing ones at its address, and tables the linter
// cannot read are named, since what they route is not checked.
func (l *linter) routeMaps() {
	lists := []struct {
		tables []*Table
		param  string
		want   string
	}{
		{l.pf.TransportMaps, "transport_maps", rules.MapTransport},
		{l.pf.SenderTransportMaps, "sender_dependent_default_transport_maps", rules.MapSenderTransport},
		{l.pf.SenderRelayhostMaps, "sender_dependent_relayhost_maps", ""},
	}
	for _, list := range lists {
		where := l.pf.MainCF() + " " + list.param
		for _, t := range list.tables {
			own, name := l.owner(t)
			switch {
			case own == elsewhere:
				l.add("elsewhere "+where+t.Spec, l.listenLine(), where,
					"%s lists %s, but the daemon listens on %s: write %s",
					where, t.Spec, l.listenText(), l.ourTable(name))
			case own != foreign && name != list.want:
				fix := "remove it"
				if list.want != "" {
					fix = "write " + l.ourTable(list.want)
				}
				l.add("wrong map "+where+t.Spec, l.listenLine(), where,
					"%s lists %s, the daemon's %s map, which does not answer %s lookups; %s",
					where, t.Spec, name, list.param, fix)
			case own == foreign && t.Source == "" && (remoteTypes[t.Type] || list.want != rules.MapTransport) && len(l.rs.Rules) > 0:
				l.add("unread "+where+t.Spec, l.settingLine("destinations"), where,
					"%s lists %s, whose entries tlspolicyd cannot list (a %s table without a source file it reads), so the next hops it routes to are not checked against the rules: give each next hop it names a destination rule at the level its destinations need",
					where, t.Spec, t.Type)
			}
		}
	}
	l.fallbacks()
}

// fallbacks reports destination rules with a fallback route when
// transport_maps does not ask the daemon's transport map, which is what
// answers those routes.
func (l *linter) fallbacks() {
	for _, t := range l.pf.TransportMaps {
		if own, name := l.owner(t); own == ownSocketmap && name == rules.MapTransport {
			return
		}
	}
	where := l.pf.MainCF() + " transport_maps"
	for _, r := range l.rs.Rules {
		if r.Fallback == "" || l.ourTable(rules.MapTransport) == "" {
			continue
		}
		l.add(fmt.Sprintf("fallback %d", r.Index), r.Line, where,
			"%s names the fallback route %q, but %s (%s) does not name the daemon's %s map, which answers it: Postfix never takes it; add %s to transport_maps",
			describe(r), r.Fallback, where, orEmpty(specList(l.pf.TransportMaps)), rules.MapTransport, l.ourTable(rules.MapTransport))
	}
}
