package acceptance

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// The RCPT-time and per-class enforcement tests drive the daemon through
// the shipped Postfix wiring (contrib/postfix/main.cf, main-classes.cf and
// master-classes.cf, with the daemon's ports put in): check_policy_service at RCPT time, answered
// for swaks by a real smtpd, and sender_dependent_default_transport_maps
// with the smtp-CLASS transports at delivery, carried out by the real
// Postfix smtp client against fake MX hosts.

// The senders of the tests: one per class, and one of no class.
const (
	phiSender      = "doctor@clinic.test"
	portalSender   = "nurse@portal-clinic.test"
	gatewaySender  = "clerk@gateway-clinic.test"
	ordinarySender = "someone@office.test"
	phiMessage     = "recipient domain cannot receive mail over verified TLS; use the secure portal"
)

// phiLogTag is how the smtp-phi transport's lines start in the maillog:
// contrib/postfix/master-classes.cf sets its syslog_name to postfix/$service_name,
// and Postfix 3.7 adds the program name.
const phiLogTag = "postfix/smtp-phi/smtp["

// The fake MX hosts of TestRCPTEnforcement, each on an address of its own.
const (
	rcptTLSIP      = "127.0.0.41" // tls.test: STARTTLS, certificate from the test CA
	rcptNoTLSIP    = "127.0.0.42" // notls.test: no STARTTLS
	rcptTarpitIP   = "127.0.0.43" // tarpit.test: a banner, then silence
	rcptFallbackIP = "127.0.0.44" // the portal class's fallback route
)

// rcptRules are the rules of TestRCPTEnforcement: phi mail must be
// verified or is refused at RCPT time; portal and gateway mail that cannot
// be verified goes to a fallback route instead: portal's through the smtp
// transport, gateway's through its own class transport.
func rcptRules(fallback, classFallback string) string {
	return fmt.Sprintf(`defaults:
  level: may
  upgrade: encrypt
classes:
  - name: phi
    senders: ["@clinic.test"]
    level: verify
    on_fail: reject
    message: %q
  - name: portal
    senders: ["@portal-clinic.test"]
    level: verify
    on_fail: fallback
    fallback: %q
  - name: gateway
    senders: ["@gateway-clinic.test"]
    level: verify
    on_fail: fallback
    fallback: %q
`, phiMessage, fallback, classFallback)
}

// TestRCPTEnforcement checks sender classes end to end: what swaks is told
// at RCPT time by a Postfix smtpd asking the daemon (check_policy_service),
// what the Postfix smtp client then delivers through the class transport
// (smtp-phi, whose smtp_tls_policy_maps is the class map), what happens to
// mail that bypasses the RCPT check (sendmail), and that an unreachable
// policy service defers rather than accepts. Whatever the path, mail of
// the phi class never reaches a server in plaintext.
func TestRCPTEnforcement(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startMX(t,
		mxHost{"tls.test", "mx.tls.test", rcptTLSIP,
			fakemx.Options{Hostname: "mx.tls.test", TLS: w.verifiedTLS(t, "tls.test", "mx.tls.test")}},
		mxHost{"notls.test", "mx.notls.test", rcptNoTLSIP, fakemx.Options{Hostname: "mx.notls.test"}},
		mxHost{"tarpit.test", "mx.tarpit.test", rcptTarpitIP, fakemx.Options{Tarpit: true}},
		mxHost{"fallback.test", "mx.fallback.test", rcptFallbackIP,
			fakemx.Options{Hostname: "mx.fallback.test", TLS: w.verifiedTLSIP(t, rcptFallbackIP, "fallback.test", "mx.fallback.test")}},
	)
	fallback := fmt.Sprintf("smtp:[%s]:%d", rcptFallbackIP, w.port)
	classFallback := fmt.Sprintf("smtp-gateway:[fallback.test]:%d", w.port)
	config := rcptConfig(t, w, rcptRules(fallback, classFallback))
	d := startDaemon(t, config)
	pf := startContribPostfix(t, w, d, d.listen["policy"])

	t.Run("group", func(t *testing.T) {
		t.Run("phi to a domain without STARTTLS is rejected at RCPT", func(t *testing.T) {
			t.Parallel()
			const rcpt = "reject@notls.test"
			r := pf.rcptSettled(t, phiSender, rcpt, "phi-reject")
			if !strings.HasPrefix(r.reply, "5") || !strings.Contains(r.reply, "5.7.10") || !strings.Contains(r.reply, phiMessage) {
				t.Fatalf("RCPT TO:<%s> from %s: reply %q, want 5xx 5.7.10 with %q\n%s", rcpt, phiSender, r.reply, phiMessage, r.out)
			}
			t.Logf("RCPT reply: %s", r.reply)
			if line, ok := findLine(pf.log(), "NOQUEUE: reject: RCPT", "to=<"+rcpt+">"); !ok {
				t.Errorf("the maillog has no NOQUEUE reject for %s", rcpt)
			} else {
				t.Logf("maillog: %s", line)
			}
			if line, ok := findLine(pf.log(), "to=<"+rcpt+">", "status="); ok {
				t.Errorf("the rejected recipient %s has a delivery status: %s", rcpt, line)
			}
			if q := pf.queue(t); strings.Contains(q, rcpt) {
				t.Errorf("the rejected recipient %s is queued:\n%s", rcpt, q)
			}
		})

		t.Run("phi to a verified domain goes out through smtp-phi over verified TLS", func(t *testing.T) {
			t.Parallel()
			const rcpt = "verified@tls.test"
			r := pf.rcptSettled(t, phiSender, rcpt, "phi-verified")
			id := r.mustQueue(t)
			status := pf.delivery(t, rcpt)
			if !strings.Contains(status, "status=sent") || !strings.Contains(status, id+":") {
				t.Fatalf("mail %s to %s was not sent: %s", id, rcpt, status)
			}
			if !strings.Contains(status, phiLogTag) {
				t.Errorf("the delivery of %s was not logged by postfix/smtp-phi (the class transport): %s", rcpt, status)
			}
			// Verified: the level was verify. The default map answers at
			// most encrypt for tls.test (defaults: upgrade encrypt), so
			// verify came from the class map of smtp-phi.
			if line, ok := findLine(pf.log(), phiLogTag, "Verified TLS connection established to tls.test["); !ok {
				line, _ := findLine(pf.log(), "TLS connection established to tls.test[")
				t.Errorf("no Verified TLS connection to tls.test by smtp-phi; TLS line: %q", line)
			} else {
				t.Logf("maillog: %s", line)
			}
			m := w.waitMessage(t, "mx.tls.test", "Subject: phi-verified")
			if !m.TLS || m.From != phiSender {
				t.Errorf("message at mx.tls.test: from %q, TLS %v; want from %s over TLS", m.From, m.TLS, phiSender)
			}
		})

		t.Run("ordinary mail to a domain without STARTTLS flows in plaintext", func(t *testing.T) {
			t.Parallel()
			const rcpt = "ordinary@notls.test"
			r := pf.rcptSettled(t, ordinarySender, rcpt, "ordinary-plain")
			id := r.mustQueue(t)
			status := pf.delivery(t, rcpt)
			if !strings.Contains(status, "status=sent") || !strings.Contains(status, id+":") {
				t.Fatalf("mail %s to %s was not sent: %s", id, rcpt, status)
			}
			m := w.waitMessage(t, "mx.notls.test", "Subject: ordinary-plain")
			if m.TLS || m.From != ordinarySender {
				t.Errorf("message at mx.notls.test: from %q, TLS %v; want from %s in plaintext", m.From, m.TLS, ordinarySender)
			}
		})

		t.Run("portal mail to a domain without STARTTLS goes to the fallback", func(t *testing.T) {
			t.Parallel()
			const rcpt = "portal@notls.test"
			r := pf.rcptSettled(t, portalSender, rcpt, "portal-fallback")
			id := r.mustQueue(t)
			// smtpd logs the FILTER before the message has a queue ID.
			if line, ok := findLine(pf.log(), "NOQUEUE: filter: RCPT from", "triggers FILTER "+fallback+";", "to=<"+rcpt+">"); ok {
				t.Logf("maillog: %s", line)
			} else {
				t.Errorf("the maillog has no FILTER %s for %s", fallback, rcpt)
			}
			status := pf.delivery(t, rcpt)
			wantRelay := fmt.Sprintf("relay=%s[%s]:%d", rcptFallbackIP, rcptFallbackIP, w.port)
			if !strings.Contains(status, "status=sent") || !strings.Contains(status, wantRelay) {
				t.Fatalf("mail %s to %s: want status=sent with %s: %s", id, rcpt, wantRelay, status)
			}
			m := w.waitMessage(t, "mx.fallback.test", "Subject: portal-fallback")
			if m.From != portalSender || len(m.To) != 1 || m.To[0] != rcpt {
				t.Errorf("message at the fallback: from %q to %q; want from %s to %s", m.From, m.To, portalSender, rcpt)
			}
			// FILTER replaces the class transport: the fallback's next hop
			// is looked up in the default map (smtp_tls_policy_maps of the
			// smtp transport), not the class map. The fallback offers
			// STARTTLS, so the message goes over TLS at whatever level
			// that map gives; the class level is not applied.
			if !m.TLS {
				t.Errorf("the portal message reached the fallback in plaintext")
			}
			key := fmt.Sprintf("[%s]:%d", rcptFallbackIP, w.port)
			for _, table := range []string{"tlspolicy", "portal"} {
				out, code, _ := postmap(t, key, d.socketmap(t, table))
				t.Logf("postmap -q %s ...:%s: %q (exit %d)", key, table, out, code)
			}
			if line, ok := findLine(pf.log(), "TLS connection established to "+rcptFallbackIP+"["); ok {
				t.Logf("maillog: %s", line)
			}
		})

		t.Run("gateway mail to a domain without STARTTLS goes to the fallback through its class transport", func(t *testing.T) {
			t.Parallel()
			// The fallback names the class transport, as
			// contrib/postfix/main-classes.cf advises: the fallback hop then gets
			// the class level (verify) from the class map.
			const rcpt = "gateway@notls.test"
			r := pf.rcptSettled(t, gatewaySender, rcpt, "gateway-fallback")
			r.mustQueue(t)
			if _, ok := findLine(pf.log(), "NOQUEUE: filter: RCPT from", "triggers FILTER "+classFallback+";", "to=<"+rcpt+">"); !ok {
				t.Errorf("the maillog has no FILTER %s for %s", classFallback, rcpt)
			}
			status := pf.delivery(t, rcpt)
			wantRelay := fmt.Sprintf("relay=fallback.test[%s]:%d", rcptFallbackIP, w.port)
			for _, want := range []string{"postfix/smtp-gateway/smtp[", "status=sent", wantRelay} {
				if !strings.Contains(status, want) {
					t.Fatalf("mail to %s: the status line lacks %q: %s", rcpt, want, status)
				}
			}
			if line, ok := findLine(pf.log(), "postfix/smtp-gateway/smtp[", "Verified TLS connection established to fallback.test["); ok {
				t.Logf("maillog: %s", line)
			} else {
				t.Errorf("no Verified TLS connection to fallback.test by smtp-gateway")
			}
			m := w.waitMessage(t, "mx.fallback.test", "Subject: gateway-fallback")
			if m.From != gatewaySender || !m.TLS {
				t.Errorf("message at the fallback: from %q, TLS %v; want from %s over TLS", m.From, m.TLS, gatewaySender)
			}
		})

		t.Run("phi to a domain still being probed is deferred at RCPT", func(t *testing.T) {
			t.Parallel()
			const rcpt = "later@tarpit.test"
			// One attempt, at once: the tarpit holds the probe until
			// probe.timeout, well past probe.wait.
			r := pf.rcpt(t, phiSender, rcpt, "phi-tarpit")
			if !strings.HasPrefix(r.reply, "450 ") || !strings.Contains(r.reply, "4.7.10") {
				t.Fatalf("RCPT TO:<%s> from %s: reply %q, want 450 4.7.10\n%s", rcpt, phiSender, r.reply, r.out)
			}
			t.Logf("RCPT reply: %s", r.reply)
			if q := pf.queue(t); strings.Contains(q, rcpt) {
				t.Errorf("the deferred recipient %s is queued:\n%s", rcpt, q)
			}
		})

		t.Run("phi injected with sendmail to a domain without STARTTLS is deferred", func(t *testing.T) {
			t.Parallel()
			const rcpt = "bypass@notls.test"
			pf.send(t, phiSender, rcpt, "phi-bypass-notls")
			status := pf.delivery(t, rcpt)
			var missing []string
			for _, want := range []string{phiLogTag, "status=deferred", "dsn=4.7.", "TLS is required, but was not offered"} {
				if !strings.Contains(status, want) {
					missing = append(missing, want)
				}
			}
			if missing != nil {
				t.Errorf("delivery to %s: the status line lacks %q:\n%s", rcpt, missing, status)
			}
			// Let the sessions so far end before looking at them.
			s := w.server(t, "mx.notls.test")
			sessions, err := s.WaitSessions(waitCtx(t, deliveryLimit), s.Stats().Connections)
			if err != nil {
				t.Fatalf("sessions at mx.notls.test did not end: %v", err)
			}
			for _, m := range s.Messages() {
				if m.From == phiSender {
					t.Errorf("mx.notls.test received a phi message (to %q, TLS %v)", m.To, m.TLS)
				}
			}
			for _, sess := range sessions {
				if strings.HasPrefix(sess.RemoteAddr, "127.0.0.1:") && sess.StartTLS {
					t.Errorf("a session at mx.notls.test sent STARTTLS, which it does not offer: %q", sess.Commands)
				}
			}
			if q := pf.queue(t); !strings.Contains(q, rcpt) {
				t.Errorf("postqueue -p does not list %s:\n%s", rcpt, q)
			}
		})

		t.Run("phi injected with sendmail to a verified domain goes out verified", func(t *testing.T) {
			t.Parallel()
			const rcpt = "bypass@tls.test"
			pf.send(t, phiSender, rcpt, "phi-bypass-tls")
			status := pf.delivery(t, rcpt)
			if !strings.Contains(status, "status=sent") || !strings.Contains(status, phiLogTag) {
				t.Fatalf("mail to %s was not sent by smtp-phi: %s", rcpt, status)
			}
			if _, ok := findLine(pf.log(), phiLogTag, "Verified TLS connection established to tls.test["); !ok {
				t.Errorf("no Verified TLS connection to tls.test by smtp-phi")
			}
			m := w.waitMessage(t, "mx.tls.test", "Subject: phi-bypass-tls")
			if !m.TLS || m.From != phiSender {
				t.Errorf("message at mx.tls.test: from %q, TLS %v; want from %s over TLS", m.From, m.TLS, phiSender)
			}
		})

		t.Run("policy service unreachable defers at RCPT", func(t *testing.T) {
			t.Parallel()
			// The shipped wiring with check_policy_service pointing at a
			// port where nothing listens; the maps are the live daemon's,
			// so that only the policy service is missing.
			dead := freePorts(t, 1)[0]
			pf := startContribPostfix(t, w, d, dead)
			r := pf.rcpt(t, phiSender, "unreachable@notls.test", "phi-unreachable")
			if !strings.HasPrefix(r.reply, "4") || !strings.Contains(r.reply, "4.7.10") ||
				!strings.Contains(r.reply, "TLS policy service unavailable") {
				t.Fatalf("RCPT with the policy service unreachable: reply %q, want 4xx 4.7.10 TLS policy service unavailable (default_action)\n%s",
					r.reply, r.out)
			}
			t.Logf("RCPT reply: %s", r.reply)
		})

		t.Run("daemon stopped defers at RCPT", func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, config)
			pf := startContribPostfix(t, w, d, d.listen["policy"])
			if code := d.stop(t, os.Interrupt); code != 0 {
				t.Errorf("tlspolicyd exited with %d after SIGINT, want 0", code)
			}
			for _, from := range []string{phiSender, ordinarySender} {
				r := pf.rcpt(t, from, "stopped@tls.test", "daemon-stopped")
				if !strings.HasPrefix(r.reply, "4") {
					t.Errorf("RCPT from %s with the daemon stopped: reply %q, want 4xx\n%s", from, r.reply, r.out)
				}
				t.Logf("RCPT reply from %s: %s", from, r.reply)
			}
		})
	})

	// Whatever happened above, no phi message reached any server in
	// plaintext, and only ordinary mail reached notls.test: phi mail was
	// refused or deferred, portal and gateway mail went to the fallback.
	for host, s := range w.mx {
		for _, m := range s.Messages() {
			if m.From == phiSender && !m.TLS {
				t.Errorf("%s received a phi message in plaintext (to %q)", host, m.To)
			}
			if host == "mx.notls.test" && m.From != ordinarySender {
				t.Errorf("%s received a message from %s (to %q, TLS %v)", host, m.From, m.To, m.TLS)
			}
		}
	}
}

// rcptClasses are the classes of rcptRules, phi first.
var rcptClasses = []string{"phi", "portal", "gateway"}

// rcptConfig is the daemon configuration of the RCPT tests: the probing
// configuration with a policy delegation listener.
func rcptConfig(t *testing.T, w *world, rules string) string {
	t.Helper()
	return strings.Replace(w.probeConfig(t, rules), "listen:\n", "listen:\n  policy: @POLICY@\n", 1)
}

// verifiedTLSIP is verifiedTLS for a server also reached by address: its
// certificate names ip as well.
func (w *world) verifiedTLSIP(t *testing.T, ip string, names ...string) *tls.Config {
	t.Helper()
	cert := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: names, IPs: []net.IP{net.ParseIP(ip)}})
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// The shipped Postfix configuration, relative to this package: the policy
// map alone (main.cf), and the classes and fallback wiring added to it.
const (
	contribMainCF        = "../../contrib/postfix/main.cf"
	contribClassesMainCF = "../../contrib/postfix/main-classes.cf"
	contribMasterCF      = "../../contrib/postfix/master-classes.cf"
	// The addresses the contrib files use for the daemon's listeners.
	contribSocketmap = "127.0.0.1:10028"
	contribPolicy    = "127.0.0.1:10030"
)

// contribRecipientCheck is what main-classes.cf asks a site to add to its
// smtpd_recipient_restrictions: the harness's instance has none of its
// own, so the merged list is the check alone.
const contribRecipientCheck = "smtpd_recipient_restrictions = $tlspolicyd_recipient_check"

// contribPostfix returns contrib/postfix/main.cf with main-classes.cf, and
// master-classes.cf, with the daemon's socketmap address and policyAddr
// put in and the recipient check merged into the instance's (empty)
// smtpd_recipient_restrictions as main-classes.cf says. The CA file
// setting is left out (the instance trusts the world's CA). master.cf gets
// a transport for every class of the tests: smtp-phi as shipped, and one
// for each of classes made from it the way its comment says.
func contribPostfix(t *testing.T, socketmapAddr, policyAddr string, classes ...string) (mainCF, masterCF string) {
	t.Helper()
	main, classesMain, master := readContrib(t, contribMainCF), readContrib(t, contribClassesMainCF), readContrib(t, contribMasterCF)
	for _, want := range []struct{ file, text, has string }{
		{contribMainCF, main, contribSocketmap},
		{contribClassesMainCF, classesMain, contribSocketmap},
		{contribClassesMainCF, classesMain, contribPolicy},
		{contribClassesMainCF, classesMain, "tlspolicyd_recipient_check ="},
		{contribMasterCF, master, contribSocketmap + ":phi"},
	} {
		if !strings.Contains(want.text, want.has) {
			t.Fatalf("%s no longer has %q, which this test replaces with the daemon's address", want.file, want.has)
		}
	}
	ports := strings.NewReplacer(contribSocketmap, socketmapAddr, contribPolicy, policyAddr)
	var settings []string
	for _, s := range mainCFSettings(main + "\n" + classesMain + "\n" + contribRecipientCheck) {
		if !strings.HasPrefix(s, "smtp_tls_CAfile ") && !strings.HasPrefix(s, "smtp_tls_CAfile=") {
			settings = append(settings, ports.Replace(s))
		}
	}
	master = ports.Replace(master)
	// The smtp-phi entry: its first line and the option lines after it.
	entry := regexp.MustCompile(`(?m)^smtp-phi\s.*\n(?:[ \t]+.*\n?)*`).FindString(master)
	if entry == "" {
		t.Fatalf("%s has no smtp-phi entry", contribMasterCF)
	}
	for _, c := range classes {
		master += "\n" + strings.NewReplacer("smtp-phi", "smtp-"+c, ":phi", ":"+c).Replace(entry)
	}
	return strings.Join(settings, "\n") + "\n", master
}

// readContrib returns a shipped contrib file.
func readContrib(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the shipped Postfix configuration: %v", err)
	}
	return string(b)
}

// startContribPostfix starts a Postfix instance with an smtpd listener and
// the shipped wiring to daemon d, with check_policy_service at policyAddr,
// and checks that its main.cf holds every shipped setting.
func startContribPostfix(t *testing.T, w *world, d *daemon, policyAddr string) *postfixInstance {
	t.Helper()
	return startContribPostfixHosts(t, w, d, policyAddr, map[string]string{
		"tls.test": rcptTLSIP, "notls.test": rcptNoTLSIP, "tarpit.test": rcptTarpitIP,
		"fallback.test": rcptFallbackIP,
	})
}

// startContribPostfixHosts is startContribPostfix with hosts as the
// instance's /etc/hosts (name to address).
func startContribPostfixHosts(t *testing.T, w *world, d *daemon, policyAddr string, hosts map[string]string) *postfixInstance {
	t.Helper()
	mainCF, masterCF := contribPostfix(t, d.listen["socketmap"], policyAddr, rcptClasses[1:]...)
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: d.socketmap(t, "tlspolicy"),
		CAFile:     w.caFile,
		SMTPPort:   w.port,
		Hosts:      hosts,
		SMTPD:      true,
		MainCF:     mainCF,
		MasterCF:   masterCF,
	})
	// A fatal error of a Postfix daemon (a setting it cannot parse, say)
	// shows to swaks only as a dropped connection: name it.
	t.Cleanup(func() {
		for _, l := range strings.Split(pf.log(), "\n") {
			switch {
			case strings.Contains(l, " fatal: ") || strings.Contains(l, " panic: "):
				t.Errorf("maillog: %s", l)
			case strings.Contains(l, " warning: "):
				t.Logf("maillog: %s", l)
			}
		}
	})
	// The instance's main.cf must hold the shipped settings as shipped.
	have, err := pf.run(t, 30*time.Second, postfixCmd(t, "postconf"), "-c", pf.conf, "-n")
	if err != nil {
		t.Fatalf("postconf -n: %v\n%s", err, have)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(have, "\n") {
		lines[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, s := range mainCFSettings(mainCF) {
		name, value, _ := strings.Cut(s, "=")
		want := strings.TrimSpace(name) + " = " + strings.Join(strings.Fields(value), " ")
		if !lines[want] {
			t.Errorf("the instance's main.cf lacks the shipped setting %q; postconf -n:\n%s", want, have)
		}
	}
	for _, c := range rcptClasses {
		svc := "smtp-" + c + "/unix"
		if out, err := pf.run(t, 30*time.Second, postfixCmd(t, "postconf"), "-c", pf.conf, "-M", svc); err != nil || out == "" {
			t.Errorf("master.cf has no %s service: %v %s", svc, err, out)
		}
	}
	return pf
}

// smtpResult is how one swaks session went.
type smtpResult struct {
	reply string // the server's reply to RCPT TO
	queue string // the reply to the end of DATA, if the mail was accepted
	exit  int
	out   string // the whole transcript
}

// mustQueue fails the test unless the mail was accepted, and returns its
// queue ID.
func (r smtpResult) mustQueue(t *testing.T) string {
	t.Helper()
	if !strings.HasPrefix(r.reply, "250 ") {
		t.Fatalf("RCPT was not accepted: %q\n%s", r.reply, r.out)
	}
	_, id, ok := strings.Cut(r.queue, "queued as ")
	if !strings.HasPrefix(r.queue, "250 ") || !ok || r.exit != 0 {
		t.Fatalf("the message was not queued (swaks exit %d): %q\n%s", r.exit, r.queue, r.out)
	}
	return strings.TrimSpace(id)
}

// swaksLimit bounds one swaks session: an unreachable policy service costs
// Postfix two tries of timeout=10s at most.
const swaksLimit = 60 * time.Second

// rcpt sends one message with swaks to the instance's smtpd and returns
// the replies to RCPT TO and to the end of DATA. The subject names the
// message.
func (pf *postfixInstance) rcpt(t *testing.T, from, to, subject string) smtpResult {
	t.Helper()
	if pf.smtpd == "" {
		t.Fatal("the Postfix instance has no smtpd listener (postfixOptions.SMTPD)")
	}
	host, port, _ := net.SplitHostPort(pf.smtpd)
	ctx, cancel := context.WithTimeout(context.Background(), swaksLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "swaks", "--server", host, "--port", port,
		"--from", from, "--to", to, "--helo", "swaks.test",
		"--header", "Subject: "+subject, "--body", "A test message for "+to+".",
		"--timeout", "50s")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("swaks to %s did not finish within %v:\n%s", to, swaksLimit, out)
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("running swaks: %v", err)
	}
	r := smtpResult{exit: cmd.ProcessState.ExitCode(), out: string(out)}
	r.reply = replyAfter(r.out, "-> RCPT TO:<"+to+">")
	r.queue = replyAfter(r.out, "-> .")
	if r.reply == "" {
		t.Fatalf("swaks to %s: no reply to RCPT TO (exit %d):\n%s", to, r.exit, out)
	}
	return r
}

// rcptSettled is rcpt, tried again while the daemon does not know the
// recipient domain yet (450 4.7.10), the way a sending MTA retries: the
// daemon waits only probe.wait for a probe, which a busy machine may
// exceed. It returns the first other outcome.
func (pf *postfixInstance) rcptSettled(t *testing.T, from, to, subject string) smtpResult {
	t.Helper()
	deadline := time.Now().Add(probeSettle)
	for {
		r := pf.rcpt(t, from, to, subject)
		if !strings.HasPrefix(r.reply, "450 4.7.10 ") || time.Now().After(deadline) {
			return r
		}
		t.Logf("RCPT TO:<%s> from %s: %s; trying again", to, from, r.reply)
		time.Sleep(lookupStep)
	}
}

// replyAfter returns the server reply that follows the line of a swaks
// transcript holding sent ("-> RCPT TO:<...>"), without swaks's marker,
// or "".
func replyAfter(transcript, sent string) string {
	lines := strings.Split(transcript, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != sent {
			continue
		}
		for _, next := range lines[i+1:] {
			next = strings.TrimSpace(next)
			for _, mark := range []string{"<** ", "<- "} {
				if rest, ok := strings.CutPrefix(next, mark); ok {
					return strings.TrimSpace(rest)
				}
			}
		}
	}
	return ""
}

// waitMessage waits until the fake MX of host has a message whose data
// holds has, and returns it.
func (w *world) waitMessage(t *testing.T, host, has string) fakemx.Message {
	t.Helper()
	s := w.server(t, host)
	ctx := waitCtx(t, deliveryLimit)
	for n := 1; ; n++ {
		msgs, err := s.WaitMessages(ctx, n)
		if err != nil {
			t.Fatalf("%s received no message with %q: %v", host, has, err)
		}
		for _, m := range msgs {
			if strings.Contains(string(m.Data), has) {
				return m
			}
		}
		n = len(msgs)
	}
}
