package policyd

import (
	"context"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

const rcptRules = `
probe: {wait: 10ms}
destinations:
  - match: partner.test
    level: verify
    on_fail: fallback
    fallback: "smtp:[gateway.partner.test]:2525"
  - match: strict.test
    level: encrypt
    on_fail: defer
classes:
  - name: phi
    senders: ["@clinic.test", "@.clinic.test"]
    level: verify
    on_fail: reject
    message: "use the secure portal"
  - name: portal
    senders: ["@portal-users.test"]
    level: verify
    on_fail: fallback
    fallback: "portal:[portal.test]"
  - name: hold
    senders: ["<>"]
    level: encrypt
    on_fail: hold
  - name: drop
    senders: ["@drop.test"]
    level: encrypt
    on_fail: discard
  - name: later
    senders: ["@later.test"]
    level: encrypt
    on_fail: defer
`

func rcptEvidence() *fakeFindings {
	host := func(name string, c tlsprobe.Capability, cause tlsprobe.Cause, v uint16) tlsprobe.Report {
		return tlsprobe.Report{Capability: c, Cause: cause, Hosts: []tlsprobe.HostReport{
			{Host: name, Capability: c, Cause: cause, TLSVersion: v, STARTTLS: cause != tlsprobe.CauseNoSTARTTLS},
		}}
	}
	return &fakeFindings{results: map[string]tlsprobe.Report{
		"good.test":     host("mx.good.test", tlsprobe.CapVerify, tlsprobe.CauseNone, 0x0304),
		"plain.test":    host("mx.plain.test", tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS, 0),
		"old.test":      host("mx.old.test", tlsprobe.CapNone, tlsprobe.CauseOldTLS, 0x0301),
		"selfsign.test": host("mx.selfsign.test", tlsprobe.CapEncrypt, tlsprobe.CauseUnknownAuthority, 0x0304),
		"dnsfail.test":  {Capability: tlsprobe.CapUnknown, Cause: tlsprobe.CauseDNS, Detail: "MX lookup: server failure"},
		"nomail.test":   {Capability: tlsprobe.CapUnknown, Cause: tlsprobe.CauseNullMX},
		"partner.test":  host("mx.partner.test", tlsprobe.CapEncrypt, tlsprobe.CauseNameMismatch, 0x0303),
		"strict.test":   host("mx.strict.test", tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS, 0),
	}}
}

func TestCheckRecipient(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, rcptRules), rcptEvidence())
	tests := []struct {
		sender, rcpt, want string
	}{
		{"doctor@clinic.test", "a@good.test", "DUNNO"},
		{"doctor@clinic.test", "a@plain.test", "REJECT 5.7.10 use the secure portal (no STARTTLS at mx.plain.test)"},
		{"Doctor@Lab.Clinic.TEST", "a@PLAIN.test", "REJECT 5.7.10 use the secure portal (no STARTTLS at mx.plain.test)"},
		{"doctor@clinic.test", "a@old.test", "REJECT 5.7.10 use the secure portal (TLSv1 below TLSv1.2 at mx.old.test)"},
		{"doctor@clinic.test", "a@selfsign.test", "REJECT 5.7.10 use the secure portal (untrusted certificate issuer at mx.selfsign.test)"},
		{"doctor@clinic.test", "a@tarpit.test", "DEFER_IF_PERMIT 4.7.10 checking the TLS support of the recipient domain (not known yet; try again later)"},
		{"doctor@clinic.test", "a@dnsfail.test", "DEFER_IF_PERMIT 4.7.10 checking the TLS support of the recipient domain (cannot check now: MX lookup: server failure)"},
		{"doctor@clinic.test", "a@nomail.test", "DUNNO"}, // takes no mail at all: not ours to refuse
		{"x@portal-users.test", "a@plain.test", "FILTER portal:[portal.test]"},
		{"x@portal-users.test", "a@good.test", "DUNNO"},
		{"", "a@plain.test", "HOLD recipient domain cannot receive mail with the required TLS protection (no STARTTLS at mx.plain.test)"},
		{"x@drop.test", "a@plain.test", "DISCARD recipient domain cannot receive mail with the required TLS protection (no STARTTLS at mx.plain.test)"},
		{"x@later.test", "a@plain.test", "DEFER_IF_PERMIT 4.7.10 recipient domain cannot receive mail with the required TLS protection (no STARTTLS at mx.plain.test)"},
		{"x@later.test", "a@selfsign.test", "DUNNO"}, // encrypt is enough for that class
		// Ordinary senders: only destination rules with on_fail apply.
		{"someone@example.org", "a@plain.test", "DUNNO"},
		{"someone@example.org", "a@partner.test", "FILTER smtp:[gateway.partner.test]:2525"},
		{"someone@example.org", "a@strict.test", "DEFER_IF_PERMIT 4.7.10 recipient domain cannot receive mail with the TLS protection it requires (no STARTTLS at mx.strict.test)"},
		// The class requirement comes first.
		{"doctor@clinic.test", "a@partner.test", "REJECT 5.7.10 use the secure portal (certificate not valid for mx.partner.test)"},
		{"doctor@clinic.test", "postmaster", "DUNNO"}, // no domain
	}
	for _, tt := range tests {
		v := e.CheckRecipient(context.Background(), tt.sender, tt.rcpt)
		if got := v.Render(); got != tt.want {
			t.Errorf("CheckRecipient(%q, %q)\n got %s\nwant %s", tt.sender, tt.rcpt, got, tt.want)
		}
	}
}

func TestVerdictRenderIsOneLine(t *testing.T) {
	t.Parallel()
	v := RcptDecision{Action: ActionReject, Message: "bad\r\nline", Reason: "x\ny"}
	if got := v.Render(); strings.ContainsAny(got, "\r\n") {
		t.Errorf("Render = %q, must be one line", got)
	}
}

func TestTransportMap(t *testing.T) {
	t.Parallel()
	ev := rcptEvidence()
	ev.results["partner-ok.test"] = tlsprobe.Report{Capability: tlsprobe.CapVerify}
	text := strings.Replace(rcptRules, "  - match: strict.test", `  - match: partner-ok.test
    level: verify
    fallback: "smtp:[gw.test]"
  - match: unknown-yet.test
    level: verify
    fallback: "smtp:[gw.test]"
  - match: strict.test`, 1)
	e := NewEngine(mustLoad(t, text), ev)
	tests := []struct {
		key    string
		status wire.Status
		text   string
	}{
		{"partner.test", wire.StatusOK, "smtp:[gateway.partner.test]:2525"},      // cannot meet verify
		{"user@partner.test", wire.StatusOK, "smtp:[gateway.partner.test]:2525"}, // Postfix asks a socketmap for the address only
		{"user@plain.test", wire.StatusNotFound, ""},                             // an address answers as its domain
		{"partner-ok.test", wire.StatusNotFound, ""},                             // meets its level
		{"unknown-yet.test", wire.StatusNotFound, ""},                            // no evidence yet: direct, under its floor
		{"strict.test", wire.StatusNotFound, ""},                                 // no fallback configured
		{"plain.test", wire.StatusNotFound, ""},                                  // no rule
	}
	for _, tt := range tests {
		got := e.LookupTable(context.Background(), rules.MapTransport, []byte(tt.key))
		if got.Status != tt.status || got.Text != tt.text {
			t.Errorf("transport %s = %v %q, want %v %q", tt.key, got.Status, got.Text, tt.status, tt.text)
		}
	}
}

func TestSenderTransportMap(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, rcptRules), nil)
	for key, want := range map[string]string{
		"doctor@clinic.test":  "smtp-phi:",
		"@clinic.test":        "smtp-phi:",
		"x@a.b.clinic.test":   "smtp-phi:",
		"<>":                  "smtp-hold:",
		"someone@example.org": "",
		"@example.org":        "",
	} {
		got := e.LookupTable(context.Background(), rules.MapSenderTransport, []byte(key))
		if want == "" && got.Status != wire.StatusNotFound || want != "" && (got.Status != wire.StatusOK || got.Text != want) {
			t.Errorf("sender.transport %s = %v %q, want %q", key, got.Status, got.Text, want)
		}
	}
}

// BenchmarkRcptAction is the engine's part of a policy delegation request:
// the class of the sender, the recipient domain's rule and evidence, and
// the rendered action (the wire's part is wire.BenchmarkDelegation).
func BenchmarkRcptAction(b *testing.B) {
	s := RcptService{Engine: NewEngine(mustLoad(b, rcptRules), rcptEvidence())}
	ctx := context.Background()
	for b.Loop() {
		if s.RcptAction(ctx, "doctor@clinic.test", "a@good.test") != "DUNNO" {
			b.Fatal("unexpected action")
		}
	}
}
