package fleet

import (
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

// Record is what the fleet knows of one destination's pin: the latest
// confirmed pin of each level a pin can have, and when an operator last
// removed the pin (`pins remove`), if ever. The pin in force is the
// stronger of the two that is valid (Effective).
//
// A removal is kept as a tombstone, not as a missing pin, because a
// missing pin cannot be told from a pin a daemon has not heard of yet: a
// stale daemon would push its copy back and resurrect it. A tombstone
// beats every pin confirmed (probed or added) at or before it, and no pin
// confirmed after it: a probe that proves TLS after the removal pins the
// destination again, as it would on a daemon alone. The clocks of the
// fleet's machines must agree (NTP): a skew of s lets a confirmation up
// to s before a removal survive it. Tombstones are dropped pin_ttl after
// the removal, when every pin confirmed before it has expired.
//
// Keeping a slot per level (rather than only the winner) makes Merge
// associative: copies merged in any order, or with messages missed and
// read later, give the same record.
type Record struct {
	Verify  *state.Pin `json:"verify,omitempty"`
	Encrypt *state.Pin `json:"encrypt,omitempty"`
	Removed time.Time  `json:"removed,omitzero"`
}

// RecordOf is the record of one pin (nil: none) and a removal time.
func RecordOf(p *state.Pin, removed time.Time) Record {
	r := Record{Removed: removed}
	if p != nil && p.LastSeen.After(removed) {
		if p.Level == "verify" {
			r.Verify = p
		} else {
			r.Encrypt = p
		}
	}
	return r
}

// Merge is the one rule by which copies of a record agree: the later
// removal, and for each level the pin confirmed last after it (with a
// single pin_ttl across the fleet, the one that expires last). It is
// commutative, associative and idempotent, and never drops a pin that
// no removal beats: a missed message never lowers a pin.
func Merge(a, b Record) Record {
	out := Record{Removed: a.Removed}
	if b.Removed.After(out.Removed) {
		out.Removed = b.Removed
	}
	out.Verify = later(a.Verify, b.Verify, out.Removed)
	out.Encrypt = later(a.Encrypt, b.Encrypt, out.Removed)
	return out
}

// later is the pin of x and y confirmed last after removed, nil if none.
func later(x, y *state.Pin, removed time.Time) *state.Pin {
	if x != nil && !x.LastSeen.After(removed) {
		x = nil
	}
	if y != nil && !y.LastSeen.After(removed) {
		y = nil
	}
	switch {
	case x == nil:
		return y
	case y == nil:
		return x
	}
	// A total order, so that ties resolve the same on every daemon.
	switch {
	case !x.LastSeen.Equal(y.LastSeen):
		return pick(x.LastSeen.After(y.LastSeen), x, y)
	case !x.Expires.Equal(y.Expires):
		return pick(x.Expires.After(y.Expires), x, y)
	case !x.LastDowngrade.Equal(y.LastDowngrade):
		return pick(x.LastDowngrade.After(y.LastDowngrade), x, y)
	case !x.FirstSeen.Equal(y.FirstSeen):
		return pick(x.FirstSeen.Before(y.FirstSeen), x, y)
	case x.Source != y.Source:
		return pick(x.Source < y.Source, x, y)
	}
	return pick(x.DowngradeReason <= y.DowngradeReason, x, y)
}

func pick(first bool, x, y *state.Pin) *state.Pin {
	if first {
		return x
	}
	return y
}

// Effective is the pin a record puts in force at now: the stronger valid
// one, else (both expired, or none) the one that expires last, or nil.
func (r Record) Effective(now time.Time) *state.Pin {
	switch {
	case r.Verify == nil:
		return r.Encrypt
	case r.Encrypt == nil:
		return r.Verify
	case Beats(*r.Verify, *r.Encrypt, now):
		return r.Verify
	}
	return r.Encrypt
}

// Beats reports whether pin a wins over pin b of the same destination in
// the pin book: a pin in force beats an expired one, then the stronger
// level wins, then the later expiry, then the later confirmation.
func Beats(a, b state.Pin, now time.Time) bool {
	if va, vb := a.Valid(now), b.Valid(now); va != vb {
		return va
	}
	la, _ := rules.ParseLevel(a.Level)
	lb, _ := rules.ParseLevel(b.Level)
	if la != lb {
		return la.AtLeast(lb)
	}
	if !a.Expires.Equal(b.Expires) {
		return a.Expires.After(b.Expires)
	}
	return a.LastSeen.After(b.LastSeen)
}

// Same reports whether two records say the same.
func Same(a, b Record) bool {
	return a.Removed.Equal(b.Removed) && samePin(a.Verify, b.Verify) && samePin(a.Encrypt, b.Encrypt)
}

func samePin(p, q *state.Pin) bool {
	if p == nil || q == nil {
		return p == q
	}
	return p.Key == q.Key && p.Level == q.Level && p.Expires.Equal(q.Expires) && p.LastSeen.Equal(q.LastSeen) &&
		p.FirstSeen.Equal(q.FirstSeen) && p.Source == q.Source && p.LastDowngrade.Equal(q.LastDowngrade) &&
		p.DowngradeReason == q.DowngradeReason
}

// expired reports whether r says nothing any more at now: no pin in
// force, and no tombstone younger than ttl.
func (r Record) expired(now time.Time, ttl time.Duration) bool {
	valid := func(p *state.Pin) bool { return p != nil && p.Valid(now) }
	return !valid(r.Verify) && !valid(r.Encrypt) && (r.Removed.IsZero() || now.Sub(r.Removed) > ttl)
}
