package policyd

import (
	"errors"
	"fmt"
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

// A pin raises a destination's answer only as far as the rule's upgrade
// lets the daemon's own evidence raise it: a postmaster who pins verify
// under upgrade: encrypt gets encrypt. Everything that shows a pin says so,
// and where the cap is set, so that the pin never looks stronger than what
// is answered.

// PinCap says that a destination is answered below its pin, and which
// upgrade setting holds it there.
type PinCap struct {
	Pinned   string `json:"pinned"`   // the pin's level
	Answered string `json:"answered"` // the level answered
	Upgrade  string `json:"upgrade"`  // the upgrade in force: none or encrypt
	Rule     string `json:"rule"`     // "FILE:LINE" of that upgrade setting; "" for the built-in default
	// Note says all of it in a sentence, with what to change to answer
	// the pinned level.
	Note string `json:"note"`
}

// pinCap is how rule r of rs holds a destination answered at answered
// below its pin at pinned, or nil when the answer meets the pin or the
// upgrade allows the pinned level (then something other than the pin
// decided).
func pinCap(rs *rules.Rules, r *rules.Rule, destination string, pinned, answered rules.Level) *PinCap {
	if r == nil || answered.AtLeast(pinned) || r.Upgrade.Cap().AtLeast(pinned) {
		return nil
	}
	c := &PinCap{Pinned: pinned.String(), Answered: answered.String(), Upgrade: r.Upgrade.String()}
	where := fmt.Sprintf(" (the default: %s sets no defaults.upgrade)", rs.File)
	if r.UpgradeLine > 0 {
		c.Rule = fmt.Sprintf("%s:%d", rs.File, r.UpgradeLine)
		where = " at " + c.Rule
	}
	var fix string
	switch own := r.Index >= 0 && r.UpgradeLine > 0 && r.UpgradeLine != rs.Defaults.UpgradeLine; {
	case own:
		fix = fmt.Sprintf("set upgrade: %s there", pinned)
	case r.Index >= 0:
		fix = fmt.Sprintf("add upgrade: %s to its rule at %s:%d", pinned, rs.File, r.Line)
	default:
		fix = fmt.Sprintf("add a destination rule for %s with upgrade: %s (or set upgrade: %s in defaults, for every destination)",
			destination, pinned, pinned)
	}
	c.Note = fmt.Sprintf("pinned %s, answered %s: capped by upgrade: %s%s; to answer %s, %s",
		pinned, answered, r.Upgrade, where, pinned, fix)
	return c
}

// PinCap is how the rule's upgrade holds the decision below the
// destination's pin, or nil when it does not.
func (d Decision) PinCap() *PinCap {
	if d.Pin == nil || !d.Found() {
		return nil
	}
	return pinCap(d.rules, d.Rule, d.Key.String(), pinLevel(d.Pin), d.Level)
}

// CapOfPin is how the rules cap pin p in the default map: the level the
// pin gives there is the floor raised to the pin, no higher than the
// rule's upgrade allows. Nil when the rules let the pin answer its level.
// It reads the rules only, so that `pins` says the same with the daemon
// running or not; a published policy may still answer higher.
func CapOfPin(rs *rules.Rules, p state.Pin) *PinCap {
	d := decideFromRules(rs, p.Key, nil)
	if !d.Found() {
		return nil
	}
	pinned := pinLevel(&p)
	answered := rules.Higher(d.Floor, rules.Lower(pinned, d.Rule.Upgrade.Cap()))
	return pinCap(rs, d.Rule, d.Key.String(), pinned, answered)
}

// PinStatus is a pin as `pins list` and GET /admin/pins show it: the
// stored pin, and how the rules cap it (null when they do not).
type PinStatus struct {
	state.Pin
	Capped *PinCap `json:"capped"`
}

// PinStatuses describes pins under the rules rs.
func PinStatuses(rs *rules.Rules, pins []state.Pin) []PinStatus {
	out := make([]PinStatus, 0, len(pins)) // [] in JSON, not null
	for _, p := range pins {
		out = append(out, PinStatus{Pin: p, Capped: CapOfPin(rs, p)})
	}
	return out
}

// ErrPinLevel refuses a level no pin can have.
var ErrPinLevel = errors.New("a pin is encrypt or verify")

// PinLowerError refuses an administrator's pin below the destination's
// pin in force: lowering what a destination has proved weakens the
// protection against a downgrade, so it must be asked for (-force).
type PinLowerError struct {
	Current state.Pin // the pin in force
	Level   string    // the level asked for
}

func (e *PinLowerError) Error() string {
	return fmt.Sprintf("%s is pinned at %s (source %s, expires %s); pinning it at %s would lower the pin: "+
		"to lower it, add -force: tlspolicyd pins add -force %s %s (over HTTP: PUT /admin/pins/DESTINATION?level=LEVEL&force=true)",
		e.Current.Key, e.Current.Level, e.Current.Source, e.Current.Expires.UTC().Format(time.RFC3339), e.Level,
		e.Current.Key, e.Level)
}

// LowersPin refuses pin p when it would lower current, the destination's
// pin (nil: none), while current is in force at now.
func LowersPin(current *state.Pin, p state.Pin, now time.Time) error {
	if current == nil || !current.Valid(now) || pinLevel(&p).AtLeast(pinLevel(current)) {
		return nil
	}
	return &PinLowerError{Current: *current, Level: p.Level}
}
