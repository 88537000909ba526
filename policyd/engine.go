package policyd

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// Socketmap names with a fixed meaning (SPEC.md); every other name is a
// sender class or unknown.
const (
	MapTLSPolicy = "tlspolicy"
	MapTransport = "transport"
	// MapSenderTransport answers sender_dependent_default_transport_maps:
	// the class transport ("smtp-CLASS:") of a class's senders. Its name
	// has a dot, which no class name can have, so it never clashes.
	MapSenderTransport = "sender.transport"
)

// ClassTransport is the master.cf transport that carries a class's mail:
// an smtp(8) whose smtp_tls_policy_maps is the class's socketmap.
func ClassTransport(class string) string { return "smtp-" + class }

// Engine decides destinations' TLS policies from the rules in force. The
// rules are one immutable Policy behind an atomic pointer: a reload swaps
// the whole rule set at once, and lookups never take a lock.
type Engine struct {
	policy   atomic.Pointer[Policy]
	evidence Evidence // nil: rules only
	pins     *pinBook // nil: no pins
}

// Evidence is what the engine needs from probing: the tlsprobe.Cache.
type Evidence interface {
	// Get returns a cached result without waiting.
	Get(t tlsprobe.Target) (Findings, bool)
	// Lookup returns a cached result or waits for a probe until ctx ends.
	Lookup(ctx context.Context, t tlsprobe.Target) (Findings, bool)
}

// NewEngine returns an engine answering from p, raising answers with
// probe evidence when ev is not nil.
func NewEngine(p *Policy, ev Evidence) *Engine {
	e := &Engine{evidence: ev}
	e.policy.Store(p)
	return e
}

// Policy returns the rule set in force.
func (e *Engine) Policy() *Policy { return e.policy.Load() }

// SetPolicy puts a new rule set in force for every later lookup.
func (e *Engine) SetPolicy(p *Policy) { e.policy.Store(p) }

// Decision is the engine's answer for one destination, with what it rests
// on, for query output, logs and (later) delegation replies.
type Decision struct {
	Key    Key
	Rule   *Rule  // the rule that set the floor; nil for an unanswered .parent key
	Class  *Class // the sender's class; nil for the default class
	Floor  Level  // the rule's level, raised to the class level
	Level  Level  // the level answered (LevelUnset when not found)
	Answer Answer
	// Findings are the evidence consulted, if Probed; Waited is set when
	// none was ready within probe.wait (the floor was answered).
	Findings Findings
	Probed   bool
	Waited   bool
	Pin      *state.Pin // the destination's valid pin, if consulted
	// Published says which published policy (DANE, MTA-STS) decided, if
	// one did.
	Published string
}

// Found reports whether the destination has an answer (a .parent key that
// no rule names has none, so that Postfix goes on to its next key).
func (d Decision) Found() bool { return d.Answer.Status == StatusOK }

// LookupTable answers one socketmap or tcp_table lookup. It is the hot
// path: it reads the policy once, normalises the key into a buffer on its
// stack and matches it with map lookups, and returns a reply prepared when
// the rules were loaded. Only a destination whose answer evidence could
// raise goes on to the pins and the probe cache. key is not retained.
func (e *Engine) LookupTable(ctx context.Context, mapName string, key []byte) Answer {
	p := e.policy.Load()
	var class *Class
	switch mapName {
	case MapTLSPolicy:
	case MapTransport:
		return e.fallbackRoute(p, key)
	case MapSenderTransport:
		if c := p.senders.classFor(string(key)); c != nil {
			return Answer{Status: StatusOK, Text: ClassTransport(c.Name) + ":"}
		}
		return Answer{Status: StatusNotFound}
	default:
		if class = p.classByName(mapName); class == nil {
			return Answer{Status: StatusPerm, Text: "unknown map " + mapName}
		}
	}
	var buf [keyBufLen]byte
	v, err := parseKey(buf[:0], key)
	if err != nil {
		return Answer{Status: StatusPerm, Text: err.Error()}
	}
	r := p.match(v.kind, v.name)
	if r == nil {
		return Answer{Status: StatusNotFound}
	}
	floor := p.floor(r, class)
	if !e.consultsEvidence(p, r, v.kind, floor) {
		return p.answers[floor]
	}
	d := Decision{Key: v.key(), Class: class, Rule: r, Floor: floor, Level: floor, Answer: p.answers[floor]}
	e.raise(ctx, p, &d, p.Settings.ProbeWait)
	return d.Answer
}

// Decide answers for a destination as the map for sender's class would,
// waiting at most wait for a probe.
func (e *Engine) Decide(ctx context.Context, destination, sender string, wait time.Duration) Decision {
	p := e.policy.Load()
	var class *Class
	if sender != "" {
		class = p.senders.classFor(sender)
	}
	return e.decide(ctx, p, destination, class, wait)
}

// decide applies the rules, then the evidence.
func (e *Engine) decide(ctx context.Context, p *Policy, raw string, class *Class, wait time.Duration) Decision {
	d := p.decide(raw, class)
	if d.Found() && e.consultsEvidence(p, d.Rule, d.Key.Kind, d.Floor) {
		e.raise(ctx, p, &d, wait)
	}
	return d
}

// consultsEvidence reports whether a destination's answer needs more than
// its rule: evidence could raise it (the floor is below the rule's upgrade
// cap, or a published policy applies), or a pin of it needs keeping fresh.
// A .parent key names no destination to probe, and dane-only is the
// highest level there is.
func (e *Engine) consultsEvidence(p *Policy, r *Rule, kind KeyKind, floor Level) bool {
	if e.evidence == nil || kind == KeyParent || floor == LevelDaneOnly {
		return false
	}
	return floor < r.Upgrade.Cap() || p.wantsPublished(r, kind) || e.pins.any()
}

// raise applies the evidence to a decision made from the rules. Published
// policies (DANE, then MTA-STS) apply whenever their source is enabled and
// the rule does not opt out; otherwise a destination whose rule allows
// upgrades is raised to what its pin and probe showed, capped by the
// rule's upgrade. Evidence only ever raises: no probe outcome, failure or
// delay answers below the floor.
func (e *Engine) raise(ctx context.Context, p *Policy, d *Decision, wait time.Duration) {
	t, ok := d.Key.Target()
	if !ok {
		return
	}
	limit := d.Rule.Upgrade.Cap()
	wantPublished := p.wantsPublished(d.Rule, d.Key.Kind)
	// A pin answers at once, without waiting for a probe. The probe is
	// still kept fresh in the background: a pin that is never re-probed
	// would never be confirmed (it would lapse) and a downgrade never seen.
	if pin, ok := e.pinFor(t); ok {
		d.Pin = pin
		if l := min(pinLevel(pin), limit); l > d.Level {
			d.Level, d.Answer = l, p.answers[l]
		}
		if d.Level >= limit && !wantPublished {
			e.refresh(t)
			return
		}
	}
	if d.Level >= limit && !wantPublished {
		return // nothing evidence could add
	}
	d.Findings, d.Probed = e.evidenceFor(ctx, d.Key, wait)
	if !d.Probed {
		d.Waited = true
		return
	}
	if l, a, why := p.published(d.Rule, d.Key, d.Findings); l != LevelUnset {
		// A published policy decides when it protects at least as well as
		// the answer so far; probes do not override it.
		if Stronger(d.Level, l) == l {
			d.Level, d.Answer, d.Published = l, a, why
		}
		return
	}
	if l := min(capabilityLevel(d.Findings.Probe.Capability), limit); l > d.Level {
		d.Level, d.Answer = l, p.answers[l]
	}
}

// wantsPublished reports whether a published-policy source applies to a
// destination: enabled in the settings and not opted out by its rule.
func (p *Policy) wantsPublished(r *Rule, kind KeyKind) bool {
	s := p.Settings
	return (s.DANEEnabled && r.DANE) || (s.MTASTSEnabled && r.MTASTS && kind == KeyDomain)
}

// pinFor returns the valid pin of a target.
func (e *Engine) pinFor(t tlsprobe.Target) (*state.Pin, bool) {
	if e.pins == nil {
		return nil, false
	}
	return e.pins.get(t.Key())
}

// refresh makes sure evidence for t is cached or being gathered, without
// waiting: Get starts a background refresh of a stale result, and a miss
// starts a probe whose result the next lookup finds.
func (e *Engine) refresh(t tlsprobe.Target) {
	if e.evidence == nil {
		return
	}
	if _, ok := e.evidence.Get(t); !ok {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		e.evidence.Lookup(ctx, t)
	}
}

// evidenceFor returns the probe result for a key: from the cache, or by
// waiting at most wait for a probe. Without a prober there is none.
func (e *Engine) evidenceFor(ctx context.Context, k Key, wait time.Duration) (Findings, bool) {
	t, ok := k.Target()
	if e.evidence == nil || !ok {
		return Findings{}, false
	}
	if r, ok := e.evidence.Get(t); ok {
		return r, true
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return e.evidence.Lookup(wctx, t)
}

// fallbackRoute answers transport_maps: the fallback route of a
// destination whose rule has one and that evidence shows cannot meet the
// rule's level. It never waits: trivial-rewrite resolves every address
// through this map, so a miss starts the probe and answers NOTFOUND; the
// mail then goes direct under the rule's level (and defers if the
// destination cannot meet it), and the next queue run finds the evidence.
// Address keys ("user@domain") are NOTFOUND so Postfix asks for the domain.
func (e *Engine) fallbackRoute(p *Policy, key []byte) Answer {
	notFound := Answer{Status: StatusNotFound}
	if bytes.IndexByte(key, '@') >= 0 {
		return notFound
	}
	var buf [keyBufLen]byte
	v, err := parseKey(buf[:0], key)
	if err != nil {
		return notFound
	}
	r := p.match(v.kind, v.name)
	if r == nil || r.Fallback == "" || !r.Level.Encrypted() {
		return notFound
	}
	f, ok := e.evidenceFor(context.Background(), v.key(), 0)
	if res := f.Probe; !ok || res.Failed() || res.Capability >= neededCapability(r.Level) {
		return notFound
	}
	return Answer{Status: StatusOK, Text: r.Fallback}
}

// capabilityLevel is the level a probed capability supports.
func capabilityLevel(c tlsprobe.Capability) Level {
	switch c {
	case tlsprobe.CapVerify:
		return LevelVerify
	case tlsprobe.CapEncrypt:
		return LevelEncrypt
	}
	return LevelUnset
}

func (p *Policy) decide(raw string, class *Class) Decision {
	k, err := ParseKey(raw)
	if err != nil {
		return Decision{Class: class, Answer: Answer{Status: StatusPerm, Text: err.Error()}}
	}
	d := Decision{Key: k, Class: class, Rule: p.Match(k)}
	if d.Rule == nil {
		d.Answer = Answer{Status: StatusNotFound}
		return d
	}
	d.Floor = p.floor(d.Rule, class)
	d.Level, d.Answer = d.Floor, p.answers[d.Floor]
	return d
}

// floor is the level a rule sets for a class's mail: the rule's level,
// raised to the class level.
func (p *Policy) floor(r *Rule, class *Class) Level {
	if class != nil {
		return Stronger(r.Level, class.Level)
	}
	return r.Level
}

// classByName finds a class by its map name.
func (p *Policy) classByName(name string) *Class {
	for _, c := range p.Classes { // a handful of classes: a scan beats a map
		if c.Name == name {
			return c
		}
	}
	return nil
}

// ClassFor returns the class of an envelope sender (nil: default class).
func (p *Policy) ClassFor(sender string) *Class { return p.senders.classFor(sender) }

// Match returns the rule that sets a key's floor: the first rule in file
// order among those that match. Domains fall back to the defaults; a
// .parent key is answered only by .parent rules (nil otherwise), so that
// Postfix's follow-up lookups do not shadow its own table order.
func (p *Policy) Match(k Key) *Rule { return p.match(k.Kind, []byte(k.Name)) }

// match is Match on a normalised name held in bytes; indexing a map with
// string(name) does not allocate.
func (p *Policy) match(kind KeyKind, name []byte) *Rule {
	switch kind {
	case KeyVerbatim:
		if r := p.verbatim[string(name)]; r != nil {
			return r
		}
		return p.Defaults
	case KeyParent:
		return p.firstParent(name, p.parent[string(name)])
	default:
		if r := p.firstParent(name, p.exact[string(name)]); r != nil {
			return r
		}
		return p.Defaults
	}
}

// firstParent returns the earliest of best and the ".parent" rules for
// every parent of name.
func (p *Policy) firstParent(name []byte, best *Rule) *Rule {
	if p.parentLabels == 0 {
		return best
	}
	labels := bytes.Count(name, []byte{'.'}) + 1
	for i, c := range name {
		if c != '.' {
			continue
		}
		if labels--; p.parentLabels&labelBit(labels) == 0 {
			continue // no .parent rule has a domain of this many labels
		}
		if r := p.parent[string(name[i+1:])]; r != nil && (best == nil || r.Index < best.Index) {
			best = r
		}
	}
	return best
}

// labelBit is the bit of Policy.parentLabels for a domain of n labels.
func labelBit(n int) uint64 { return 1 << min(n, 63) }

// Explain describes a decision for people: which rule decided and how the
// class changed it.
func (p *Policy) Explain(d Decision) string {
	switch {
	case d.Answer.Status != StatusOK && d.Rule == nil && d.Key.Kind == 0:
		return "the key is not a destination: " + d.Answer.Text
	case d.Rule == nil:
		return fmt.Sprintf("no rule is written for %s, so Postfix goes on to its next lookup key", d.Key)
	}
	s := fmt.Sprintf("floor %s from %s", d.Rule.Level, d.Rule.Describe(p.File))
	if d.Class != nil {
		s += fmt.Sprintf("; sender class %q needs %s (line %d)", d.Class.Name, d.Class.Level, d.Class.Line)
	}
	limit := d.Rule.Upgrade.Cap()
	switch {
	case d.Rule.Upgrade == UpgradeNone:
		s += "; upgrade none: probes do not change it"
	case d.Floor >= limit:
		s += fmt.Sprintf("; already at or above what evidence may give (upgrade %s)", d.Rule.Upgrade)
	case d.Waited:
		s += "; no probe result within probe.wait: the floor is answered meanwhile"
	case d.Published != "":
		s += fmt.Sprintf("; raised to %s by a published policy: %s", d.Level, d.Published)
	case d.Pin != nil && d.Level > d.Floor && (!d.Probed || capabilityLevel(d.Findings.Probe.Capability) < d.Level):
		s += fmt.Sprintf("; raised to %s by a pin (first seen %s, confirmed %s, expires %s)", d.Level,
			d.Pin.FirstSeen.UTC().Format(time.RFC3339), d.Pin.LastSeen.UTC().Format(time.RFC3339), d.Pin.Expires.UTC().Format(time.RFC3339))
	case d.Probed && d.Level > d.Floor:
		s += fmt.Sprintf("; raised to %s by probe (upgrade %s)", d.Level, d.Rule.Upgrade)
	case d.Probed && d.Findings.Probe.Failed():
		s += "; the probe failed, so the floor holds: " + d.Findings.Probe.Reason(p.minTLS())
	case d.Probed:
		s += "; probe evidence does not allow more: " + d.Findings.Probe.Reason(p.minTLS())
	}
	if d.Pin != nil && !d.Pin.LastDowngrade.IsZero() {
		s += fmt.Sprintf("; POSSIBLE DOWNGRADE ATTACK: a probe at %s saw less than the pinned %s (%s)",
			d.Pin.LastDowngrade.UTC().Format(time.RFC3339), d.Pin.Level, d.Pin.DowngradeReason)
	}
	return s
}
