package policyd

import (
	"context"
	"strings"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// Action is what the RCPT-time check tells the MTA to do with a recipient.
type Action uint8

const (
	ActionDunno  Action = iota // the destination can meet every requirement
	ActionReject               // on_fail: reject
	ActionDefer                // on_fail: defer, or not known yet / temporary failure
	ActionDiscard
	ActionHold
	ActionFilter // on_fail: fallback
)

var actionNames = [...]string{"dunno", "reject", "defer", "discard", "hold", "filter"}

// String is the action's metric label value.
func (a Action) String() string { return actionNames[a] }

// RcptDecision is the RCPT-time decision for one sender and recipient.
type RcptDecision struct {
	Action Action
	Class  *rules.Class // the sender's class, nil for the default class
	Rule   *rules.Rule  // the recipient domain's rule
	// Need is the level the requirement that failed asked for (class or
	// destination rule); Reason says why it cannot be met, or why the
	// answer is not known.
	Need    rules.Level
	Reason  string
	Message string // the configured message (class) or a default
	Route   string // the fallback route, for ActionFilter
}

// Render writes the decision as a Postfix access(5) action: the text
// carries the enhanced status code, the configured message and the reason,
// so the sender learns at once why the recipient was refused.
func (v RcptDecision) Render() string {
	switch v.Action {
	case ActionDunno:
		return "DUNNO"
	case ActionFilter:
		return "FILTER " + v.Route
	case ActionReject:
		return "REJECT 5.7.10 " + v.text()
	case ActionDefer:
		return "DEFER_IF_PERMIT 4.7.10 " + v.text()
	case ActionDiscard:
		return "DISCARD " + v.text()
	case ActionHold:
		return "HOLD " + v.text()
	}
	return "DEFER_IF_PERMIT 4.7.10 internal error"
}

func (v RcptDecision) text() string {
	t := v.Message
	if v.Reason != "" {
		t += " (" + v.Reason + ")"
	}
	// One line of printable text: Postfix puts it in an SMTP reply.
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, t)
}

// checkingMessage opens the replies that defer because the recipient
// domain's TLS support is not known yet or could not be checked.
const checkingMessage = "checking the TLS support of the recipient domain"

// defaultRuleMessage is the message of destination rules, which have none
// of their own.
const defaultRuleMessage = "recipient domain cannot receive mail with the TLS protection it requires"

// requirement is one level a recipient must meet, and what to do if not.
type requirement struct {
	need     rules.Level
	onFail   rules.OnFail
	fallback string
	message  string
}

// CheckRecipient decides at RCPT time whether mail from sender may go to
// recipient. The sender's class (if any) and the recipient domain's rule
// (if it has on_fail) each set a requirement; the recipient domain's
// evidence says whether it can meet it. A probe not finished within wait,
// or a temporary failure, defers: the sending MTA retries, and the probe
// is ready by then.
func (e *Engine) CheckRecipient(ctx context.Context, sender, recipient string) RcptDecision {
	rs := e.rules.Load()
	v := RcptDecision{Class: rs.ClassFor(sender)}
	domain := recipientDomain(recipient)
	if domain == "" {
		return v // no domain (a local recipient): not ours to judge
	}
	k, err := rules.ParseKey(domain)
	if err != nil || k.Kind != rules.KeyDomain {
		return v
	}
	t, _ := targetOf(k) // a domain always names a target
	v.Rule = rs.Match(k)
	var reqs []requirement
	if c := v.Class; c != nil && c.Level.Encrypted() {
		reqs = append(reqs, requirement{c.Level, c.OnFail, c.Fallback, c.Message})
	}
	if r := v.Rule; r.OnFail != rules.OnFailUnset && r.Level.Encrypted() {
		reqs = append(reqs, requirement{r.Level, r.OnFail, r.Fallback, defaultRuleMessage})
	}
	if len(reqs) == 0 {
		return v
	}
	// A valid pin vouches for what the destination has shown before: at
	// delivery the class map enforces it, so a stripping attacker makes
	// the mail defer, not go out in plaintext.
	pinned := rules.LevelUnset
	if pin, ok := e.pinFor(t); ok {
		pinned = pinLevel(pin)
	}
	var res tlsprobe.Report
	looked, ok := false, false
	for _, req := range reqs {
		if pinned.AtLeast(capabilityLevel(neededCapability(req.need))) {
			continue
		}
		if !looked {
			if f := e.findingsFor(ctx, t, rs.Settings.ProbeWait); f != nil {
				res, ok = f.Probe, true
			}
			looked = true
		}
		if out := judge(req, res, ok, rs.Settings.MinTLSVersion); out.Action != ActionDunno {
			out.Class, out.Rule = v.Class, v.Rule
			return out
		}
	}
	return v
}

// judge checks one requirement against the evidence.
func judge(req requirement, res tlsprobe.Report, known bool, minTLS uint16) RcptDecision {
	// Not knowing is not failing: those defers say so, without the
	// configured message (which tells the sender the domain cannot).
	v := RcptDecision{Need: req.need, Message: checkingMessage}
	switch {
	case !known:
		v.Action, v.Reason = ActionDefer, "not known yet; try again later"
		return v
	case res.Cause == tlsprobe.CauseNXDomain || res.Cause == tlsprobe.CauseNullMX:
		return RcptDecision{} // the domain takes no mail; delivery will fail on its own
	case res.Failed():
		v.Action, v.Reason = ActionDefer, "cannot check now: "+res.Reason(minTLS)
		return v
	}
	if res.Capability >= neededCapability(req.need) {
		return RcptDecision{}
	}
	v.Message, v.Reason = req.message, res.Reason(minTLS)
	switch req.onFail {
	case rules.OnFailDefer:
		v.Action = ActionDefer
	case rules.OnFailDiscard:
		v.Action = ActionDiscard
	case rules.OnFailHold:
		v.Action = ActionHold
	case rules.OnFailFallback:
		v.Action, v.Route = ActionFilter, req.fallback
	default:
		v.Action = ActionReject
	}
	return v
}

// neededCapability is the probe capability that lets a destination meet
// level l. Probes cannot establish DANE or the name match of secure, so
// those ask for the most a probe can show: a verified chain and name.
func neededCapability(l rules.Level) tlsprobe.Capability {
	if l == rules.LevelEncrypt {
		return tlsprobe.CapEncrypt
	}
	return tlsprobe.CapVerify
}

// recipientDomain returns the domain of an address, or "".
func recipientDomain(addr string) string {
	addr = strings.Trim(addr, "<>")
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return addr[i+1:]
}

// RcptService answers the wire's RCPT-time requests (policy delegation and
// Exim's rcpt.check) with the engine's decisions, counting each by class
// and action.
type RcptService struct {
	Engine  *Engine
	Metrics *Metrics // nil: not counted
}

// RcptAction implements wire.RcptChecker.
func (s RcptService) RcptAction(ctx context.Context, sender, recipient string) string {
	d := s.Engine.CheckRecipient(ctx, sender, recipient)
	s.Metrics.rcptDecision(d)
	action := d.Render()
	if d.Action != ActionDunno {
		s.Engine.recordRcpt(sender, recipient, d, action)
	}
	return action
}

// recordRcpt puts a refusal (or reroute) in the history of the recipient
// domain, once per domain, sender class and action: a flood of refused
// recipients must not flood the history.
func (e *Engine) recordRcpt(sender, recipient string, d RcptDecision, action string) {
	k, err := rules.ParseKey(recipientDomain(recipient))
	if err != nil || e.history == nil {
		return
	}
	class := "default"
	if d.Class != nil {
		class = d.Class.Name
	}
	if !e.history.changed("rcpt:"+class, []byte(k.Name), action) {
		return
	}
	e.history.offer(state.Decision{Time: e.clock(), Destination: k.Name, Map: MapRcpt, Answer: action,
		Rule: ruleRef(d.Rule), Evidence: state.Evidence{Sender: sender}})
}

// MapRcpt is the history's map name for RCPT-time actions.
const MapRcpt = "rcpt"
