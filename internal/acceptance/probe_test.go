package acceptance

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// probeRules are the rules of TestProbing. Every destination's floor is
// may unless it says otherwise; the default upgrade is encrypt, and the
// destinations whose certificate matters may be raised to verify.
const probeRules = `defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: good.test
    upgrade: verify
  - match: selfsigned.test
    upgrade: verify
  - match: plain.test
    upgrade: verify
  - match: tarpit.test
    upgrade: verify
  - match: floor.test
    level: encrypt
    upgrade: verify
  - match: twomx.test
    upgrade: verify
`

// TestProbing drives the built daemon, probing fake MX hosts found through
// a fake DNS server, with the real postmap: a cache miss answers the floor
// within probe.wait, and the probe's evidence raises the answer as far as
// the rule's upgrade and the weakest MX host allow, never below the floor.
// (floor.test may be upgraded to verify so that it is probed at all: with
// the default upgrade, encrypt, a probe could not add anything to its
// floor, and the daemon rightly does not probe it.)
// Each case has a daemon of its own, so that its metrics and cache count
// only its own probes; the DNS and MX hosts are shared.
func TestProbing(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	plain := fakemx.Options{} // no STARTTLS
	w.startMX(t,
		mxHost{"good.test", "mx.good.test", "127.0.0.2",
			fakemx.Options{Hostname: "mx.good.test", TLS: w.verifiedTLS(t, "mx.good.test")}},
		mxHost{"selfsigned.test", "mx.selfsigned.test", "127.0.0.3",
			fakemx.Options{Hostname: "mx.selfsigned.test", TLS: selfSignedTLS(t, "mx.selfsigned.test")}},
		mxHost{"plain.test", "mx.plain.test", "127.0.0.4", plain},
		mxHost{"default.test", "mx.default.test", "127.0.0.5",
			fakemx.Options{Hostname: "mx.default.test", TLS: w.verifiedTLS(t, "mx.default.test")}},
		mxHost{"tarpit.test", "mx.tarpit.test", "127.0.0.6", fakemx.Options{Tarpit: true}},
		mxHost{"floor.test", "mx.floor.test", "127.0.0.7", plain},
		mxHost{"twomx.test", "mx1.twomx.test", "127.0.0.8",
			fakemx.Options{Hostname: "mx1.twomx.test", TLS: w.verifiedTLS(t, "mx1.twomx.test")}},
		mxHost{"twomx.test", "mx2.twomx.test", "127.0.0.9", plain},
	)
	config := w.probeConfig(t, probeRules)
	const (
		probes = "tlspolicyd_probes_total"
		cache  = "tlspolicyd_probe_cache_requests_total"
	)

	t.Run("verified certificate raises to verify", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		// The first lookup may already see the probe's result if it
		// finished within probe.wait; before that, only the floor.
		seen := waitAnswer(t, table, "good.test", verify, []string{may}, probeSettle)
		t.Logf("answers: %q", seen)
		if got := d.metric(t, cache, map[string]string{"result": "miss"}); got < 1 {
			t.Errorf("%s{result=miss} = %v after the first lookup, want at least 1", cache, got)
		}
		// Later lookups are answered from memory (the verify pin the probe
		// left), without another probe.
		checkLookup(t, table, lookup{key: "good.test", want: verify}, "")
		if got := d.metric(t, "tlspolicyd_pins", map[string]string{"level": "verify"}); got != 1 {
			t.Errorf(`tlspolicyd_pins{level="verify"} = %v, want 1`, got)
		}
		if got := d.metric(t, probes, map[string]string{"cause": "none"}); got != 1 {
			t.Errorf(`%s{cause="none"} = %v, want 1 (one probe, every MX verified)`, probes, got)
		}
	})

	t.Run("self-signed certificate raises to encrypt", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		waitAnswer(t, d.socketmap(t, "tlspolicy"), "selfsigned.test", encrypt, []string{may}, probeSettle)
		waitMetric(t, d, probes, map[string]string{"cause": "unknown_authority"}, 1, probeSettle)
		// The evidence is in: the answer stays.
		checkLookup(t, d.socketmap(t, "tlspolicy"), lookup{key: "selfsigned.test", want: encrypt}, "")
	})

	t.Run("no STARTTLS stays may", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		checkLookup(t, table, lookup{key: "plain.test", want: may}, "")
		waitMetric(t, d, probes, map[string]string{"cause": "no_starttls"}, 1, probeSettle)
		checkLookup(t, table, lookup{key: "plain.test", want: may}, "")
	})

	t.Run("default upgrade caps a verified certificate at encrypt", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		waitAnswer(t, table, "default.test", encrypt, []string{may}, probeSettle)
		waitMetric(t, d, probes, map[string]string{"cause": "none"}, 1, probeSettle)
		checkLookup(t, table, lookup{key: "default.test", want: encrypt}, "")
	})

	t.Run("tarpit answers the floor within probe.wait", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		start := time.Now()
		out, code, stderr := postmap(t, "tarpit.test", table)
		elapsed := time.Since(start)
		if code != 0 || out != may {
			t.Errorf("first lookup of tarpit.test: exit %d, %q (stderr %q), want exit 0, %q",
				code, out, strings.TrimSpace(stderr), may)
		}
		if limit := probeWait + 1500*time.Millisecond; elapsed >= limit {
			t.Errorf("first lookup of tarpit.test took %v, want less than probe.wait (%v) + 1.5s", elapsed, probeWait)
		}
		t.Logf("first lookup: %q in %v", out, elapsed)
		// The probe goes on until probe.timeout; a host that never
		// answered gives no evidence, so the floor stays.
		waitMetric(t, d, probes, map[string]string{"cause": "timeout"}, 1, probeSettle)
		checkLookup(t, table, lookup{key: "tarpit.test", want: may}, "")
	})

	t.Run("floor encrypt is kept without STARTTLS", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		checkLookup(t, table, lookup{key: "floor.test", want: encrypt}, "")
		waitMetric(t, d, probes, map[string]string{"cause": "no_starttls"}, 1, probeSettle)
		checkLookup(t, table, lookup{key: "floor.test", want: encrypt}, "")
	})

	t.Run("weakest of two MX hosts decides", func(t *testing.T) {
		t.Parallel()
		d := startDaemon(t, config)
		table := d.socketmap(t, "tlspolicy")
		checkLookup(t, table, lookup{key: "twomx.test", want: may}, "")
		waitMetric(t, d, probes, nil, 1, probeSettle)
		checkLookup(t, table, lookup{key: "twomx.test", want: may}, "")
		for _, host := range []string{"mx1.twomx.test", "mx2.twomx.test"} {
			if n := w.server(t, host).Stats().Connections; n < 1 {
				t.Errorf("%s was not probed (%d connections)", host, n)
			}
		}
		if got := d.metric(t, probes, map[string]string{"cause": "no_starttls"}); got != 1 {
			t.Errorf(`%s{cause="no_starttls"} = %v, want 1 (the plaintext MX limits the domain)`, probes, got)
		}
	})

	t.Run("probe command", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		path := writeStatic(t, dir, config)

		code, out := runCLI(t, dir, "probe", "-config", path, "good.test")
		t.Logf("tlspolicyd probe good.test:\n%s", out)
		if code != 0 {
			t.Errorf("tlspolicyd probe good.test: exit %d, want 0", code)
		}
		var hostLine string
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "mx.good.test") && strings.Contains(line, "127.0.0.2") {
				hostLine = line
			}
		}
		if hostLine == "" || !strings.Contains(hostLine, "verify") {
			t.Errorf("tlspolicyd probe good.test: no row naming mx.good.test (127.0.0.2) with its result verify")
		}

		code, out = runCLI(t, dir, "probe", "-config", path, "-json", "good.test")
		if code != 0 {
			t.Errorf("tlspolicyd probe -json good.test: exit %d, want 0\n%s", code, out)
		}
		// The API's fields: what the probe found per MX host address.
		var v struct {
			Destination string  `json:"destination"`
			ProbedAt    *string `json:"probed_at"`
			MX          []struct {
				Host        string `json:"host"`
				Address     string `json:"address"`
				STARTTLS    bool   `json:"starttls"`
				TLSVersion  string `json:"tls_version"`
				Certificate *struct {
					Valid     bool `json:"valid"`
					NameMatch bool `json:"name_match"`
				} `json:"certificate"`
			} `json:"mx"`
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("tlspolicyd probe -json good.test: not JSON: %v\n%s", err, out)
		}
		if v.Destination != "good.test" || v.ProbedAt == nil || len(v.MX) != 1 || v.MX[0].Host != "mx.good.test" ||
			v.MX[0].Address != "127.0.0.2" || !v.MX[0].STARTTLS || !strings.HasPrefix(v.MX[0].TLSVersion, "TLSv1.") ||
			v.MX[0].Certificate == nil || !v.MX[0].Certificate.Valid || !v.MX[0].Certificate.NameMatch {
			t.Errorf("tlspolicyd probe -json good.test: %+v; want one MX mx.good.test (127.0.0.2) with STARTTLS and a valid certificate for its name\n%s", v, out)
		}

		code, out = runCLI(t, dir, "query", "-config", path, "good.test")
		t.Logf("tlspolicyd query good.test:\n%s", out)
		if code != 0 || !strings.Contains(out, verify) {
			t.Errorf("tlspolicyd query good.test: exit %d, output without %q", code, verify)
		}
	})

	// The probe command's hints: a probe below the pin is a
	// possible downgrade; an IP address without brackets is no domain.
	t.Run("probe command hints", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		path := writeStatic(t, dir, config)
		if code, out := runCLI(t, dir, "pins", "-config", path, "add", "selfsigned.test", "verify"); code != 0 {
			t.Fatalf("pins add selfsigned.test verify: exit %d\n%s", code, out)
		}
		code, out := runCLI(t, dir, "probe", "-config", path, "selfsigned.test")
		t.Logf("tlspolicyd probe selfsigned.test:\n%s", out)
		for _, want := range []string{"possible downgrade attack: selfsigned.test is pinned at verify", "but this probe saw encrypt",
			"tlspolicyd pins remove selfsigned.test"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("tlspolicyd probe selfsigned.test under a verify pin: exit %d, want 0 and %q", code, want)
			}
		}
		// With -json the warning goes to stderr, and stdout stays JSON.
		code, stdout, stderr := runTool(t, "probe", "-config", path, "-json", "selfsigned.test")
		if code != 0 || !json.Valid([]byte(stdout)) || !strings.Contains(stderr, "possible downgrade attack") {
			t.Errorf("tlspolicyd probe -json selfsigned.test: exit %d, stdout JSON %v, stderr %q; want 0, JSON, the warning on stderr",
				code, json.Valid([]byte(stdout)), stderr)
		}
		if code, out := runCLI(t, dir, "probe", "-config", path, "good.test"); code != 0 || strings.Contains(out, "downgrade") {
			t.Errorf("tlspolicyd probe good.test (no pin): exit %d, want 0 and no downgrade warning:\n%s", code, out)
		}

		code, out = runCLI(t, dir, "probe", "-config", path, "127.0.0.1:2526")
		if code != 2 || !strings.Contains(out, "write [127.0.0.1]:2526") {
			t.Errorf("tlspolicyd probe 127.0.0.1:2526: exit %d, want 2 and the hint to write [127.0.0.1]:2526:\n%s", code, out)
		}
	})
}
