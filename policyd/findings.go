package policyd

import (
	"strings"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
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
}

// Failed implements tlsprobe.Evidence: nothing at all was learned.
func (f Findings) Failed() bool {
	return f.Probe.Failed() && f.STS == nil && (f.DANE == dane.NoDANE || f.DANE == dane.TempFail)
}

// Gathered implements tlsprobe.Evidence.
func (f Findings) Gathered() time.Time { return f.Probe.ProbedAt }

// published is what a destination publishes, as a level and the policy
// text that carries it, with why, if any source applies. DANE comes before
// MTA-STS (RFC 8461 section 2: where both exist, DANE is used). A DANE
// lookup that failed gives nothing here: the floor and the other evidence
// hold.
func published(rs *rules.Rules, rule *rules.Rule, k rules.Key, f Findings) (rules.Level, string, string) {
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
		return rules.LevelSecure, renderSTS(*f.STS, s.MinimumTLS, s.PostfixVersion),
			"MTA-STS policy in enforce mode (id " + f.STS.ID + ")"
	}
	return rules.LevelUnset, "", ""
}

// renderSTS writes an enforced MTA-STS policy as a Postfix "secure"
// policy whose certificate names are the policy's mx patterns. servername=
// needs Postfix 3.4 and protocols=>= 3.6; older releases get neither
// attribute they cannot parse (SNI is then left out, which some servers
// need; RFC 8461 section 4.2).
func renderSTS(pol mtasts.Policy, minTLS string, v rules.Version) string {
	var b strings.Builder
	b.WriteString("secure match=")
	b.WriteString(pol.PostfixMatch())
	if v.AtLeast(3, 4) {
		b.WriteString(" servername=hostname")
	}
	b.WriteString(strings.TrimPrefix(rules.RenderPolicy(rules.LevelSecure, minTLS, v), "secure"))
	return b.String()
}
