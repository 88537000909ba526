package policyd

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

// Findings is everything the daemon has gathered about one destination,
// in the background, for lookups to answer from memory: the probe of its
// mail servers and what it publishes (DANE TLSA records, an MTA-STS
// policy). It is what the probe cache holds and the state store keeps.
type Findings struct {
	Probe tlsprobe.Report `json:"probe"`
	// DANE is the verdict of the TLSA records (dane.NoDANE when DANE is
	// off or the destination publishes none); DANEDetail says why.
	DANE       dane.Verdict `json:"dane"`
	DANEDetail string       `json:"dane_detail,omitempty"`
	// STS is the MTA-STS policy in force (mode testing or enforce), if
	// any; STSNote says how the last lookup went.
	STS     *mtasts.Policy `json:"mta_sts,omitempty"`
	STSNote string         `json:"mta_sts_note,omitempty"`
	// stsAnswer keeps the answer STS gives, once rendered, for every copy
	// of these findings; set with STS by setSTS.
	stsAnswer *stsAnswer
	// RecheckAt is when what the destination publishes must be read
	// again: the soonest TTL of the records behind STS and DANE runs out
	// (within dns.min_ttl and probe.ttl), so that a new MTA-STS id or a
	// withdrawn TLSA record is seen then, whatever probe.ttl says. Zero
	// when no published source was looked at.
	RecheckAt time.Time `json:"recheck_at,omitzero"`
	// probeKept reports that Probe was carried over from the findings
	// this refresh replaced: it confirms no pin and shows no downgrade
	// again.
	probeKept bool
	// peer reports that another daemon of the fleet gathered these
	// findings: the daemon took them (and learnt from them) when they
	// arrived (see fleetLocal.PutFindings).
	peer bool
}

// Failed implements tlsprobe.Evidence: nothing at all was learned.
func (f Findings) Failed() bool {
	return f.Probe.Failed() && f.STS == nil && (f.DANE == dane.NoDANE || f.DANE == dane.TempFail)
}

// Gathered implements tlsprobe.Evidence: findings last probe.ttl from the
// probe; re-reading the published records does not extend them.
func (f Findings) Gathered() time.Time { return f.Probe.ProbedAt }

// RefreshBy implements tlsprobe.Evidence.
func (f Findings) RefreshBy() time.Time { return f.RecheckAt }

// published is what a destination publishes, as a level and the policy
// text that carries it, with why, if any source applies. DANE comes before
// MTA-STS (RFC 8461 section 2: where both exist, DANE is used). A DANE
// lookup that failed gives nothing here: the floor and the other evidence
// hold. DANE answers carry no TLSRPT attributes, whatever postfix_version:
// Postfix reports DANE from its own TLSA lookups, and refuses the
// attributes on a policy that is not policy_type=sts (TLSRPT_README).
func published(rs *rules.Rules, rule *rules.Rule, k rules.Key, f *Findings) (rules.Level, string, string) {
	s := rs.Settings
	if s.DANEEnabled && rule.DANE {
		switch f.DANE {
		case dane.DANEOnly:
			return rules.LevelDaneOnly, rs.PolicyText(rules.LevelDaneOnly), "DANE: usable TLSA records at every MX"
		case dane.MixedDANE:
			return rules.LevelDane, rs.PolicyText(rules.LevelDane), "DANE: usable TLSA records at some MX"
		case dane.EncryptOnly:
			return rules.LevelEncrypt, rs.PolicyText(rules.LevelEncrypt), "DANE: TLSA records published but none usable: TLS without authentication"
		}
	}
	if s.MTASTSEnabled && rule.MTASTS && k.Kind == rules.KeyDomain && f.STS != nil && f.STS.Mode == mtasts.ModeEnforce {
		text, why := f.stsAnswer.render(f.STS, k.Name, s.MinimumTLS, s.PostfixVersion)
		return rules.LevelSecure, text, why
	}
	return rules.LevelUnset, "", ""
}

// setSTS makes p the MTA-STS policy of f, with room to keep its answer.
func (f *Findings) setSTS(p *mtasts.Policy) {
	f.STS, f.stsAnswer = p, new(stsAnswer)
}

// stsAnswer is the answer an enforced MTA-STS policy gives, kept once
// rendered: the policy text for Postfix is long and built from many parts,
// and lookups of the destinations that publish a policy (the largest mail
// providers among them) must not build it again at every hit. It is
// rendered again only when what it depends on besides the policy changes:
// the domain it is rendered for, and the settings a reload may change.
type stsAnswer struct{ last atomic.Pointer[renderedSTS] }

// renderedSTS is one rendering: the answer's text and why it applies, and
// the inputs it was made from.
type renderedSTS struct {
	domain, minTLS string
	version        rules.Version
	text, why      string
}

// render returns the text and reason of pol's answer for domain (see
// renderSTS), as kept if it was made from the same inputs. A nil a keeps
// nothing (findings made without setSTS). pol is taken by pointer: a hit
// reads none of it.
func (a *stsAnswer) render(pol *mtasts.Policy, domain, minTLS string, v rules.Version) (text, why string) {
	if a != nil {
		if r := a.last.Load(); r != nil && r.domain == domain && r.minTLS == minTLS && r.version == v {
			return r.text, r.why
		}
	}
	text, note := renderSTS(*pol, domain, minTLS, v)
	why = "MTA-STS policy in enforce mode (id " + pol.ID + ")" + note
	if a != nil {
		// domain may borrow the lookup's buffer: keep a copy.
		a.last.Store(&renderedSTS{domain: strings.Clone(domain), minTLS: minTLS, version: v, text: text, why: why})
	}
	return text, why
}

// renderSTS writes an enforced MTA-STS policy for recipient domain as a
// Postfix "secure" policy whose certificate names are the policy's mx
// patterns. servername= needs Postfix 3.4 and protocols=>= 3.6; older
// releases get neither attribute they cannot parse (SNI is then left out,
// which some servers need; RFC 8461 section 4.2).
//
// Postfix 3.10 and later also get the attributes its TLSRPT support needs
// to report on the policy (TLSRPT_README, "MTA-STS Support via
// smtp_tls_policy_maps"), after the others:
//
//	policy_type=sts policy_domain=DOMAIN
//	mx_host_pattern=PATTERN ...        one per distinct mx pattern, as
//	                                   in match= but "*.d" as written
//	{ policy_string = LINE } ...       one per line of the policy as
//	                                   fetched, in "{ }" when it holds a
//	                                   separator (white space, comma)
//
// Postfix 3.10.5 and later (smtp_tls_enforce_sts_mx_patterns = yes) then
// connect only to MX hosts that match a pattern and check the certificate
// against the MX host name. Releases before 3.10 refuse these attributes
// ("invalid attribute name") and defer the mail, so they never get them.
//
// The attributes are all or nothing: a pattern left out would make Postfix
// refuse an MX host the policy allows. They are left out, and note says
// why, when the answer with them would not fit every table type's reply
// (wire.FitsEveryTable; the 4096 bytes Postfix reads from tcp_table are
// the tighter limit, reached at about 26 mx lines), when Postfix would
// refuse them (a policy_domain its valid_hostname() rejects) or when it
// could crash on them (no mx pattern or no policy line); note is ""
// otherwise. A policy line holding "{" or "}", which Postfix's parser
// cannot carry, is left out of the policy_string lines alone.
func renderSTS(pol mtasts.Policy, domain, minTLS string, v rules.Version) (text, note string) {
	var b strings.Builder
	b.WriteString("secure match=")
	b.WriteString(pol.PostfixMatch())
	if v.AtLeast(3, 4) {
		b.WriteString(" servername=hostname")
	}
	b.WriteString(strings.TrimPrefix(rules.RenderPolicy(rules.LevelSecure, minTLS, v), "secure"))
	if !v.AtLeast(3, 10) {
		return b.String(), ""
	}
	plain := b.String()
	if !validPostfixHostname(domain) {
		return plain, "; TLSRPT attributes left out: Postfix would refuse policy_domain=" + domain
	}
	b.WriteString(" policy_type=sts")
	appendAttr(&b, "policy_domain", domain)
	for _, pat := range pol.MX {
		appendAttr(&b, "mx_host_pattern", pat)
	}
	lines := 0
	for _, line := range pol.ReportLines() {
		if !strings.ContainsAny(line, "{}") {
			appendAttr(&b, "policy_string", line)
			lines++
		}
	}
	// Postfix 3.10 crashed on policy_type=sts without an mx_host_pattern
	// or without a policy_string until a fix of 20251027 (HISTORY).
	if len(pol.MX) == 0 || lines == 0 {
		return plain, "; TLSRPT attributes left out: no mx pattern or no policy line to send"
	}
	if text = b.String(); !wire.FitsEveryTable(text) {
		return plain, fmt.Sprintf("; TLSRPT attributes left out: with them the answer would be %d bytes, more than a tcp_table reply can carry", len(text))
	}
	return text, ""
}

// appendAttr appends " name=value" to b, or " { name = value }" when value
// holds a character that separates attributes in a Postfix TLS policy
// (white space or a comma), the form Postfix 3.10 and later read
// (TLSRPT_README). value must hold no "{" or "}".
func appendAttr(b *strings.Builder, name, value string) {
	if strings.ContainsAny(value, " \t\r\n,") {
		b.WriteString(" { ")
		b.WriteString(name)
		b.WriteString(" = ")
		b.WriteString(value)
		b.WriteString(" }")
		return
	}
	b.WriteString(" ")
	b.WriteString(name)
	b.WriteString("=")
	b.WriteString(value)
}

// validPostfixHostname reports whether Postfix's valid_hostname() accepts
// name, as it must for policy_domain=: letters, digits, '_', inner hyphens
// and dots between labels of at most 63 bytes, 255 in all, not all digits.
func validPostfixHostname(name string) bool {
	if name == "" || len(name) > 255 || strings.Trim(name, "0123456789.") == "" {
		return false
	}
	// Labels are cut by index, not strings.SplitSeq, whose iterator makes
	// the compiler move name to the heap: name may borrow a lookup's
	// buffer (rules.KeyView.Borrow).
	for rest := name; rest != ""; {
		label := rest
		if i := strings.IndexByte(rest, '.'); i >= 0 {
			label, rest = rest[:i], rest[i+1:]
			if rest == "" {
				return false // a trailing dot: an empty last label
			}
		} else {
			rest = ""
		}
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
