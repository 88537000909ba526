package acceptance

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// postfixRules are the rules of TestPostfixDelivery: tls.test may be raised
// to verify by its probe, notls.test must be encrypted whatever its probe
// shows, and plain.test has no rule (the defaults: may, upgrade encrypt).
const postfixRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: tls.test
    upgrade: verify
  - match: notls.test
    level: encrypt
`

// TestPostfixDelivery has the real Postfix smtp client deliver through the
// daemon (smtp_tls_policy_maps = socketmap:...:tlspolicy) to fake MX hosts,
// and checks what arrived where and how: a verified destination gets the
// message over verified TLS, an encrypt floor without STARTTLS keeps the
// message queued (nothing reaches the server), and a destination without a
// rule or STARTTLS gets it in plaintext, which shows the set-up can deliver
// plaintext at all.
//
// Postfix finds the fake MX hosts through its own /etc/hosts (see
// postfixharness_test.go); the daemon finds the same servers through MX
// records in the fake DNS. The TLS server's certificate names both the
// domain (what Postfix checks without DNS: the next hop is the domain) and
// the MX host (what the daemon checks).
func TestPostfixDelivery(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	const (
		tlsIP   = "127.0.0.21"
		notlsIP = "127.0.0.22"
		plainIP = "127.0.0.23"
	)
	w.startMX(t,
		mxHost{"tls.test", "mx.tls.test", tlsIP,
			fakemx.Options{Hostname: "mx.tls.test", TLS: w.verifiedTLS(t, "tls.test", "mx.tls.test")}},
		mxHost{"notls.test", "mx.notls.test", notlsIP, fakemx.Options{Hostname: "mx.notls.test"}},
		mxHost{"plain.test", "mx.plain.test", plainIP, fakemx.Options{Hostname: "mx.plain.test"}},
	)
	d := startDaemon(t, w.probeConfig(t, postfixRules))
	table := d.socketmap(t, "tlspolicy")
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: table,
		CAFile:     w.caFile,
		SMTPPort:   w.port,
		Hosts:      map[string]string{"tls.test": tlsIP, "notls.test": notlsIP, "plain.test": plainIP},
	})
	sender := "sender@" + pf.hostname

	t.Run("verify delivers over verified TLS", func(t *testing.T) {
		t.Parallel()
		// Postfix must ask after the probe: its smtp processes cache
		// answers, and a may before the evidence would be a weaker test.
		waitAnswer(t, table, "tls.test", verify, []string{may}, probeSettle)
		const rcpt = "user@tls.test"
		pf.send(t, sender, rcpt, "verify")
		status := pf.delivery(t, rcpt)
		if !strings.Contains(status, "status=sent") {
			t.Fatalf("mail to %s was not sent: %s", rcpt, status)
		}
		msgs, err := w.server(t, "mx.tls.test").WaitMessages(waitCtx(t, deliveryLimit), 1)
		if err != nil {
			t.Fatalf("the fake MX of tls.test received no message: %v", err)
		}
		m := msgs[0]
		if !m.TLS || m.TLSVersion < tls.VersionTLS12 || !strings.Contains(string(m.Data), "Subject: verify") {
			t.Errorf("message at mx.tls.test: TLS %v, version %s, to %q; want TLS 1.2 or later, the message with subject verify",
				m.TLS, tls.VersionName(m.TLSVersion), m.To)
		}
		// Postfix says Verified only at the verify and secure levels (name
		// checked); at may or encrypt a trusted chain is only "Trusted".
		// So this shows that the smtp client got verify from the daemon.
		if line, ok := findLine(pf.log(), "Verified TLS connection established to tls.test["); ok {
			t.Logf("maillog: %s", line)
		} else {
			line, _ := findLine(pf.log(), "TLS connection established to tls.test[")
			t.Errorf("the maillog has no Verified TLS connection to tls.test (a level below verify was applied?); TLS line: %q", line)
		}
	})

	t.Run("encrypt floor without STARTTLS defers", func(t *testing.T) {
		t.Parallel()
		const rcpt = "user@notls.test"
		pf.send(t, sender, rcpt, "encrypt")
		status := pf.delivery(t, rcpt)
		var missing []string
		for _, want := range []string{"status=deferred", "dsn=4.7.4", "TLS is required, but was not offered"} {
			if !strings.Contains(status, want) {
				missing = append(missing, want)
			}
		}
		if missing != nil {
			t.Errorf("delivery to %s: the status line lacks %q:\n%s", rcpt, missing, status)
		}
		// Postfix gave up on the server when it saw no STARTTLS in the
		// EHLO reply; let the sessions so far end, then look at them.
		s := w.server(t, "mx.notls.test")
		sessions, err := s.WaitSessions(waitCtx(t, deliveryLimit), s.Stats().Connections)
		if err != nil {
			t.Fatalf("sessions at mx.notls.test did not end: %v", err)
		}
		if n := s.Stats().Messages; n != 0 {
			t.Errorf("mx.notls.test accepted %d messages, want none", n)
		}
		for _, sess := range sessions {
			for _, c := range sess.Commands {
				if c == "MAIL" || c == "RCPT" || c == "DATA" {
					t.Errorf("a session from %s (EHLO %q) sent %s: %q", sess.RemoteAddr, sess.Helos, c, sess.Commands)
					break
				}
			}
		}
		if q := pf.queue(t); !strings.Contains(q, rcpt) {
			t.Errorf("postqueue -p does not list %s:\n%s", rcpt, q)
		}
	})

	t.Run("no rule and no STARTTLS delivers in plaintext", func(t *testing.T) {
		t.Parallel()
		const rcpt = "user@plain.test"
		pf.send(t, sender, rcpt, "plaintext")
		status := pf.delivery(t, rcpt)
		if !strings.Contains(status, "status=sent") {
			t.Fatalf("mail to %s was not sent: %s", rcpt, status)
		}
		msgs, err := w.server(t, "mx.plain.test").WaitMessages(waitCtx(t, deliveryLimit), 1)
		if err != nil {
			t.Fatalf("the fake MX of plain.test received no message: %v", err)
		}
		if m := msgs[0]; m.TLS || !strings.Contains(string(m.Data), "Subject: plaintext") {
			t.Errorf("message at mx.plain.test: TLS %v, to %q; want the plaintext message", m.TLS, m.To)
		}
	})
}
