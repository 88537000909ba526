package policyd

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/monoclock"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

// Engine decides destinations' TLS policies from the rules in force and
// the evidence gathered about them. The rules are one immutable
// rules.Rules behind an atomic pointer: a reload swaps the whole rule set
// at once, and lookups never take a lock.
type Engine struct {
	rules    atomic.Pointer[rules.Rules]
	findings FindingsSource // nil: rules only
	// cache is findings when that is the findings cache itself, which the
	// lookup path then calls directly (see cachedFindings).
	cache *tlsprobe.Cache[Findings]
	// mono is the clock of the cache and, when they share it (as in the
	// daemon), of the pins: a lookup reads it once for both. nil without
	// the cache.
	mono    *monoclock.Clock
	pins    *pinBook     // nil: no pins
	history *recorder    // nil: no decision history
	log     *slog.Logger // where log.decisions: all writes; nil: nowhere
}

// FindingsSource is what the engine needs from the findings cache (a
// tlsprobe.Cache of Findings): answers from memory, and probes on a miss.
type FindingsSource interface {
	// Get returns cached findings without waiting.
	Get(t tlsprobe.Target) (Findings, bool)
	// Lookup returns cached findings or waits for a probe until ctx ends.
	Lookup(ctx context.Context, t tlsprobe.Target) (Findings, bool)
	// Prefetch starts gathering findings that are missing or stale,
	// without waiting.
	Prefetch(t tlsprobe.Target)
	// Peek returns cached findings without starting anything.
	Peek(t tlsprobe.Target) (Findings, bool)
	// Keys returns the keys of every destination with cached findings.
	Keys() []string
}

// NewEngine returns an engine answering from rs, raising answers with the
// findings of src when src is not nil.
func NewEngine(rs *rules.Rules, src FindingsSource) *Engine {
	e := &Engine{findings: src}
	if e.cache, _ = src.(*tlsprobe.Cache[Findings]); e.cache != nil {
		e.mono = e.cache.Clock()
	}
	e.rules.Store(rs)
	return e
}

// The findings source's calls on the lookup path. A lookup's target
// borrows its strings from the lookup's key buffer (rules.KeyView.Borrow),
// so that a lookup answered from memory allocates nothing. Called directly
// on the findings cache, which copies what it keeps, the buffer stays on
// the stack; a call through the FindingsSource interface would move it to
// the heap on every lookup, since the compiler cannot see what an
// interface's method keeps. Other sources (tests' fakes) get a copy.
//
// Findings come back as a pointer, so that a hit copies none: the cache's
// own copy, which never changes once cached.
func (e *Engine) cachedFindings(t tlsprobe.Target, now time.Duration) *Findings {
	if e.cache != nil {
		return e.cache.RefAt(t, now)
	}
	return found(e.findings.Get(t.Clone()))
}

// now reads the clock of the cache and pins for one lookup (0 without the
// cache, whose clock is then not read).
func (e *Engine) now() time.Duration {
	if e.mono == nil {
		return 0
	}
	return e.mono.Now()
}

// found is a findings source's answer as the engine keeps it.
func found(f Findings, ok bool) *Findings {
	if !ok {
		return nil
	}
	return &f
}

func (e *Engine) prefetch(t tlsprobe.Target, now time.Duration) {
	if e.cache != nil {
		e.cache.PrefetchAt(t, now)
		return
	}
	e.findings.Prefetch(t.Clone())
}

func (e *Engine) waitFindings(ctx context.Context, t tlsprobe.Target) *Findings {
	if e.cache != nil {
		return found(e.cache.Lookup(ctx, t))
	}
	return found(e.findings.Lookup(ctx, t.Clone()))
}

// Rules returns the rule set in force.
func (e *Engine) Rules() *rules.Rules { return e.rules.Load() }

// SetRules puts a new rule set in force for every later lookup.
func (e *Engine) SetRules(rs *rules.Rules) { e.rules.Store(rs) }

// LookupTable answers one socketmap, tcp_table or Exim table lookup. It is
// the hot path: it reads the rules once, normalises the key into a buffer
// on its stack and matches it with map lookups, and returns a policy text
// prepared when the rules were loaded. Only a destination whose answer
// evidence could raise goes on to the pins and the findings. key is not
// retained.
func (e *Engine) LookupTable(ctx context.Context, mapName string, key []byte) wire.Answer {
	rs := e.rules.Load()
	var class *rules.Class
	switch mapName {
	case rules.MapTLSPolicy:
	case rules.MapTransport:
		return e.fallbackRoute(rs, key)
	case rules.MapSenderTransport:
		if c := rs.ClassFor(string(key)); c != nil {
			return routeAnswer(rules.ClassTransport(c.Name) + ":")
		}
		return notFound()
	default:
		if class = rs.Class(mapName); class == nil {
			// No label: map names come from the client, unbounded.
			return wire.Answer{Status: wire.StatusPerm, Text: "unknown map " + mapName}
		}
	}
	var buf rules.KeyBuf
	v, err := rules.AppendKey(buf[:0], key)
	if err != nil {
		return badKey(err)
	}
	r := rs.MatchView(v)
	if r == nil {
		return notFound()
	}
	r.MarkMatched()
	floor := r.Floor(class)
	if e.consultsEvidence(rs, r, v.Kind, floor) {
		return e.lookupEvidence(ctx, rs, mapName, v, r, class, floor)
	}
	a := policyAnswer(rs, floor)
	if changed := v.Kind != rules.KeyParent && e.changed(mapName, v.Name, a); changed || e.logsAll(rs) {
		e.record(rs, mapName, v.Key().String(), r, a, nil, changed)
	}
	return a
}

// lookupEvidence is LookupTable for a destination whose answer evidence
// could raise. It is a function of its own so that the rule-only path
// keeps a small stack frame.
func (e *Engine) lookupEvidence(ctx context.Context, rs *rules.Rules, mapName string, v rules.KeyView, r *rules.Rule, class *rules.Class, floor rules.Level) wire.Answer {
	// The key borrows the lookup's buffer (see cachedFindings). It stays
	// out of d, which record keeps parts of: the compiler cannot tell
	// which, and would move the buffer to the heap.
	k := v.Borrow()
	d := Decision{rules: rs, Class: class, Rule: r, Floor: floor}
	d.setLevel(floor)
	e.raise(ctx, &d, k, rs.Settings.ProbeWait, false)
	if changed := e.changed(mapName, v.Name, d.Answer); changed || e.logsAll(rs) {
		e.record(rs, mapName, k.String(), r, d.Answer, &d, changed)
	}
	return d.Answer
}

// The answers a lookup gives, each with the label tlspolicyd_answers_total
// counts it under.
func policyAnswer(rs *rules.Rules, l rules.Level) wire.Answer {
	return wire.Answer{Status: wire.StatusOK, Text: rs.PolicyText(l), Label: l.String()}
}
func routeAnswer(route string) wire.Answer {
	return wire.Answer{Status: wire.StatusOK, Text: route, Label: "route"}
}
func notFound() wire.Answer { return wire.Answer{Status: wire.StatusNotFound, Label: "notfound"} }
func badKey(err error) wire.Answer {
	return wire.Answer{Status: wire.StatusPerm, Text: err.Error(), Label: "error"}
}

// Decide answers for a destination as the map for sender's class would,
// waiting at most wait for evidence that is not in memory, even for a
// destination its rules or pin could answer at once (for `query`, which
// shows the evidence; lookups never wait for that).
func (e *Engine) Decide(ctx context.Context, destination, sender string, wait time.Duration) Decision {
	rs := e.rules.Load()
	var class *rules.Class
	if sender != "" {
		class = rs.ClassFor(sender)
	}
	d := decideFromRules(rs, destination, class)
	if d.Found() && e.consultsEvidence(rs, d.Rule, d.Key.Kind, d.Floor) {
		e.raise(ctx, &d, d.Key, wait, true)
	}
	return d
}

// consultsEvidence reports whether a destination's answer needs more than
// its rule: evidence could raise it (the floor is below the rule's upgrade
// cap, or a published policy applies), or a pin of it needs keeping fresh.
// A .parent key names no destination to probe, and dane-only is the
// highest level there is.
func (e *Engine) consultsEvidence(rs *rules.Rules, r *rules.Rule, kind rules.KeyKind, floor rules.Level) bool {
	if e.findings == nil || kind == rules.KeyParent || floor == rules.LevelDaneOnly {
		return false
	}
	return !floor.AtLeast(r.Upgrade.Cap()) || rs.WantsPublished(r, kind) || e.pins.any()
}

// raise applies the evidence to a decision made from the rules for key k.
// Published
// policies (DANE, then MTA-STS) apply whenever their source is enabled and
// the rule does not opt out; otherwise a destination whose rule allows
// upgrades is raised to what its pin and probe showed, capped by the
// rule's upgrade. Evidence only ever raises: no probe outcome, failure or
// delay answers below the floor.
//
// Evidence not in memory is waited for (at most wait) only for a
// destination the daemon knows nothing about: no rule names it and it has
// no pin. One that a rule or a pin answers is answered at once, and its
// evidence gathered in the background for the next lookup; patient (query)
// waits anyway.
func (e *Engine) raise(ctx context.Context, d *Decision, k rules.Key, wait time.Duration, patient bool) {
	t, ok := targetOf(k)
	if !ok {
		return
	}
	limit := d.Rule.Upgrade.Cap()
	wantPublished := d.rules.WantsPublished(d.Rule, k.Kind)
	now := e.now()
	// A pin answers at once, without waiting for a probe. The probe is
	// still kept fresh in the background: a pin that is never re-probed
	// would never be confirmed (it would lapse) and a downgrade never seen.
	if pin, ok := e.pinAt(t, now); ok {
		d.Pin = pin.pin
		d.raiseTo(rules.Lower(pin.level, limit))
		if d.Level.AtLeast(limit) && !wantPublished {
			e.prefetch(t, now)
			return
		}
	}
	if d.Level.AtLeast(limit) && !wantPublished {
		return // nothing evidence could add
	}
	if known := d.Pin != nil || d.Rule.Index >= 0; known && !patient {
		if d.Findings = e.cachedFindings(t, now); d.Findings == nil {
			e.prefetch(t, now)
			d.Pending = true
			return
		}
	} else if d.Findings = e.findingsAt(ctx, t, now, wait); d.Findings == nil {
		d.Waited = true
		return
	}
	if l, text, why := published(d.rules, d.Rule, k, d.Findings); l != rules.LevelUnset {
		// A published policy decides when it protects at least as well as
		// the answer so far; probes do not override it.
		if l.Meets(d.Level) {
			d.Level, d.Answer, d.Published = l, wire.Answer{Status: wire.StatusOK, Text: text, Label: l.String()}, why
		}
		return
	}
	d.raiseTo(rules.Lower(capabilityLevel(d.Findings.Probe.Capability), limit))
}

// pinFor returns the valid pin of a target.
func (e *Engine) pinFor(t tlsprobe.Target) (*state.Pin, bool) {
	if h, ok := e.pinAt(t, e.now()); ok {
		return h.pin, true
	}
	return nil, false
}

// pinAt is pinFor at time now, read by e.now, for the lookup path: the
// pin as memory holds it (see heldPin), if valid.
func (e *Engine) pinAt(t tlsprobe.Target, now time.Duration) (*heldPin, bool) {
	if e.pins == nil {
		return nil, false
	}
	if e.pins.clock != e.mono {
		now = e.pins.clock.Now()
	}
	h, ok := e.pins.getAt(t.Key(), now)
	return h, ok
}

// findingsFor returns the findings for a target: from the cache, or by
// waiting at most wait for a probe. Without a source there are none.
func (e *Engine) findingsFor(ctx context.Context, t tlsprobe.Target, wait time.Duration) *Findings {
	return e.findingsAt(ctx, t, e.now(), wait)
}

// findingsAt is findingsFor at time now, read by e.now.
func (e *Engine) findingsAt(ctx context.Context, t tlsprobe.Target, now time.Duration, wait time.Duration) *Findings {
	if e.findings == nil {
		return nil
	}
	if f := e.cachedFindings(t, now); f != nil {
		return f
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return e.waitFindings(wctx, t)
}

// fallbackRoute answers transport_maps: the fallback route of a
// destination whose rule has one and that evidence shows cannot meet the
// rule's level. It never waits: trivial-rewrite resolves every address
// through this map, so a miss starts the probe and answers NOTFOUND; the
// mail then goes direct under the rule's level (and defers if the
// destination cannot meet it), and the next queue run finds the evidence.
// An address key ("user@domain") is answered for its domain: Postfix
// (3.7) asks a socketmap transport_maps table for the full recipient
// address only, never for the domain or its parents (those partial keys go
// to fixed-string tables alone), so the domain is all a route can go by.
func (e *Engine) fallbackRoute(rs *rules.Rules, key []byte) wire.Answer {
	if i := bytes.LastIndexByte(key, '@'); i >= 0 {
		key = key[i+1:]
	}
	var buf rules.KeyBuf
	v, err := rules.AppendKey(buf[:0], key)
	if err != nil {
		return notFound()
	}
	r := rs.MatchView(v)
	if r == nil || r.Fallback == "" || !r.Level.Encrypted() {
		return notFound()
	}
	t, ok := targetOf(v.Key())
	if !ok {
		return notFound()
	}
	f := e.findingsFor(context.Background(), t, 0)
	if f == nil || f.Probe.Failed() || f.Probe.Capability >= neededCapability(r.Level) {
		return notFound()
	}
	a := routeAnswer(r.Fallback)
	if changed := e.changed(rules.MapTransport, v.Name, a); changed || e.logsAll(rs) {
		e.record(rs, rules.MapTransport, v.Key().String(), r, a, nil, changed)
	}
	return a
}

// Target is what to probe for a destination as Postfix names it: a
// domain's MX hosts, or a bracketed host itself.
func Target(destination string) (tlsprobe.Target, error) {
	k, err := rules.ParseKey(destination)
	if err != nil {
		return tlsprobe.Target{}, err
	}
	t, ok := targetOf(k)
	if !ok {
		return tlsprobe.Target{}, fmt.Errorf("%s names no single destination (a .parent key names many)", destination)
	}
	return t, nil
}

// Bracketed is the next hop that probes the IP address a destination
// names without brackets, for a hint: Postfix, and so the daemon, looks
// up MX records for a host written without brackets (127.0.0.1:2526 is
// the domain "127.0.0.1", port 2526), and an IP address has none. ok is
// false for any other destination.
func Bracketed(t tlsprobe.Target) (nexthop string, ok bool) {
	addr, err := netip.ParseAddr(t.Name)
	if t.Direct || err != nil {
		return "", false
	}
	host := addr.String()
	if addr.Is6() {
		host = "ipv6:" + host // as Postfix writes an IPv6 next hop
	}
	nexthop = "[" + host + "]"
	if t.Port != 0 {
		nexthop += ":" + strconv.Itoa(t.Port)
	}
	return nexthop, true
}

// targetOf is what to probe for a key: a domain's MX hosts, or the
// bracketed host itself. A .parent key names no single destination.
func targetOf(k rules.Key) (tlsprobe.Target, bool) {
	if k.Kind == rules.KeyParent || k.Kind == 0 {
		return tlsprobe.Target{}, false
	}
	t := tlsprobe.Target{Name: strings.TrimPrefix(k.Host, "ipv6:"), Direct: k.Direct, Port: k.Port}
	return t.KeyedBy(k.Name), true
}

// capabilityLevel is the level a probed capability supports.
func capabilityLevel(c tlsprobe.Capability) rules.Level {
	switch c {
	case tlsprobe.CapVerify:
		return rules.LevelVerify
	case tlsprobe.CapEncrypt:
		return rules.LevelEncrypt
	}
	return rules.LevelUnset
}
