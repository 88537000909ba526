package acceptance

import (
	"strings"
	"testing"
)

// TestPostfixWiringWithTheDaemonDown checks what the comments of
// contrib/postfix say each file makes depend on the daemon, on one Postfix
// instance with nothing answering at the daemon's addresses (the ports are
// held, so connections are refused as by a stopped daemon):
//
//   - main.cf alone (the policy map): mail for the instance's own domain
//     is delivered, and only the smtp(8) delivery to another domain waits,
//     with "client TLS configuration problem";
//   - with main-classes.cf added as it says (the recipient check merged
//     into smtpd_recipient_restrictions): local mail waits too, with
//     "address resolver failure" (4.3.0, from transport_maps); smtpd
//     refuses a local recipient with 451 4.3.0 when the client is outside
//     mynetworks, and with the recipient check's 450 4.7.10 when inside.
//
// Local delivery is the discard transport here (the instance has no
// mailboxes); what matters is that the address is local.
func TestPostfixWiringWithTheDaemonDown(t *testing.T) {
	t.Parallel()
	dead := freePorts(t, 2)
	for _, addr := range dead {
		holdPort(t, addr)
	}
	socketmapAddr, policyAddr := dead[0], dead[1]
	ports := strings.NewReplacer(contribSocketmap, socketmapAddr, contribPolicy, policyAddr)
	main := ports.Replace(readContrib(t, contribMainCF))
	classes := ports.Replace(readContrib(t, contribClassesMainCF) + "\n" + contribRecipientCheck + "\n")
	var minimal []string
	for _, s := range mainCFSettings(main) {
		if !strings.HasPrefix(s, "smtp_tls_CAfile") {
			minimal = append(minimal, s)
		}
	}
	const remoteIP = "127.0.0.61" // nothing listens there: smtp(8) must not even try
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: "socketmap:inet:" + socketmapAddr + ":tlspolicy",
		SMTPPort:   25,
		Hosts:      map[string]string{"remote.test": remoteIP},
		SMTPD:      true,
		MainCF: strings.Join(minimal, "\n") + "\n" +
			"mydestination = $myhostname\nlocal_transport = discard:delivered locally\n",
		MasterCF: ports.Replace(readContrib(t, contribMasterCF)),
	})
	sender := "sender@" + pf.hostname

	// main.cf alone.
	pf.send(t, sender, "first@"+pf.hostname, "local, policy map only")
	if line := pf.delivery(t, "first@"+pf.hostname); !strings.Contains(line, "status=sent (delivered locally)") {
		t.Errorf("with main.cf alone, local mail was not delivered while the daemon is down: %s", line)
	}
	pf.send(t, sender, "someone@remote.test", "remote, policy map only")
	if line := pf.delivery(t, "someone@remote.test"); !containsAll(line, policyLookupDeferred...) {
		t.Errorf("with main.cf alone, mail to another domain: %s\nwant %q", line, policyLookupDeferred)
	}

	// main-classes.cf added.
	pf.reconfigure(t, mainCFSettings(classes)...)
	pf.send(t, sender, "second@"+pf.hostname, "local, with main-classes.cf")
	if line := pf.delivery(t, "second@"+pf.hostname); !containsAll(line, "status=deferred", "address resolver failure") {
		t.Errorf("with main-classes.cf, local mail while the daemon is down: %s\nwant deferred, address resolver failure", line)
	}
	// swaks connects from 127.0.0.1: a client of mynetworks first, then,
	// with mynetworks moved away, one from the internet, which the relay
	// restrictions check (which needs the address resolved) before the
	// recipient restrictions run.
	if r := pf.rcpt(t, sender, "third@"+pf.hostname, "local over SMTP from mynetworks"); !strings.HasPrefix(r.reply, "450 4.7.10 ") {
		t.Errorf("with main-classes.cf, smtpd answered RCPT TO a local address from mynetworks with %q, want 450 4.7.10 ... (the recipient check's default_action)", r.reply)
	}
	pf.reconfigure(t, "mynetworks = 127.0.0.2/32")
	if r := pf.rcpt(t, "someone@internet.test", "fourth@"+pf.hostname, "local over SMTP from the internet"); !strings.HasPrefix(r.reply, "451 4.3.0 ") {
		t.Errorf("with main-classes.cf, smtpd answered RCPT TO a local address from the internet with %q, want 451 4.3.0 ...", r.reply)
	}
}

// reconfigure applies main.cf settings ("name = value") with postconf -e
// and reloads Postfix, waiting until the master has re-read its
// configuration.
func (pf *postfixInstance) reconfigure(t *testing.T, settings ...string) {
	t.Helper()
	reloads := strings.Count(pf.log(), "reload -- version")
	pf.postconf(t, append([]string{"-e"}, settings...)...)
	if out, err := pf.run(t, postfixStartLimit, postfixCmd(t, "postfix"), "-c", pf.conf, "reload"); err != nil {
		t.Fatalf("postfix reload: %v\n%s", err, out)
	}
	eventually(t, postfixStartLimit, "postfix reload", func() (bool, string) {
		n := strings.Count(pf.log(), "reload -- version")
		return n > reloads, "no new \"reload -- version\" line in the maillog"
	})
}

// containsAll reports whether s holds every one of parts.
func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
