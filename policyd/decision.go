package policyd

import (
	"fmt"
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

// Decision is the engine's answer for one destination and map, with what
// it rests on, for query output and logs.
type Decision struct {
	Key    rules.Key
	Rule   *rules.Rule  // the rule that set the floor; nil for an unanswered .parent key
	Class  *rules.Class // the sender's class; nil for the default class
	Floor  rules.Level  // the rule's level, raised to meet the class level
	Level  rules.Level  // the level answered (LevelUnset when not found)
	Answer wire.Answer
	// Findings are the evidence consulted (nil: none was); Waited is set
	// when none was ready within probe.wait (the floor was answered).
	// They may be the cache's own copy: never modify them.
	Findings *Findings
	Waited   bool
	// Pending is set when the rules or a pin answered at once and the
	// evidence is being gathered in the background for later lookups.
	Pending bool
	Pin     *state.Pin // the destination's valid pin, if consulted
	// Published says which published policy (DANE, MTA-STS) decided, if
	// one did.
	Published string

	rules *rules.Rules // the rules the decision was made with
}

// Probed reports whether evidence from a probe was consulted.
func (d Decision) Probed() bool { return d.Findings != nil }

// Found reports whether the destination has an answer (a .parent key that
// no rule names has none, so that Postfix goes on to its next key).
func (d Decision) Found() bool { return d.Answer.Status == wire.StatusOK }

// setLevel answers level l with the rules' policy text for it.
//
// It sets the answer's fields one by one: assigning a whole wire.Answer
// built apart (policyAnswer) copies it through the stack, and the copy's
// wide loads of narrower stores just made stall the CPU, at every lookup.
func (d *Decision) setLevel(l rules.Level) {
	d.Level = l
	d.Answer.Status, d.Answer.Text, d.Answer.Label = wire.StatusOK, d.rules.PolicyText(l), l.String()
}

// raiseTo answers level l if it is above the answer so far.
func (d *Decision) raiseTo(l rules.Level) {
	if !d.Level.AtLeast(l) {
		d.setLevel(l)
	}
}

// decideFromRules is the decision the rules alone make for a raw key.
func decideFromRules(rs *rules.Rules, raw string, class *rules.Class) Decision {
	k, err := rules.ParseKey(raw)
	if err != nil {
		return Decision{rules: rs, Class: class, Answer: badKey(err)}
	}
	d := Decision{rules: rs, Key: k, Class: class, Rule: rs.Match(k)}
	if d.Rule == nil {
		d.Answer = notFound()
		return d
	}
	d.Floor = d.Rule.Floor(class)
	d.setLevel(d.Floor)
	return d
}

// Explain describes the decision for people: which rule decided, how the
// class changed it, and what evidence raised it or why none did.
func (d Decision) Explain() string {
	switch {
	case d.Answer.Status != wire.StatusOK && d.Rule == nil && d.Key.Kind == 0:
		return "the key is not a destination: " + d.Answer.Text
	case d.Rule == nil:
		return fmt.Sprintf("no rule is written for %s, so Postfix goes on to its next lookup key", d.Key)
	}
	s := fmt.Sprintf("floor %s from %s", d.Rule.Level, d.Rule.Describe())
	if d.Class != nil {
		s += fmt.Sprintf("; sender class %q needs %s (line %d)", d.Class.Name, d.Class.Level, d.Class.Line)
	}
	minTLS := d.rules.Settings.MinTLSVersion
	limit := d.Rule.Upgrade.Cap()
	switch {
	case d.Rule.Upgrade == rules.UpgradeNone:
		s += "; upgrade none: probes and pins do not change it"
	case d.Floor.AtLeast(limit):
		s += fmt.Sprintf("; already at or above what evidence may give (upgrade %s)", d.Rule.Upgrade)
	case d.Waited:
		s += "; no probe result within probe.wait: the floor is answered meanwhile"
	case d.Pending && d.Pin == nil:
		s += "; evidence is being gathered in the background: the rule answers meanwhile"
	case d.Published != "":
		s += fmt.Sprintf("; raised to %s by a published policy: %s", d.Level, d.Published)
	case d.Pin != nil && !d.Floor.AtLeast(d.Level) && (!d.Probed() || !capabilityLevel(d.Findings.Probe.Capability).AtLeast(d.Level)):
		s += fmt.Sprintf("; raised to %s by a pin (first seen %s, confirmed %s, expires %s)", d.Level,
			d.Pin.FirstSeen.UTC().Format(time.RFC3339), d.Pin.LastSeen.UTC().Format(time.RFC3339), d.Pin.Expires.UTC().Format(time.RFC3339))
	case d.Probed() && !d.Floor.AtLeast(d.Level):
		s += fmt.Sprintf("; raised to %s by probe (upgrade %s)", d.Level, d.Rule.Upgrade)
	case d.Probed() && d.Findings.Probe.Failed():
		s += "; the probe failed, so the floor holds: " + d.Findings.Probe.Reason(minTLS)
	case d.Probed():
		s += "; probe evidence does not allow more: " + d.Findings.Probe.Reason(minTLS)
	}
	if c := d.PinCap(); c != nil {
		s += "; " + c.Note
	}
	if d.Pin != nil && !d.Pin.LastDowngrade.IsZero() {
		s += fmt.Sprintf("; POSSIBLE DOWNGRADE ATTACK: a probe at %s saw less than the pinned %s (%s)",
			d.Pin.LastDowngrade.UTC().Format(time.RFC3339), d.Pin.Level, d.Pin.DowngradeReason)
	}
	return s
}
