package acceptance

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// The tests in this file run the real Postfix smtp client with DNS on
// (postfixOptions.DNS): it finds each destination's MX hosts in the test's
// fake DNS, as in production, rather than taking the recipient domain for
// a host name from a hosts file. Each test has a world of its own, whose
// fake DNS listens on port 53 of an address no other test uses, so the
// two run in parallel with the rest.
const (
	mxNamesDNSIP  = "127.0.0.170" // TestPostfixVerifiesMXNames: the fake DNS
	mxNamesGoodIP = "127.0.0.171" // mx1.other.test, MX of d.test
	mxNamesBadIP  = "127.0.0.172" // mx2.other.test, MX of e.test
	daneDNSIP     = "127.0.0.180" // TestPostfixDANE: the fake DNS
	daneGoodIP    = "127.0.0.181" // mx.dane.test
	daneBadIP     = "127.0.0.182" // mx.danebad.test
)

// mxNamesRules: both destinations need verify; nothing else is consulted.
const mxNamesRules = `defaults:
  level: may
  upgrade: none
destinations:
  - match: d.test
    level: verify
  - match: e.test
    level: verify
`

// TestPostfixVerifiesMXNames shows that the daemon's verify reaches the
// MX host name that Postfix found in DNS: Postfix's verify matches the
// certificate against the MX host name (smtp_tls_verify_cert_match =
// hostname), not the recipient domain. d.test's MX host, mx1.other.test,
// has a certificate from the test CA for its own name only, not for
// d.test: the mail goes out over verified TLS. e.test's MX host,
// mx2.other.test, has a certificate from the same CA for a third name:
// Postfix defers the mail, and the fake MX receives none.
func TestPostfixVerifiesMXNames(t *testing.T) {
	t.Parallel()
	w := newWorldDNS(t, net.JoinHostPort(mxNamesDNSIP, "53"))
	w.startMX(t,
		mxHost{"d.test", "mx1.other.test", mxNamesGoodIP,
			fakemx.Options{Hostname: "mx1.other.test", TLS: w.verifiedTLS(t, "mx1.other.test")}},
		mxHost{"e.test", "mx2.other.test", mxNamesBadIP,
			fakemx.Options{Hostname: "mx2.other.test", TLS: w.verifiedTLS(t, "mx.elsewhere.test")}},
	)
	d := startDaemon(t, w.probeConfig(t, mxNamesRules))
	table := d.socketmap(t, "tlspolicy")
	for _, domain := range []string{"d.test", "e.test"} {
		checkLookup(t, table, lookup{key: domain, want: verify}, "")
	}
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: table,
		CAFile:     w.caFile,
		SMTPPort:   w.port,
		DNS:        w.dns.Addr(),
	})
	sender := "sender@" + pf.hostname
	const (
		goodRcpt = "user@d.test"
		badRcpt  = "user@e.test"
	)
	pf.send(t, sender, goodRcpt, "mx-name-verified")
	pf.send(t, sender, badRcpt, "mx-name-mismatch")

	t.Run("a certificate for the MX host name is verified", func(t *testing.T) {
		relay := fmt.Sprintf("mx1.other.test[%s]:%d", mxNamesGoodIP, w.port)
		wantStatus(t, pf, goodRcpt, "status=sent", "relay="+relay)
		t.Logf("maillog: %s", pf.waitLog(t, deliveryLimit, "verified TLS to "+relay,
			"Verified TLS connection established to "+relay))
		m := w.waitMessage(t, "mx1.other.test", "Subject: mx-name-verified")
		if !m.TLS || len(m.To) != 1 || m.To[0] != goodRcpt {
			t.Errorf("message at mx1.other.test: to %q, TLS %v; want to %s over TLS", m.To, m.TLS, goodRcpt)
		}
	})

	t.Run("a certificate for neither name is deferred", func(t *testing.T) {
		relay := fmt.Sprintf("mx2.other.test[%s]:%d", mxNamesBadIP, w.port)
		wantStatus(t, pf, badRcpt, "status=deferred", "dsn=4.7.5", "relay="+relay,
			"Server certificate not verified")
		t.Logf("maillog: %s", pf.waitLog(t, deliveryLimit, "the reason for "+relay,
			"server certificate verification failed for "+relay+": num=62:hostname mismatch"))
		noDelivery(t, w, "mx2.other.test", pf)
	})
}

// daneRules: no rule; the answers come from DANE.
const daneRules = `defaults:
  level: may
  upgrade: encrypt
`

// TestPostfixDANE shows the daemon's dane-only answer through Postfix's own
// DANE (smtp_dns_support_level = dnssec): the fake DNS answers the MX,
// address and TLSA records of both destinations with the AD bit, as a
// validating resolver does for signed zones.
//
// dane.test's MX host presents a self-signed certificate, which only its
// TLSA record (3 1 1, the digest of its key) can vouch for: Postfix
// delivers over verified TLS. danebad.test's MX host presents a
// certificate from the test CA for its name, which Postfix trusts
// (smtp_tls_CAfile), but its TLSA record names another key: the daemon
// still answers dane-only (it judges the records, which are usable), and
// Postfix defers the mail, which the fake MX never receives.
func TestPostfixDANE(t *testing.T) {
	t.Parallel()
	w := newWorldDNS(t, net.JoinHostPort(daneDNSIP, "53"))
	goodCert, err := testca.SelfSigned("mx.dane.test")
	if err != nil {
		t.Fatal(err)
	}
	badTLS := w.verifiedTLS(t, "mx.danebad.test")
	otherCert := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.danebad.test"}})
	w.startMX(t,
		mxHost{"dane.test", "mx.dane.test", daneGoodIP, fakemx.Options{Hostname: "mx.dane.test",
			TLS: &tls.Config{Certificates: []tls.Certificate{goodCert}}}},
		mxHost{"danebad.test", "mx.danebad.test", daneBadIP, fakemx.Options{Hostname: "mx.danebad.test",
			TLS: badTLS}},
	)
	// Postfix looks up the TLSA records of the port it connects to
	// (smtp_tcp_port), the daemon those of probe.port: both the world's
	// port.
	w.publishTLSA(t, "dane.test", "mx.dane.test", goodCert, true)
	w.publishTLSA(t, "danebad.test", "mx.danebad.test", otherCert, true)

	d := startDaemon(t, w.publishedConfig(t, longTTL, daneRules))
	table := d.socketmap(t, "tlspolicy")
	for _, domain := range []string{"dane.test", "danebad.test"} {
		seen := waitAnswer(t, table, domain, daneOnly, []string{may}, probeSettle)
		t.Logf("%s: answers %q", domain, seen)
	}
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: table,
		CAFile:     w.caFile,
		SMTPPort:   w.port,
		DNS:        w.dns.Addr(),
		MainCF:     "smtp_dns_support_level = dnssec\n",
	})
	sender := "sender@" + pf.hostname
	const (
		goodRcpt = "user@dane.test"
		badRcpt  = "user@danebad.test"
	)
	pf.send(t, sender, goodRcpt, "dane-match")
	pf.send(t, sender, badRcpt, "dane-mismatch")

	t.Run("a certificate its TLSA record matches is delivered", func(t *testing.T) {
		relay := fmt.Sprintf("mx.dane.test[%s]:%d", daneGoodIP, w.port)
		wantStatus(t, pf, goodRcpt, "status=sent", "relay="+relay)
		t.Logf("maillog: %s", pf.waitLog(t, deliveryLimit, "verified TLS to "+relay,
			"Verified TLS connection established to "+relay))
		// Postfix sends the TLSA base domain as SNI in DANE mode only (at
		// verify it sends none): the name shows which check it made.
		m := w.waitMessage(t, "mx.dane.test", "Subject: dane-match")
		if !m.TLS || m.ServerName != "mx.dane.test" || len(m.To) != 1 || m.To[0] != goodRcpt {
			t.Errorf("message at mx.dane.test: to %q, TLS %v, SNI %q; want to %s over TLS with SNI mx.dane.test",
				m.To, m.TLS, m.ServerName, goodRcpt)
		}
	})

	t.Run("a certificate its TLSA record does not match is deferred", func(t *testing.T) {
		relay := fmt.Sprintf("mx.danebad.test[%s]:%d", daneBadIP, w.port)
		wantStatus(t, pf, badRcpt, "status=deferred", "dsn=4.7.5", "relay="+relay,
			"Server certificate not verified")
		t.Logf("maillog: %s", pf.waitLog(t, deliveryLimit, "the reason for "+relay,
			"server certificate verification failed for "+relay+": num=65:no matching DANE TLSA records"))
		noDelivery(t, w, "mx.danebad.test", pf)
	})
}

// wantStatus checks that the first delivery status line of rcpt in pf's
// maillog holds every one of parts, and logs it.
func wantStatus(t *testing.T, pf *postfixInstance, rcpt string, parts ...string) {
	t.Helper()
	status := pf.delivery(t, rcpt)
	t.Logf("maillog: %s", status)
	var missing []string
	for _, p := range parts {
		if !strings.Contains(status, p) {
			missing = append(missing, p)
		}
	}
	if missing != nil {
		t.Fatalf("delivery to %s: the status line lacks %q:\n%s", rcpt, missing, status)
	}
}

// noDelivery checks, once the sessions at host's fake MX have ended, that
// Postfix did reach it and start TLS, and that it received no message.
func noDelivery(t *testing.T, w *world, host string, pf *postfixInstance) {
	t.Helper()
	s := w.server(t, host)
	sessions, err := s.WaitSessions(waitCtx(t, deliveryLimit), s.Stats().Connections)
	if err != nil {
		t.Fatalf("sessions at %s did not end: %v", host, err)
	}
	reached := false
	for _, sess := range sessions {
		for _, h := range sess.Helos {
			reached = reached || h == pf.hostname && sess.StartTLS
		}
	}
	if !reached {
		t.Errorf("Postfix (EHLO %s) did not reach %s and send STARTTLS; sessions: %+v", pf.hostname, host, sessions)
	}
	if msgs := s.Messages(); len(msgs) != 0 {
		t.Errorf("%s received %d message(s), the first to %q with TLS %v", host, len(msgs), msgs[0].To, msgs[0].TLS)
	}
}
