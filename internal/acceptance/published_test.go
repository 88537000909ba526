package acceptance

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// publishedRules are the rules of TestPublished: the floor is may and a
// good probe raises to encrypt, so an answer of secure or dane-only can
// only come from a published policy. optout.test and dane-optout.test
// opt out of one source each.
const publishedRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: optout.test
    mtasts: false
  - match: dane.test
    dane: false
`

// Metric names of the published-policy sources.
const (
	stsFetches  = "tlspolicyd_mtasts_fetches_total"
	stsLookups  = "tlspolicyd_mtasts_lookups_total"
	stsPolicies = "tlspolicyd_mtasts_policies"
	daneLookups = "tlspolicyd_dane_lookups_total"
)

// TestPublished drives the built daemon with MTA-STS and DANE on, through
// the real postmap, against a fake DNS, fake MX hosts and fake MTA-STS
// policy hosts (HTTPS on 127.0.0.x:443 with certificates from a test CA).
// Every MX host has a certificate the probe verifies, so without a
// published policy the answer is the probe's: encrypt (the default
// upgrade). Each case has a daemon and a policy host of its own, so that
// its metrics and request counts are its own.
func TestPublished(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startMX(t,
		w.verifiedMX(t, "sts.test", "127.0.0.201"),
		w.verifiedMX(t, "testing.test", "127.0.0.202"),
		w.verifiedMX(t, "none.test", "127.0.0.203"),
		w.verifiedMX(t, "idchange.test", "127.0.0.204"),
		w.verifiedMX(t, "withdraw.test", "127.0.0.205"),
		w.verifiedMX(t, "failcache.test", "127.0.0.206"),
		w.verifiedMX(t, "nosrv.test", "127.0.0.207"),
		w.verifiedMX(t, "err500.test", "127.0.0.208"),
		w.verifiedMX(t, "toolarge.test", "127.0.0.209"),
		w.verifiedMX(t, "malformed.test", "127.0.0.210"),
		w.verifiedMX(t, "nomx.test", "127.0.0.211"),
		w.daneMX(t, "dane.test", "127.0.0.212", true),
		w.daneMX(t, "dane-noad.test", "127.0.0.213", false),
		w.daneMX(t, "dane-sts.test", "127.0.0.214", true),
		w.verifiedMX(t, "optout.test", "127.0.0.215"),
		w.daneMX(t, "dane2.test", "127.0.0.216", true),
	)
	config := w.publishedConfig(t, longTTL, publishedRules)
	refreshing := w.publishedConfig(t, shortTTL, publishedRules)

	t.Run("enforce answers secure with the policy's mx patterns", func(t *testing.T) {
		t.Parallel()
		const domain = "sts.test"
		ph := w.startPolicyHost(t, "127.0.0.221", map[string]string{
			domain: "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmx: *.sts-wild.test\nmax_age: 86400\n",
		})
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		want := "secure match=mx.sts.test:.sts-wild.test servername=hostname protocols=>=TLSv1.2"
		// The probe and the policy are gathered together: before both are
		// in, only the floor.
		seen := waitAnswer(t, table, domain, want, []string{may}, probeSettle)
		t.Logf("answers: %q", seen)
		for range 3 {
			checkLookup(t, table, lookup{key: domain, want: want}, "")
		}
		// Keys that are not the recipient domain get no MTA-STS answer
		// (RFC 8461 section 3.4): a .parent key no rule names is NOTFOUND.
		checkLookup(t, table, lookup{key: ".sts.test", res: notFound}, "")
		if n := ph.hitsOf(domain); n != 1 {
			t.Errorf("the policy host received %d requests for %s, want 1 (later lookups answer from memory)", n, domain)
		}
		wantMetric(t, d, stsFetches, map[string]string{"result": "ok"}, 1)
		wantMetric(t, d, stsPolicies, map[string]string{"mode": "enforce"}, 1)
	})

	t.Run("testing and none modes change nothing", func(t *testing.T) {
		t.Parallel()
		w.startPolicyHost(t, "127.0.0.222", map[string]string{
			"testing.test": stsPolicy("testing", "mx.testing.test"),
			"none.test":    stsPolicy("none"),
		})
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		for _, domain := range []string{"testing.test", "none.test"} {
			seen := waitAnswer(t, table, domain, encrypt, []string{may}, probeSettle)
			t.Logf("%s: answers %q", domain, seen)
		}
		waitMetric(t, d, stsFetches, map[string]string{"result": "ok"}, 2, probeSettle)
		// Both policies are known now; the answers stay the probe's.
		for _, domain := range []string{"testing.test", "none.test"} {
			checkLookup(t, table, lookup{key: domain, want: encrypt}, "")
		}
		wantMetric(t, d, stsFetches, map[string]string{"result": "ok"}, 2)
		wantMetric(t, d, stsPolicies, map[string]string{"mode": "testing"}, 1)
		wantMetric(t, d, stsPolicies, map[string]string{"mode": "none"}, 1)
		wantMetric(t, d, stsPolicies, map[string]string{"mode": "enforce"}, 0)
	})

	t.Run("a new id is fetched and its mx patterns answered", func(t *testing.T) {
		t.Parallel()
		const domain = "idchange.test"
		ph := w.startPolicyHost(t, "127.0.0.223", map[string]string{
			domain: stsPolicy("enforce", "mx1.idchange.test"),
		})
		d := startDaemon(t, refreshing)
		table := d.socketmap(t, "tlspolicy")
		first := stsSecure("mx1.idchange.test")
		waitAnswer(t, table, domain, first, []string{may}, probeSettle)

		// A refresh with the same id looks the record up and fetches
		// nothing.
		holdAnswer(t, table, domain, first, refreshSettle, "a refresh with id 1",
			metricAtLeast(t, d, stsLookups, map[string]string{"outcome": "cached"}, 1))
		if n := ph.hitsOf(domain); n != 1 {
			t.Errorf("after a refresh with the same id: %d policy requests, want 1", n)
		}

		ph.set(domain, policyAnswer{body: stsPolicy("enforce", "mx2.idchange.test", "*.idchange-wild.test")})
		w.setSTSID(domain, "2")
		second := stsSecure("mx2.idchange.test", ".idchange-wild.test")
		seen := waitAnswer(t, table, domain, second, []string{first, may}, refreshSettle)
		t.Logf("answers after the id change: %q", seen)
		if n := ph.hitsOf(domain); n != 2 {
			t.Errorf("after the id change: %d policy requests, want 2", n)
		}
		wantMetric(t, d, stsFetches, map[string]string{"result": "ok"}, 2)
		wantMetric(t, d, stsPolicies, map[string]string{"mode": "enforce"}, 1)
	})

	t.Run("mode none withdraws a cached enforce policy", func(t *testing.T) {
		t.Parallel()
		const domain = "withdraw.test"
		ph := w.startPolicyHost(t, "127.0.0.224", map[string]string{
			domain: stsPolicy("enforce", "mx.withdraw.test"),
		})
		d := startDaemon(t, refreshing)
		table := d.socketmap(t, "tlspolicy")
		enforced := stsSecure("mx.withdraw.test")
		waitAnswer(t, table, domain, enforced, []string{may}, probeSettle)

		ph.set(domain, policyAnswer{body: stsPolicy("none")})
		w.setSTSID(domain, "2")
		seen := waitAnswer(t, table, domain, encrypt, []string{enforced, may}, refreshSettle)
		t.Logf("answers after mode none: %q", seen)
		checkLookup(t, table, lookup{key: domain, want: encrypt}, "")
		wantMetric(t, d, stsPolicies, map[string]string{"mode": "none"}, 1)
		wantMetric(t, d, stsPolicies, map[string]string{"mode": "enforce"}, 0)
	})

	t.Run("a failed fetch keeps the cached policy", func(t *testing.T) {
		t.Parallel()
		const domain = "failcache.test"
		ph := w.startPolicyHost(t, "127.0.0.225", map[string]string{
			domain: stsPolicy("enforce", "mx.failcache.test"),
		})
		d := startDaemon(t, refreshing)
		table := d.socketmap(t, "tlspolicy")
		enforced := stsSecure("mx.failcache.test")
		waitAnswer(t, table, domain, enforced, []string{may}, probeSettle)
		cachedOnFailure := map[string]string{"outcome": "fetch_failed_cached"}

		// The policy host answers 500 to the fetch a new id forces.
		ph.set(domain, policyAnswer{status: http.StatusInternalServerError, body: "broken\n"})
		w.setSTSID(domain, "2")
		holdAnswer(t, table, domain, enforced, refreshSettle, "policy host answering 500",
			metricAtLeast(t, d, stsLookups, cachedOnFailure, 1))
		wantMetric(t, d, stsFetches, map[string]string{"result": "http_error"}, 1)
		if n := ph.hitsOf(domain); n != 2 {
			t.Errorf("policy requests: %d, want 2 (the first fetch and the failed one for id 2)", n)
		}

		// The policy host goes away; a new id forces another fetch.
		ph.close()
		w.setSTSID(domain, "3")
		holdAnswer(t, table, domain, enforced, refreshSettle, "policy host gone",
			metricAtLeast(t, d, stsFetches, map[string]string{"result": "connect_error"}, 1))
		before := d.metric(t, stsLookups, cachedOnFailure)
		holdAnswer(t, table, domain, enforced, refreshSettle, "another refresh with the host gone",
			metricAtLeast(t, d, stsLookups, cachedOnFailure, before+1))
		wantMetric(t, d, stsPolicies, map[string]string{"mode": "enforce"}, 1)
	})

	t.Run("a failed fetch without a cached policy gives the probe's answer", func(t *testing.T) {
		t.Parallel()
		ph := w.startPolicyHost(t, "127.0.0.226", map[string]string{"err500.test": ""})
		ph.set("err500.test", policyAnswer{status: http.StatusInternalServerError, body: "broken\n"})
		// nosrv.test publishes a record, but nothing listens on its
		// policy host's address.
		w.dns.AddA("mta-sts.nosrv.test", "127.0.0.250")
		w.setSTSID("nosrv.test", "1")
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		for _, domain := range []string{"nosrv.test", "err500.test"} {
			seen := waitAnswer(t, table, domain, encrypt, []string{may}, probeSettle)
			t.Logf("%s: answers %q", domain, seen)
			checkLookup(t, table, lookup{key: domain, want: encrypt}, "")
		}
		waitMetric(t, d, stsFetches, map[string]string{"result": "connect_error"}, 1, probeSettle)
		waitMetric(t, d, stsFetches, map[string]string{"result": "http_error"}, 1, probeSettle)
		wantMetric(t, d, stsFetches, map[string]string{"result": "ok"}, 0)
		wantMetric(t, d, stsPolicies, nil, 0)
	})

	t.Run("oversized and malformed policies are ignored", func(t *testing.T) {
		t.Parallel()
		// A valid enforce policy, padded with extension fields past the
		// 64 KiB limit: refused for its size, not its content.
		big := stsPolicy("enforce", "mx.toolarge.test")
		pad := "x-padding: " + strings.Repeat("a", 1000) + "\n"
		for len(big) <= 64<<10 {
			big += pad
		}
		w.startPolicyHost(t, "127.0.0.227", map[string]string{
			"toolarge.test":  big,
			"malformed.test": "version: STSv1\nmode: enforcing\nmx: mx.malformed.test\nmax_age: 86400\n",
			"nomx.test":      "version: STSv1\nmode: enforce\nmax_age: 86400\n",
		})
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		for _, domain := range []string{"toolarge.test", "malformed.test", "nomx.test"} {
			seen := waitAnswer(t, table, domain, encrypt, []string{may}, probeSettle)
			t.Logf("%s: answers %q", domain, seen)
			checkLookup(t, table, lookup{key: domain, want: encrypt}, "")
		}
		waitMetric(t, d, stsFetches, map[string]string{"result": "too_large"}, 1, probeSettle)
		waitMetric(t, d, stsFetches, map[string]string{"result": "invalid"}, 2, probeSettle)
		wantMetric(t, d, stsFetches, map[string]string{"result": "ok"}, 0)
		wantMetric(t, d, stsPolicies, nil, 0)
	})

	t.Run("DANE with the AD bit answers dane-only", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		seen := waitAnswer(t, table, "dane2.test", daneOnly, []string{may}, probeSettle)
		t.Logf("answers: %q", seen)
		checkLookup(t, table, lookup{key: "dane2.test", want: daneOnly}, "")
		waitMetric(t, d, daneLookups, map[string]string{"result": "dane_only"}, 1, probeSettle)
	})

	t.Run("DANE without the AD bit changes nothing", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		seen := waitAnswer(t, table, "dane-noad.test", encrypt, []string{may}, probeSettle)
		t.Logf("answers: %q", seen)
		checkLookup(t, table, lookup{key: "dane-noad.test", want: encrypt}, "")
		waitMetric(t, d, daneLookups, map[string]string{"result": "insecure"}, 1, probeSettle)
		wantMetric(t, d, daneLookups, map[string]string{"result": "dane_only"}, 0)
	})

	t.Run("DANE comes before MTA-STS", func(t *testing.T) {
		t.Parallel()
		const domain = "dane-sts.test"
		w.startPolicyHost(t, "127.0.0.228", map[string]string{
			domain: stsPolicy("enforce", "mx.dane-sts.test"),
		})
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		seen := waitAnswer(t, table, domain, daneOnly, []string{may}, probeSettle)
		t.Logf("answers: %q", seen)
		// Both sources were consulted: the MTA-STS policy is known, and
		// DANE still decides.
		waitMetric(t, d, stsFetches, map[string]string{"result": "ok"}, 1, probeSettle)
		waitMetric(t, d, daneLookups, map[string]string{"result": "dane_only"}, 1, probeSettle)
		checkLookup(t, table, lookup{key: domain, want: daneOnly}, "")
	})

	t.Run("a rule opts out of MTA-STS", func(t *testing.T) {
		t.Parallel()
		const domain = "optout.test"
		w.startPolicyHost(t, "127.0.0.229", map[string]string{
			domain: stsPolicy("enforce", "mx.optout.test"),
		})
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		seen := waitAnswer(t, table, domain, encrypt, []string{may}, probeSettle)
		t.Logf("answers: %q", seen)
		// The enforce policy was fetched; the rule keeps it out.
		waitMetric(t, d, stsFetches, map[string]string{"result": "ok"}, 1, probeSettle)
		checkLookup(t, table, lookup{key: domain, want: encrypt}, "")
	})

	t.Run("a rule opts out of DANE", func(t *testing.T) {
		t.Parallel()
		// dane.test publishes validated, usable TLSA records (as
		// dane2.test does); its rule says dane: false.
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		seen := waitAnswer(t, table, "dane.test", encrypt, []string{may}, probeSettle)
		t.Logf("answers: %q", seen)
		checkLookup(t, table, lookup{key: "dane.test", want: encrypt}, "")
	})
}

// TestPublishedPostfixDelivery has the real Postfix smtp client deliver
// through the daemon to destinations with enforced MTA-STS policies. The
// daemon's answer is "secure match=<the policy's mx patterns>", so Postfix
// must refuse a server whose certificate, though from a trusted CA, names
// no host of the policy, and deliver over verified TLS to one whose
// certificate names a host of the policy.
//
// With DNS disabled, Postfix connects to the domain itself (its /etc/hosts
// gives the fake MX's address) and checks the certificate against the
// match= patterns only: good-sts.test's server has a certificate for
// mx.good-sts.test, the policy's mx. bad-sts.test's policy allows
// mx.bad-sts.test, and its server's certificate names other.test and
// bad-sts.test: the next hop itself, which Postfix's default secure match
// (nexthop, dot-nexthop) would accept. That it is refused shows that the
// policy's patterns are what Postfix enforced.
func TestPublishedPostfixDelivery(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	const (
		goodIP = "127.0.0.241"
		badIP  = "127.0.0.242"
	)
	w.startMX(t,
		w.verifiedMX(t, "good-sts.test", goodIP),
		mxHost{"bad-sts.test", "mx.bad-sts.test", badIP, fakemx.Options{
			Hostname: "mx.bad-sts.test", TLS: w.verifiedTLS(t, "other.test", "bad-sts.test")}},
	)
	w.startPolicyHost(t, "127.0.0.243", map[string]string{
		"good-sts.test": stsPolicy("enforce", "mx.good-sts.test"),
		"bad-sts.test":  stsPolicy("enforce", "mx.bad-sts.test"),
	})
	d := startDaemon(t, w.publishedConfig(t, longTTL, "defaults:\n  level: may\n  upgrade: encrypt\n"))
	table := d.socketmap(t, "tlspolicy")
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: table,
		CAFile:     w.caFile,
		SMTPPort:   w.port,
		Hosts:      map[string]string{"good-sts.test": goodIP, "bad-sts.test": badIP},
	})
	sender := "sender@" + pf.hostname

	t.Run("a certificate for the policy's mx is delivered to", func(t *testing.T) {
		t.Parallel()
		// Postfix must ask after the policy is in: its smtp processes
		// cache answers.
		waitAnswer(t, table, "good-sts.test", stsSecure("mx.good-sts.test"), []string{may}, probeSettle)
		const rcpt = "user@good-sts.test"
		pf.send(t, sender, rcpt, "mta-sts good")
		status := pf.delivery(t, rcpt)
		if !strings.Contains(status, "status=sent") {
			t.Fatalf("mail to %s was not sent: %s", rcpt, status)
		}
		msgs, err := w.server(t, "mx.good-sts.test").WaitMessages(waitCtx(t, deliveryLimit), 1)
		if err != nil {
			t.Fatalf("the fake MX of good-sts.test received no message: %v", err)
		}
		if m := msgs[0]; !m.TLS || m.TLSVersion < tls.VersionTLS12 || !strings.Contains(string(m.Data), "Subject: mta-sts good") {
			t.Errorf("message at mx.good-sts.test: TLS %v, version %s; want TLS 1.2 or later, the message with subject %q",
				m.TLS, tls.VersionName(m.TLSVersion), "mta-sts good")
		}
		if line, ok := findLine(pf.log(), "Verified TLS connection established to good-sts.test["); ok {
			t.Logf("maillog: %s", line)
		} else {
			line, _ := findLine(pf.log(), "TLS connection established to good-sts.test[")
			t.Errorf("the maillog has no Verified TLS connection to good-sts.test; TLS line: %q", line)
		}
	})

	t.Run("a certificate for a name not in the policy is refused", func(t *testing.T) {
		t.Parallel()
		waitAnswer(t, table, "bad-sts.test", stsSecure("mx.bad-sts.test"), []string{may}, probeSettle)
		const rcpt = "user@bad-sts.test"
		pf.send(t, sender, rcpt, "mta-sts bad")
		status := pf.delivery(t, rcpt)
		var missing []string
		for _, want := range []string{"status=deferred", "dsn=4.7.5", "Server certificate not verified"} {
			if !strings.Contains(status, want) {
				missing = append(missing, want)
			}
		}
		if missing != nil {
			t.Errorf("delivery to %s: the status line lacks %q:\n%s", rcpt, missing, status)
		}
		if line, ok := findLine(pf.log(), "bad-sts.test[", "verification failed"); ok {
			t.Logf("maillog: %s", line)
		}
		s := w.server(t, "mx.bad-sts.test")
		if _, err := s.WaitSessions(waitCtx(t, deliveryLimit), s.Stats().Connections); err != nil {
			t.Fatalf("sessions at mx.bad-sts.test did not end: %v", err)
		}
		if n := s.Stats().Messages; n != 0 {
			t.Errorf("mx.bad-sts.test accepted %d messages, want none", n)
		}
		if q := pf.queue(t); !strings.Contains(q, rcpt) {
			t.Errorf("postqueue -p does not list %s:\n%s", rcpt, q)
		}
	})
}
