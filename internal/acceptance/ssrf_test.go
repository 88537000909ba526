package acceptance

import (
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// The addresses of TestProbeRefusesPrivateAddresses: a fake MX on loopback
// that a probe must never reach, and an RFC 1918 address where nothing
// listens (a probe of it would only time out; the refusal comes first).
const (
	ssrfLoopbackIP = "127.0.0.93"
	ssrfPrivateIP  = "10.20.30.40"
)

// ssrfRules let a probe raise both destinations to verify, so that the
// daemon does probe them: the refusal, not the rules, keeps the answer at
// the floor.
const ssrfRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: loopback.test
    upgrade: verify
  - match: private.test
    upgrade: verify
`

// TestProbeRefusesPrivateAddresses is the SSRF guard, through the built
// binary: without probe.allow_private (the default, false), a destination
// whose MX host resolves to a loopback or private address is not probed.
// `tlspolicyd probe` says the address was refused and how to allow it, the
// daemon answers the destination's floor, counts the refusal in
// tlspolicyd_probe_private_addresses_refused_total, and no connection
// reaches the fake MX listening on the loopback address, although it
// offers STARTTLS with a certificate the daemon would verify.
func TestProbeRefusesPrivateAddresses(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startMX(t, mxHost{"loopback.test", "mx.loopback.test", ssrfLoopbackIP,
		fakemx.Options{Hostname: "mx.loopback.test", TLS: w.verifiedTLS(t, "mx.loopback.test")}})
	w.dns.AddMX("private.test", 10, "mx.private.test")
	w.dns.AddA("mx.private.test", ssrfPrivateIP)
	// probeConfig allows private addresses, as every other probing test
	// needs; this one takes the line out, leaving the default.
	config := w.probeConfig(t, ssrfRules)
	if c := strings.Replace(config, "  allow_private: true\n", "", 1); c == config {
		t.Fatal("probeConfig no longer sets allow_private: true; update this test")
	} else {
		config = c
	}
	mx := w.server(t, "mx.loopback.test")

	t.Run("probe command", func(t *testing.T) {
		dir := t.TempDir()
		path := writeStatic(t, dir, config)
		for _, tc := range []struct{ domain, addr string }{
			{"loopback.test", ssrfLoopbackIP},
			{"private.test", ssrfPrivateIP},
		} {
			code, out := runCLI(t, dir, "probe", "-config", path, tc.domain)
			t.Logf("tlspolicyd probe %s (exit %d):\n%s", tc.domain, code, out)
			if code != 1 {
				t.Errorf("tlspolicyd probe %s: exit %d, want 1 (no evidence)", tc.domain, code)
			}
			for _, want := range []string{tc.addr + " is not a public address", "private_address", "set probe.allow_private: true"} {
				if !strings.Contains(out, want) {
					t.Errorf("tlspolicyd probe %s: the output lacks %q", tc.domain, want)
				}
			}
		}
		if n := mx.Stats().Connections; n != 0 {
			t.Errorf("the fake MX on %s got %d connections from tlspolicyd probe, want none", ssrfLoopbackIP, n)
		}
	})

	t.Run("daemon", func(t *testing.T) {
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		const refused = "tlspolicyd_probe_private_addresses_refused_total"
		if v, ok := d.metricFound(t, refused, nil); !ok || v != 0 {
			t.Fatalf("%s before any lookup: %v (present %v), want 0", refused, v, ok)
		}
		for i, domain := range []string{"loopback.test", "private.test"} {
			checkLookup(t, table, lookup{key: domain, want: may}, "")
			// One refused address per domain, counted when the probe
			// refuses it; the answer stays the floor.
			waitMetric(t, d, refused, nil, float64(i+1), probeSettle)
			waitMetric(t, d, "tlspolicyd_probes_total", map[string]string{"cause": "private_address"}, float64(i+1), probeSettle)
			checkLookup(t, table, lookup{key: domain, want: may}, "")
		}
		if v := d.metric(t, refused, nil); v != 2 {
			t.Errorf("%s = %v, want 2 (one address of each destination)", refused, v)
		}
		if n := mx.Stats().Connections; n != 0 {
			t.Errorf("the fake MX on %s got %d connections, want none", ssrfLoopbackIP, n)
		}
	})
}
