package acceptance

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// eximSettle bounds how long a test waits for the daemon's probe of a
// destination to finish (probe.timeout is 5s in eximWorld.daemonConfig).
const eximSettle = 15 * time.Second

// The rules of the Exim tests: a destination that must be encrypted, one
// that must be verified, a sender class that needs verified TLS and rejects
// at RCPT time, and one that falls back to a gateway.
const eximRules = `defaults:
  level: may
  upgrade: none
destinations:
  - match: notls.test
    level: encrypt
  - match: strict.test
    level: encrypt
  - match: verified.test
    level: verify
  - match: selfsigned.test
    level: verify
  - match: wrongname.test
    level: verify
  - match: oldtls.test
    level: encrypt
  - match: oldtls-may.test
    level: may
classes:
  - name: phi
    senders: ["@clinic.test"]
    level: verify
    on_fail: reject
    message: "recipient domain cannot receive mail over verified TLS; use the secure portal"
  - name: lab
    senders: ["@lab.test"]
    level: verify
    on_fail: fallback
    fallback: %q
  - name: held
    senders: ["@hold.test"]
    level: encrypt
    on_fail: hold
  - name: dropped
    senders: ["@drop.test"]
    level: encrypt
    on_fail: discard
`

// TestEximReadsocket: Exim's ${readsocket} reaches the daemon's exim
// listener, gets one line back, and gets the FAIL string when the daemon is
// not there; the contrib macros ask what they should.
func TestEximReadsocket(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, `listen:
  exim: @EXIM@
  http: @HTTP@
defaults:
  level: may
  upgrade: none
destinations:
  - match: strict.test
    level: encrypt
classes:
  - name: phi
    senders: ["@clinic.test"]
    level: verify
    on_fail: reject
`+hermetic)
	addr := d.listen["exim"]
	e := newExim(t, eximOptions{Daemon: addr})

	// What exim -be prints for ${readsocket} of REQUEST at addr, the
	// trailing newline stripped as contrib/exim does.
	ask := func(addr, request string) string {
		return e.expand(t, fmt.Sprintf(`${sg{${readsocket{inet:%s}{%s\n}{5s}{}{FAIL}}}{\N\n\N}{}}`, addr, request))
	}
	for _, c := range []struct{ request, want string }{
		{"tlspolicy strict.test", "OK encrypt protocols=>=TLSv1.2"},
		{"tlspolicy STRICT.Test.", "OK encrypt protocols=>=TLSv1.2"},
		{"tlspolicy other.test", "OK may"},
		{"phi unmatched.test", "OK verify protocols=>=TLSv1.2"},
		{"phi strict.test", "OK verify protocols=>=TLSv1.2"},
		{"sender.transport <doctor@clinic.test>", "OK smtp-phi:"},
		{"sender.transport <someone@else.test>", "NOTFOUND"},
		{"sender.transport <>", "NOTFOUND"},
		{"tlspolicy .test", "NOTFOUND"},
		{"nosuchmap strict.test", "PERM unknown map nosuchmap"},
		{"rcpt.check <someone@else.test> <a@strict.test>", "DUNNO"},
	} {
		if got := ask(addr, c.request); got != c.want {
			t.Errorf("exim -be readsocket %q:\n  want %q\n  got  %q", c.request, c.want, got)
		}
	}

	// Exim 4.96 keeps the newline that ends the answer when the EOL
	// argument is empty: why contrib/exim strips it.
	raw := e.expand(t, fmt.Sprintf(`${readsocket{inet:%s}{tlspolicy strict.test\n}{5s}{}{FAIL}}`, addr))
	if raw != "OK encrypt protocols=>=TLSv1.2\n" {
		t.Errorf("unstripped readsocket: got %q, want the answer and its newline", raw)
	}

	// Nobody listening: the FAIL string.
	if got := ask(eximDeadAddr(t), "tlspolicy strict.test"); got != "FAIL" {
		t.Errorf("readsocket of a dead port: got %q, want the FAIL string", got)
	}

	// The contrib macros: the sender's class (-f sets $sender_address).
	for _, c := range []struct{ sender, want string }{
		{"doctor@clinic.test", "OK smtp-phi:"},
		{"someone@else.test", "NOTFOUND"},
	} {
		out, stderr, code := e.run(t, "", "-f", c.sender, "-be", "TLSPOLICYD_SENDER_CLASS")
		if got := strings.TrimSuffix(out, "\n"); code != 0 || got != c.want {
			t.Errorf("exim -f %s -be TLSPOLICYD_SENDER_CLASS: got %q (exit %d, stderr %q), want %q", c.sender, got, code, stderr, c.want)
		}
	}
}

// TestEximRcptACL: the contrib RCPT ACL, run by Exim's SMTP test mode (exim
// -bh), turns the daemon's rcpt.check answers into SMTP replies.
func TestEximRcptACL(t *testing.T) {
	t.Parallel()
	w := newEximWorld(t)
	w.startMX(t,
		eximMX{domain: "plain.test", ip: "127.0.0.2"},                                    // no STARTTLS
		eximMX{domain: "slow.test", ip: "127.0.0.3", opts: fakemx.Options{Tarpit: true}}, // never answers EHLO
	)
	d := startDaemon(t, w.daemonConfig(fmt.Sprintf(eximRules, "smtp:[127.0.0.9]")))
	addr := d.listen["exim"]
	e := newExim(t, eximOptions{Daemon: addr, CAFile: w.caFile, Routes: w.addr})

	// The daemon answers REJECT for the class once it has probed
	// plain.test (DEFER_IF_PERMIT until then).
	waitEximAnswer(t, addr, "rcpt.check <doctor@clinic.test> <a@plain.test>", "REJECT ", eximSettle)

	replies := e.testSession(t, "127.0.0.1",
		"EHLO client.test",
		"MAIL FROM:<doctor@clinic.test>",
		"RCPT TO:<a@plain.test>",
		"RCPT TO:<postmaster@mta.client.test>", // local: not asked; the REJECT above must not stick
		"RCPT TO:<b@slow.test>",
		"QUIT")
	rcpt := replies[3]
	if rcpt.code != 550 || !strings.HasPrefix(rcpt.text, "5.7.10 ") ||
		!strings.Contains(rcpt.text, "recipient domain cannot receive mail over verified TLS; use the secure portal") {
		t.Errorf("class sender, RCPT to a domain without STARTTLS: got %q, want 550 5.7.10 and the class's message", rcpt)
	}
	if local := replies[4]; local.code != 250 {
		t.Errorf("class sender, RCPT to a local domain after a rejected one: got %q, want 250", local)
	}
	if slow := replies[5]; slow.code/100 != 4 || !strings.HasPrefix(slow.text, "4.7.10 ") {
		t.Errorf("class sender, RCPT to a domain whose probe has not finished: got %q, want 4xx 4.7.10", slow)
	}

	replies = e.testSession(t, "127.0.0.1",
		"EHLO client.test",
		"MAIL FROM:<someone@other.test>",
		"RCPT TO:<a@plain.test>",
		"QUIT")
	if r := replies[3]; r.code != 250 {
		t.Errorf("ordinary sender, RCPT to a domain without STARTTLS: got %q, want 250", r)
	}

	// The class that falls back: RCPT is accepted, and the message is to
	// go to the gateway (TestEximFallback follows it there).
	replies = e.testSession(t, "127.0.0.1",
		"EHLO client.test",
		"MAIL FROM:<tech@lab.test>",
		"RCPT TO:<a@plain.test>",
		"QUIT")
	if r := replies[3]; r.code != 250 {
		t.Errorf("fallback class, RCPT to a domain without STARTTLS: got %q, want 250", r)
	}

	// The daemon unreachable: defer, never accept unchecked.
	down := newExim(t, eximOptions{Daemon: eximDeadAddr(t), CAFile: w.caFile, Routes: w.addr})
	replies = down.testSession(t, "127.0.0.1",
		"EHLO client.test",
		"MAIL FROM:<someone@other.test>",
		"RCPT TO:<a@plain.test>",
		"QUIT")
	if r := replies[3]; r.code/100 != 4 || !strings.Contains(r.text, "4.7.10 TLS policy service unavailable") {
		t.Errorf("daemon down, RCPT: got %q, want 4xx 4.7.10 TLS policy service unavailable", r)
	}
}

// TestEximDelivery: the contrib routers and transport deliver each message
// under the daemon's answer for its destination, with the real Exim smtp
// client against fake MX hosts.
func TestEximDelivery(t *testing.T) {
	t.Parallel()
	w := newEximWorld(t)
	w.startMX(t,
		eximMX{domain: "notls.test", ip: "127.0.0.2"},
		eximMX{domain: "plain.test", ip: "127.0.0.3"},
		eximMX{domain: "verified.test", ip: "127.0.0.4", opts: fakemx.Options{TLS: w.verifiedTLS(t, "verified.test", "127.0.0.4")}},
		eximMX{domain: "selfsigned.test", ip: "127.0.0.5", opts: fakemx.Options{TLS: eximSelfSigned(t, "mx.selfsigned.test")}},
		eximMX{domain: "strict.test", ip: "127.0.0.6", opts: fakemx.Options{TLS: eximSelfSigned(t, "mx.strict.test")}},
		// A certificate from the trusted CA for another name (and no
		// address): verification of the chain holds, of the name fails.
		eximMX{domain: "wrongname.test", ip: "127.0.0.7", opts: fakemx.Options{TLS: &tls.Config{
			Certificates: []tls.Certificate{w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.other.test"}})}}}},
		// TLS 1.0 only, below minimum_tls (protocols=>=TLSv1.2).
		eximMX{domain: "oldtls.test", ip: "127.0.0.8", opts: fakemx.Options{TLS: eximTLS10(t, "mx.oldtls.test")}},
		eximMX{domain: "oldtls-may.test", ip: "127.0.0.10", opts: fakemx.Options{TLS: eximTLS10(t, "mx.oldtls-may.test")}},
	)
	d := startDaemon(t, w.daemonConfig(fmt.Sprintf(eximRules, "smtp:[127.0.0.9]")))
	daemonAddr := d.listen["exim"]

	// What the fake MX sees of a delivery: nothing (the message was
	// deferred), a plaintext message, or one over TLS of some version.
	const (
		deferred  = -1
		plaintext = 0
		anyTLS    = 1
	)
	for _, c := range []struct {
		name   string
		sender string
		domain string
		want   int    // deferred, plaintext, anyTLS or a tls.VersionTLS1x
		logHas string // what the mainlog says about a deferral
	}{
		{"encrypt, no STARTTLS: deferred", "sender@client.test", "notls.test", deferred, "a TLS session is required, but the server did not offer TLS support"},
		{"may, no STARTTLS: plaintext", "sender@client.test", "plain.test", plaintext, ""},
		{"verify, certificate from the trusted CA: TLS", "sender@client.test", "verified.test", anyTLS, ""},
		{"verify, self-signed certificate: deferred", "sender@client.test", "selfsigned.test", deferred, "certificate verification failed"},
		{"verify, trusted CA, another name: deferred", "sender@client.test", "wrongname.test", deferred, "certificate verification failed"},
		{"encrypt, self-signed certificate: TLS", "sender@client.test", "strict.test", anyTLS, ""},
		// protocols=>=TLSv1.2 holds: the same server is good enough for
		// GnuTLS at may, so it is the attribute that defers.
		{"encrypt, TLS 1.0 only: deferred", "sender@client.test", "oldtls.test", deferred, "Error in protocol version"},
		{"may, TLS 1.0 only: TLS 1.0", "sender@client.test", "oldtls-may.test", tls.VersionTLS10, ""},
		// The sender's class raises every destination to verify.
		{"class verify, no STARTTLS: deferred", "doctor@clinic.test", "plain.test", deferred, "a TLS session is required"},
		{"class verify, certificate from the trusted CA: TLS", "doctor@clinic.test", "verified.test", anyTLS, ""},
		{"class verify, self-signed certificate: deferred", "doctor@clinic.test", "strict.test", deferred, "certificate verification failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			// Each case has its own Exim (spool, retry hints, log), and
			// counts the fake MX's messages from this sender only.
			e := newExim(t, eximOptions{Daemon: daemonAddr, CAFile: w.caFile, Routes: w.addr})
			mx := w.mx[c.domain]
			rcpt := fmt.Sprintf("user-%d@%s", time.Now().UnixNano(), c.domain)
			id := e.submit(t, c.sender, rcpt)
			lines := strings.Join(e.logLines(id), "\n")
			got := eximMessagesTo(mx, rcpt)
			if c.want == deferred {
				if len(got) != 0 {
					t.Errorf("%s: the fake MX got the message (TLS %v), want none", rcpt, got[0].TLS)
				}
				if !strings.Contains(lines, "== "+rcpt) || !strings.Contains(lines, c.logHas) {
					t.Errorf("%s: want a deferral (==) saying %q in the mainlog:\n%s", rcpt, c.logHas, lines)
				}
				if q := e.queue(t); !strings.Contains(q, id) {
					t.Errorf("%s: message %s is not in the queue any more:\n%s", rcpt, id, q)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("%s: the fake MX got %d messages, want 1; mainlog:\n%s", rcpt, len(got), lines)
			}
			switch m := got[0]; {
			case c.want == plaintext && m.TLS, c.want != plaintext && !m.TLS:
				t.Errorf("%s: delivered with TLS %v, want TLS %v", rcpt, m.TLS, c.want != plaintext)
			case c.want > anyTLS && m.TLSVersion != uint16(c.want):
				t.Errorf("%s: delivered over %s, want %s", rcpt, tls.VersionName(m.TLSVersion), tls.VersionName(uint16(c.want)))
			}
			if !strings.Contains(lines, " Completed") {
				t.Errorf("%s: no Completed line in the mainlog:\n%s", rcpt, lines)
			}
		})
	}
}

// TestEximDaemonDown: with the daemon unreachable, the contrib routers defer
// every remote delivery; nothing goes out in plaintext, and the fake MX is
// not even connected to. Once the daemon answers, the next attempt delivers.
func TestEximDaemonDown(t *testing.T) {
	t.Parallel()
	w := newEximWorld(t)
	w.startMX(t, eximMX{domain: "plain.test", ip: "127.0.0.2"})
	daemonAddr := eximDeadAddr(t)
	e := newExim(t, eximOptions{Daemon: daemonAddr, CAFile: w.caFile, Routes: w.addr})

	id := e.submit(t, "sender@client.test", "user@plain.test")
	lines := strings.Join(e.logLines(id), "\n")
	if !strings.Contains(lines, "== user@plain.test R=tlspolicyd_class defer") ||
		!strings.Contains(lines, "tlspolicyd unreachable") {
		t.Errorf("daemon down: want the tlspolicyd_class router to defer, saying the daemon is unreachable; mainlog:\n%s", lines)
	}
	if st := w.mx["plain.test"].Stats(); st.Connections != 0 {
		t.Errorf("daemon down: the fake MX had %d connections, want none", st.Connections)
	}
	if q := e.queue(t); !strings.Contains(q, id) {
		t.Fatalf("daemon down: message %s is not in the queue any more:\n%s", id, q)
	}

	// The daemon comes up where Exim looks for it: the next delivery
	// attempt (exim -M, as a queue run would) sends the message.
	startDaemon(t, strings.Replace(w.daemonConfig(""), phExim, daemonAddr, 1))
	e.deliver(t, id)
	got := eximMessagesTo(w.mx["plain.test"], "user@plain.test")
	if len(got) != 1 {
		t.Fatalf("daemon back: the fake MX got %d messages, want 1; mainlog:\n%s", len(got), strings.Join(e.logLines(id), "\n"))
	}
}

// TestEximFallback: a class with on_fail: fallback answers FILTER at RCPT
// time; the contrib ACL keeps the next hop with the message, and the
// tlspolicyd_fallback router delivers the whole message there, under the
// class's policy for the gateway, instead of to the recipient domain.
func TestEximFallback(t *testing.T) {
	t.Parallel()
	w := newEximWorld(t)
	const gatewayIP = "127.0.0.9"
	w.startMX(t,
		eximMX{domain: "plain.test", ip: "127.0.0.2"},
		eximMX{domain: "gateway.test", ip: gatewayIP, opts: fakemx.Options{TLS: w.verifiedTLS(t, "gateway.test", gatewayIP)}},
	)
	fallback := fmt.Sprintf("smtp:[%s]:%d", gatewayIP, w.port)
	d := startDaemon(t, w.daemonConfig(fmt.Sprintf(eximRules, fallback)))
	addr := d.listen["exim"]
	e := newExim(t, eximOptions{Daemon: addr, CAFile: w.caFile, Routes: w.addr})

	want := "FILTER " + fallback
	if got := waitEximAnswer(t, addr, "rcpt.check <tech@lab.test> <a@plain.test>", "FILTER ", eximSettle); got != want {
		t.Fatalf("rcpt.check for the fallback class: got %q, want %q", got, want)
	}

	// A real SMTP session on standard input (exim -bs): the message is
	// received into the queue (-odq), then delivered (-M).
	replies := e.smtpSession(t,
		"EHLO client.test",
		"MAIL FROM:<tech@lab.test>",
		"RCPT TO:<a@plain.test>",
		"DATA",
		"Subject: results\r\n\r\nThe lab results.\r\n.",
		"QUIT")
	if len(replies) != 7 || replies[3].code != 250 || replies[5].code != 250 {
		t.Fatalf("exim -bs session: got %q, want RCPT and DATA accepted", replies)
	}
	id := eximQueueID(t, replies[5].text)
	e.deliver(t, id)

	ctx, cancel := context.WithTimeout(context.Background(), pollTimeout)
	defer cancel()
	got, err := w.mx["gateway.test"].WaitMessages(ctx, 1)
	if err != nil {
		t.Fatalf("the gateway got no message: %v; mainlog:\n%s", err, strings.Join(e.logLines(id), "\n"))
	}
	if m := got[0]; len(m.To) != 1 || m.To[0] != "a@plain.test" || !m.TLS {
		t.Errorf("the gateway got a message to %q over TLS %v, want a@plain.test over TLS", m.To, m.TLS)
	}
	if n := len(w.mx["plain.test"].Messages()); n != 0 {
		t.Errorf("plain.test's MX got %d messages, want none (the message goes to the gateway)", n)
	}
	lines := strings.Join(e.logLines(id), "\n")
	if !strings.Contains(lines, "R=tlspolicyd_fallback") {
		t.Errorf("want the delivery by the tlspolicyd_fallback router in the mainlog:\n%s", lines)
	}
}

// eximMessagesTo returns the messages mx received for rcpt.
func eximMessagesTo(mx *fakemx.Server, rcpt string) []fakemx.Message {
	var out []fakemx.Message
	for _, m := range mx.Messages() {
		for _, to := range m.To {
			if to == rcpt {
				out = append(out, m)
			}
		}
	}
	return out
}

// eximQueueID finds the queue ID in Exim's reply to DATA ("OK id=ID").
func eximQueueID(t *testing.T, text string) string {
	t.Helper()
	_, id, ok := strings.Cut(text, "id=")
	if !ok {
		t.Fatalf("no queue ID in %q", text)
	}
	return strings.Fields(id)[0]
}

// eximTLS10 is a server TLS configuration that speaks TLS 1.0 only, with a
// self-signed certificate for names.
func eximTLS10(t *testing.T, names ...string) *tls.Config {
	t.Helper()
	c := eximSelfSigned(t, names...)
	c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
	return c
}

// eximSelfSigned is a server TLS configuration with a self-signed
// certificate for names.
func eximSelfSigned(t *testing.T, names ...string) *tls.Config {
	t.Helper()
	cert, err := testca.SelfSigned(names...)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// TestEximHoldDiscard: on_fail: hold freezes the message Exim accepts;
// on_fail: discard accepts the recipient and drops it. Both go through a
// real SMTP session on standard input (exim -bs), as mail from a local
// client would.
func TestEximHoldDiscard(t *testing.T) {
	t.Parallel()
	w := newEximWorld(t)
	w.startMX(t, eximMX{domain: "plain.test", ip: "127.0.0.2"}) // no STARTTLS
	d := startDaemon(t, w.daemonConfig(fmt.Sprintf(eximRules, "smtp:[127.0.0.9]")))
	addr := d.listen["exim"]
	waitEximAnswer(t, addr, "rcpt.check <lab@hold.test> <a@plain.test>", "HOLD", eximSettle)
	waitEximAnswer(t, addr, "rcpt.check <lab@drop.test> <a@plain.test>", "DISCARD", eximSettle)

	session := func(e *eximInstance, sender string) string {
		t.Helper()
		replies := e.smtpSession(t,
			"EHLO client.test",
			"MAIL FROM:<"+sender+">",
			"RCPT TO:<a@plain.test>",
			"DATA",
			"Subject: results\r\n\r\nThe lab results.\r\n.",
			"QUIT")
		if len(replies) != 7 || replies[3].code != 250 || replies[5].code != 250 {
			t.Fatalf("exim -bs session from %s: got %q, want RCPT and DATA accepted", sender, replies)
		}
		return eximQueueID(t, replies[5].text)
	}

	t.Run("hold", func(t *testing.T) {
		e := newExim(t, eximOptions{Daemon: addr, CAFile: w.caFile, Routes: w.addr})
		id := session(e, "lab@hold.test")
		e.run(t, "", "-q") // a queue run leaves frozen messages alone
		q := e.queue(t)
		if !strings.Contains(q, id) || !strings.Contains(q, "*** frozen ***") {
			t.Errorf("held message %s: want it frozen in the queue; exim -bp:\n%s", id, q)
		}
		if lines := strings.Join(e.logLines(id), "\n"); !strings.Contains(lines, "frozen by ACL") {
			t.Errorf("held message %s: want \"frozen by ACL\" in the mainlog:\n%s", id, lines)
		}
		if n := len(w.mx["plain.test"].Messages()); n != 0 {
			t.Errorf("held message: the fake MX got %d messages, want none", n)
		}
	})
	t.Run("discard", func(t *testing.T) {
		e := newExim(t, eximOptions{Daemon: addr, CAFile: w.caFile, Routes: w.addr})
		id := session(e, "lab@drop.test")
		e.run(t, "", "-q")
		if q := e.queue(t); strings.Contains(q, id) {
			t.Errorf("discarded message %s: want it gone; exim -bp:\n%s", id, q)
		}
		if lines := strings.Join(e.logLines(id), "\n"); !strings.Contains(lines, "=> blackhole (RCPT ACL discarded recipients)") {
			t.Errorf("discarded message %s: want it blackholed in the mainlog:\n%s", id, lines)
		}
		if n := len(w.mx["plain.test"].Messages()); n != 0 {
			t.Errorf("discarded message: the fake MX got %d messages, want none", n)
		}
	})
}

// TestEximUnexpectedAnswers: answers the contrib files cannot use (TEMP
// from the policy map, an unknown RCPT action) defer, at RCPT time and at
// delivery, rather than letting mail through unchecked or in plaintext.
func TestEximUnexpectedAnswers(t *testing.T) {
	t.Parallel()
	w := newEximWorld(t)
	w.startMX(t, eximMX{domain: "plain.test", ip: "127.0.0.2"})
	addr := eximFakeDaemon(t, func(req string) string {
		switch {
		case strings.HasPrefix(req, "sender.transport "):
			return "NOTFOUND"
		case strings.HasPrefix(req, "tlspolicy "):
			return "TEMP state store unavailable"
		}
		return "MAYBE"
	})
	e := newExim(t, eximOptions{Daemon: addr, CAFile: w.caFile, Routes: w.addr})

	replies := e.testSession(t, "127.0.0.1",
		"EHLO client.test",
		"MAIL FROM:<someone@other.test>",
		"RCPT TO:<a@plain.test>",
		"QUIT")
	if r := replies[3]; r.code/100 != 4 || !strings.Contains(r.text, "4.7.10 TLS policy service gave an unexpected answer") {
		t.Errorf("rcpt.check answered MAYBE: got %q, want 4xx 4.7.10 unexpected answer", r)
	}

	id := e.submit(t, "sender@client.test", "user@plain.test")
	lines := strings.Join(e.logLines(id), "\n")
	if !strings.Contains(lines, "== user@plain.test R=tlspolicyd defer") ||
		!strings.Contains(lines, "TEMP state store unavailable") {
		t.Errorf("policy answered TEMP: want the tlspolicyd router to defer with the daemon's reason; mainlog:\n%s", lines)
	}
	if st := w.mx["plain.test"].Stats(); st.Connections != 0 {
		t.Errorf("policy answered TEMP: the fake MX had %d connections, want none", st.Connections)
	}
}

// TestEximTransportWithoutRouters: the contrib transport reached without
// the contrib routers' answer in $address_data requires TLS (and a verified
// certificate) instead of sending in plaintext.
func TestEximTransportWithoutRouters(t *testing.T) {
	t.Parallel()
	w := newEximWorld(t)
	w.startMX(t, eximMX{domain: "plain.test", ip: "127.0.0.2"})
	e := newExim(t, eximOptions{Daemon: eximDeadAddr(t), CAFile: w.caFile, Routes: w.addr, WithoutRouters: true})

	id := e.submit(t, "sender@client.test", "user@plain.test")
	lines := strings.Join(e.logLines(id), "\n")
	if !strings.Contains(lines, "== user@plain.test R=fakemx T=tlspolicyd_smtp defer") ||
		!strings.Contains(lines, "a TLS session is required") {
		t.Errorf("no answer in $address_data: want a deferral, TLS required; mainlog:\n%s", lines)
	}
	if n := len(w.mx["plain.test"].Messages()); n != 0 {
		t.Errorf("no answer in $address_data: the fake MX got %d messages, want none", n)
	}
}
