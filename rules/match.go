package rules

import "bytes"

// Match returns the rule that sets a key's floor: the first rule in file
// order among those that match. Domains fall back to the defaults; a
// .parent key is answered only by .parent rules (nil otherwise), so that
// Postfix's follow-up lookups do not shadow its own table order.
func (rs *Rules) Match(k Key) *Rule { return rs.match(k.Kind, []byte(k.Name)) }

// MatchView is Match on a key held in a caller's buffer; it does not
// allocate (indexing a map with string(name) does not).
func (rs *Rules) MatchView(v KeyView) *Rule { return rs.match(v.Kind, v.Name) }

func (rs *Rules) match(kind KeyKind, name []byte) *Rule {
	switch kind {
	case KeyVerbatim:
		if r := rs.verbatim[string(name)]; r != nil {
			return r
		}
		return rs.Defaults
	case KeyParent:
		return rs.firstParent(name, rs.parent[string(name)])
	default:
		if r := rs.firstParent(name, rs.exact[string(name)]); r != nil {
			return r
		}
		return rs.Defaults
	}
}

// firstParent returns the earliest of best and the ".parent" rules for
// every parent of name.
func (rs *Rules) firstParent(name []byte, best *Rule) *Rule {
	if rs.parentLabels == 0 {
		return best
	}
	labels := bytes.Count(name, []byte{'.'}) + 1
	for i, c := range name {
		if c != '.' {
			continue
		}
		if labels--; rs.parentLabels&labelBit(labels) == 0 {
			continue // no .parent rule has a domain of this many labels
		}
		if r := rs.parent[string(name[i+1:])]; r != nil && (best == nil || r.Index < best.Index) {
			best = r
		}
	}
	return best
}

// labelBit is the bit of Rules.parentLabels for a domain of n labels.
func labelBit(n int) uint64 { return 1 << min(n, 63) }
