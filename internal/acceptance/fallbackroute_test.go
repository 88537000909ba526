package acceptance

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// The fake MX hosts of TestFallbackRoute, each on an address of its own.
const (
	routeNoTLSIP   = "127.0.0.151" // nostarttls.test: no STARTTLS, rule level encrypt with a fallback
	routeGatewayIP = "127.0.0.152" // the fallback route of nostarttls.test: STARTTLS
	routePlainIP   = "127.0.0.153" // plain.test: no STARTTLS, no rule
)

// The null sender as the tests hand it to sendmail -f, and the sender of
// the ordinary control message.
const (
	nullSenderArg   = "<>"
	routeOrdinary   = "someone@office.test"
	routeNullRcpt   = "bounce@plain.test"
	routeFallbackTo = "user@nostarttls.test"
)

// routeRules: nostarttls.test must be encrypted or go through the gateway
// (the fallback route, answered by the transport map); the gateway hop
// has a rule of its own (encrypt), so the smtp transport's default map
// knows its level; bounces (the null sender) are in the phi class, which
// needs verify.
func routeRules(fallback, gatewayKey string) string {
	return fmt.Sprintf(`defaults:
  level: may
  upgrade: none
destinations:
  - match: nostarttls.test
    level: encrypt
    fallback: %q
  - match: %q
    level: encrypt
classes:
  - name: phi
    senders: ["<>"]
    level: verify
`, fallback, gatewayKey)
}

// TestFallbackRoute drives the daemon's transport and sender.transport
// maps through the shipped Postfix wiring (contrib/postfix/main-classes.cf:
// transport_maps = socketmap:...:transport, sender_dependent_default_
// transport_maps = socketmap:...:sender.transport, with Postfix's default
// empty_address_default_transport_maps_lookup_key = <>), with mail
// injected by sendmail, so that no RCPT-time check runs.
func TestFallbackRoute(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startMX(t,
		mxHost{"nostarttls.test", "mx.nostarttls.test", routeNoTLSIP, fakemx.Options{Hostname: "mx.nostarttls.test"}},
		mxHost{"gateway.test", "mx.gateway.test", routeGatewayIP,
			fakemx.Options{Hostname: "mx.gateway.test", TLS: w.verifiedTLSIP(t, routeGatewayIP, "gateway.test", "mx.gateway.test")}},
		mxHost{"plain.test", "mx.plain.test", routePlainIP, fakemx.Options{Hostname: "mx.plain.test"}},
	)
	fallback := fmt.Sprintf("smtp:[%s]:%d", routeGatewayIP, w.port)
	gatewayKey := fmt.Sprintf("[%s]:%d", routeGatewayIP, w.port)
	d := startDaemon(t, rcptConfig(t, w, routeRules(fallback, gatewayKey)))
	pf := startContribPostfixHosts(t, w, d, d.listen["policy"], map[string]string{
		"nostarttls.test": routeNoTLSIP, "plain.test": routePlainIP,
	})
	if out, err := pf.run(t, 30*time.Second, postfixCmd(t, "postconf"), "-c", pf.conf, "-h", "transport_maps"); err != nil ||
		strings.TrimSpace(out) != d.socketmap(t, "transport") {
		t.Fatalf("transport_maps of the instance: %q (%v), want the shipped %s", strings.TrimSpace(out), err, d.socketmap(t, "transport"))
	}

	t.Run("group", func(t *testing.T) {
		t.Run("a destination that cannot meet its level goes to its fallback route", func(t *testing.T) {
			t.Parallel()
			// The transport map never waits: the first lookup starts
			// the probe and is NOTFOUND; poll until it answers the route.
			transport := d.socketmap(t, "transport")
			seen := waitRoute(t, transport, "nostarttls.test", fallback, probeSettle)
			t.Logf("postmap -q nostarttls.test %s: %q", transport, seen)
			// Postfix asks a socketmap transport_maps table for the full
			// recipient address only (trivial-rewrite -v: "maps_find:
			// transport_maps: nostarttls.test: not found" with no socketmap
			// query for it): the address must answer the route too.
			if out, code, _ := postmap(t, routeFallbackTo, transport); code != 0 || out != fallback {
				t.Errorf("postmap -q %s %s: %q (exit %d), want %s", routeFallbackTo, transport, out, code, fallback)
			}
			// The fallback hop's policy, from the default map of the smtp
			// transport the route names.
			hopPolicy, code, _ := postmap(t, gatewayKey, d.socketmap(t, "tlspolicy"))
			if code != 0 || !strings.HasPrefix(hopPolicy, "encrypt") {
				t.Fatalf("postmap -q %s ...:tlspolicy: %q (exit %d), want encrypt", gatewayKey, hopPolicy, code)
			}
			t.Logf("the fallback hop's policy: %s", hopPolicy)

			pf.send(t, routeOrdinary, routeFallbackTo, "fallback-route")
			status := pf.delivery(t, routeFallbackTo)
			wantRelay := fmt.Sprintf("relay=%s[%s]:%d", routeGatewayIP, routeGatewayIP, w.port)
			for _, want := range []string{"postfix/smtp[", "status=sent", wantRelay} {
				if !strings.Contains(status, want) {
					t.Fatalf("delivery to %s: the status line lacks %q: %s", routeFallbackTo, want, status)
				}
			}
			t.Logf("maillog: %s", status)
			// TLS: encrypt (the hop's rule) gives "Untrusted" or
			// "Trusted"; Postfix logs the hop as IP[IP]:port.
			if line, ok := findLine(pf.log(), "postfix/smtp[", "TLS connection established to "+routeGatewayIP+"["); ok {
				t.Logf("maillog: %s", line)
			} else {
				t.Errorf("no TLS connection to the gateway %s in the maillog", routeGatewayIP)
			}
			m := w.waitMessage(t, "mx.gateway.test", "Subject: fallback-route")
			if !m.TLS || m.From != routeOrdinary || len(m.To) != 1 || m.To[0] != routeFallbackTo {
				t.Errorf("message at the gateway: from %q to %q, TLS %v; want from %s to %s over TLS",
					m.From, m.To, m.TLS, routeOrdinary, routeFallbackTo)
			}
			// The destination's own MX: probed by the daemon (EHLO
			// probe.test), never by Postfix, and no message.
			s := w.server(t, "mx.nostarttls.test")
			sessions, err := s.WaitSessions(waitCtx(t, deliveryLimit), s.Stats().Connections)
			if err != nil {
				t.Fatalf("sessions at mx.nostarttls.test did not end: %v", err)
			}
			for _, sess := range sessions {
				for _, h := range sess.Helos {
					if h == pf.hostname {
						t.Errorf("Postfix (EHLO %s) connected to mx.nostarttls.test: %q", h, sess.Commands)
					}
				}
			}
			if msgs := s.Messages(); len(msgs) != 0 {
				t.Errorf("mx.nostarttls.test received %d message(s), the first from %q in TLS %v", len(msgs), msgs[0].From, msgs[0].TLS)
			}
			if line, ok := findLine(pf.log(), "to=<"+routeFallbackTo+">", "relay=nostarttls.test["); ok {
				t.Errorf("Postfix tried nostarttls.test itself: %s", line)
			}
		})

		t.Run("a bounce (null sender) in a verify class to a domain without STARTTLS is deferred", func(t *testing.T) {
			t.Parallel()
			// sendmail -f '<>' gives the empty envelope sender (pickup:
			// "from=<>"). trivial-rewrite asks sender_dependent_default_
			// transport_maps for empty_address_default_transport_maps_
			// lookup_key (<>, as shipped); with -v it logs a socketmap
			// query for the key "<>" with its quotes (NOTFOUND), then one
			// for <> (smtp-phi:): the bounce leaves through the class
			// transport.
			smap := d.socketmap(t, "sender.transport")
			if out, code, _ := postmap(t, "<>", smap); code != 0 || out != "smtp-phi:" {
				t.Errorf("postmap -q '<>' %s: %q (exit %d), want smtp-phi:", smap, out, code)
			}
			id := sendNull(t, pf, routeNullRcpt, "null-sender")
			status := pf.delivery(t, routeNullRcpt)
			var missing []string
			for _, want := range []string{phiLogTag, "status=deferred", "dsn=4.7.", "TLS is required, but was not offered"} {
				if !strings.Contains(status, want) {
					missing = append(missing, want)
				}
			}
			if missing != nil {
				t.Errorf("delivery to %s: the status line lacks %q:\n%s", routeNullRcpt, missing, status)
			}
			t.Logf("maillog: %s", status)
			// qmgr logs the message with the empty sender.
			if line, ok := findLine(pf.log(), id+": from=<>,"); ok {
				t.Logf("maillog: %s", line)
			} else {
				t.Errorf("the maillog has no \"%s: from=<>,\" line", id)
			}
			s := w.server(t, "mx.plain.test")
			sessions, err := s.WaitSessions(waitCtx(t, deliveryLimit), s.Stats().Connections)
			if err != nil {
				t.Fatalf("sessions at mx.plain.test did not end: %v", err)
			}
			for _, sess := range sessions {
				if sess.Messages > 0 || sess.StartTLS {
					t.Errorf("a session at mx.plain.test delivered %d message(s) or sent STARTTLS: %q", sess.Messages, sess.Commands)
				}
			}
			if msgs := s.Messages(); len(msgs) != 0 {
				t.Errorf("mx.plain.test received %d message(s), the first from %q", len(msgs), msgs[0].From)
			}
			if q := pf.queue(t); !strings.Contains(q, routeNullRcpt) {
				t.Errorf("postqueue -p does not list %s:\n%s", routeNullRcpt, q)
			}
		})
	})
}

// waitRoute asks the transport map for key with postmap until it answers
// want. Before that it may only be NOTFOUND (exit 1): anything else fails
// the test, as does not answering want within timeout. It returns the
// answers seen, in order, without repeats ("" for NOTFOUND).
func waitRoute(t *testing.T, table, key, want string, timeout time.Duration) []string {
	t.Helper()
	var seen []string
	deadline := time.Now().Add(timeout)
	for {
		out, code, stderr := postmap(t, key, table)
		if len(seen) == 0 || seen[len(seen)-1] != out {
			seen = append(seen, out)
		}
		switch {
		case code == 0 && out == want:
			return seen
		case code != 1 || out != "":
			t.Fatalf("postmap -q %s %s: exit %d, %q (stderr %q), want %q or NOTFOUND; answers so far %q",
				key, table, code, out, strings.TrimSpace(stderr), want, seen)
		case time.Now().After(deadline):
			t.Fatalf("postmap -q %s %s: still NOTFOUND after %v, want %q", key, table, timeout, want)
		}
		time.Sleep(lookupStep)
	}
}

// sendNull submits a message with the null envelope sender (sendmail -f
// '<>') to rcpt and returns its queue ID, from the delivery status line in
// the maillog.
func sendNull(t *testing.T, pf *postfixInstance, rcpt, subject string) string {
	t.Helper()
	msg := fmt.Sprintf("From: MAILER-DAEMON\r\nTo: <%s>\r\nSubject: %s\r\n\r\nA bounce-like message for %s.\r\n", rcpt, subject, rcpt)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postfixCmd(t, "sendmail"), "-C", pf.conf, "-f", nullSenderArg, "-i", "--", rcpt)
	cmd.Stdin = strings.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sendmail -f '%s' to %s: %v\n%s", nullSenderArg, rcpt, err, out)
	}
	line := pf.waitLog(t, deliveryLimit, "the queue ID of the null-sender message", "to=<"+rcpt+">", " status=")
	// "... postfix/smtp-phi/smtp[PID]: QUEUEID: to=<rcpt>, ..."
	f := strings.Fields(strings.SplitN(line, ": to=<", 2)[0])
	if len(f) == 0 {
		t.Fatalf("no queue ID in %q", line)
	}
	return f[len(f)-1]
}
