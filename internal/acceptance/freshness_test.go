package acceptance

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Freshness of published policies: with probe.ttl 6h, what a destination
// publishes is read again when its DNS records' TTL runs out, so a new
// MTA-STS id and a withdrawn TLSA RRset are answered within their TTL plus
// one fetch, while the MX hosts are not probed again.

// freshTTL is the TTL of the records the freshness tests change, in
// seconds; recordSeen bounds the wait for a change to be answered: the
// TTL, the daemon's one-second check of due refreshes, a fetch, and room
// for a loaded machine. Both are far below probe.ttl (6h).
const (
	freshTTL   = 2
	recordSeen = 15 * time.Second
)

const probesTotal = "tlspolicyd_probes_total"

func TestPublishedFreshness(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startMX(t,
		w.verifiedMX(t, "fresh-sts.test", "127.0.0.217"),
		w.daneMX(t, "fresh-dane.test", "127.0.0.218", true),
		w.daneMX(t, "fresh-dane2.test", "127.0.0.219", true),
	)
	config := w.publishedConfig(t, longTTL, publishedRules)

	t.Run("a new MTA-STS id is answered within the TXT record's TTL", func(t *testing.T) {
		t.Parallel()
		const domain = "fresh-sts.test"
		txt := "_mta-sts." + domain
		ph := w.startPolicyHost(t, "127.0.0.230", map[string]string{
			domain: stsPolicy("enforce", "mx.fresh-sts.test"),
		})
		w.dns.SetTTL(txt, dns.TypeTXT, freshTTL)
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		first := stsSecure("mx.fresh-sts.test")
		waitAnswer(t, table, domain, first, []string{may}, probeSettle)

		ph.set(domain, policyAnswer{body: stsPolicy("enforce", "mx.fresh-sts.test", "mx2.fresh-sts.test")})
		w.setSTSID(domain, "2")
		w.dns.SetTTL(txt, dns.TypeTXT, freshTTL)
		changed := time.Now()
		second := stsSecure("mx.fresh-sts.test", "mx2.fresh-sts.test")
		seen := waitAnswer(t, table, domain, second, []string{first}, recordSeen)
		t.Logf("new id answered %v after the change (TXT TTL %ds, probe.ttl %v); answers %q",
			time.Since(changed).Round(100*time.Millisecond), freshTTL, longTTL, seen)
		if n := ph.hitsOf(domain); n != 2 {
			t.Errorf("%d policy fetches, want 2: one per id", n)
		}
		// Reading the record again did not probe the MX host again.
		wantMetric(t, d, probesTotal, nil, 1)
	})

	t.Run("a withdrawn TLSA RRset is answered within its TTL", func(t *testing.T) {
		t.Parallel()
		const domain = "fresh-dane.test"
		tlsa := w.tlsaName("mx." + domain)
		w.dns.SetTTL(tlsa, dns.TypeTLSA, freshTTL)
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		waitAnswer(t, table, domain, daneOnly, []string{may}, probeSettle)

		w.dns.Remove(tlsa, dns.TypeTLSA)
		changed := time.Now()
		seen := waitAnswer(t, table, domain, encrypt, []string{daneOnly}, recordSeen)
		t.Logf("withdrawal answered %v after it (TLSA TTL %ds, probe.ttl %v); answers %q",
			time.Since(changed).Round(100*time.Millisecond), freshTTL, longTTL, seen)
		wantMetric(t, d, probesTotal, nil, 1)
	})

	t.Run("a TLSA lookup that fails keeps dane-only", func(t *testing.T) {
		t.Parallel()
		const domain = "fresh-dane2.test"
		tlsa := w.tlsaName("mx." + domain)
		w.dns.SetTTL(tlsa, dns.TypeTLSA, freshTTL)
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		waitAnswer(t, table, domain, daneOnly, []string{may}, probeSettle)

		// RFC 7672 section 2.1.1: a failed lookup defers; it never drops
		// DANE. Postfix, told dane-only, looks the records up itself and
		// defers on the same failure.
		w.dns.SetRcode(tlsa, dns.RcodeServerFailure)
		holdAnswer(t, table, domain, daneOnly, recordSeen, "TLSA answering SERVFAIL",
			metricAtLeast(t, d, daneLookups, map[string]string{"result": "temp_fail"}, 1))
	})
}
