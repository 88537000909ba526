package policyd

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// fakeFindings answers from a map; a target absent from it is "still
// probing": Lookup blocks until ctx ends, as the cache does past probe.wait.
type fakeFindings struct {
	mu         sync.Mutex
	results    map[string]tlsprobe.Report // probe results
	findings   map[string]Findings        // whole findings (published policies), checked first
	asked      []tlsprobe.Target
	prefetched []tlsprobe.Target
	waited     []tlsprobe.Target // lookups that had to wait for a probe
}

func (f *fakeFindings) Peek(t tlsprobe.Target) (Findings, bool) { return f.Get(t) }

func (f *fakeFindings) Keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var keys []string
	for k := range f.results {
		keys = append(keys, k)
	}
	for k := range f.findings {
		keys = append(keys, k)
	}
	return keys
}

func (f *fakeFindings) Prefetch(t tlsprobe.Target) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prefetched = append(f.prefetched, t)
}

func (f *fakeFindings) Get(t tlsprobe.Target) (Findings, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, t)
	if found, ok := f.findings[t.Key()]; ok {
		return found, true
	}
	r, ok := f.results[t.Key()]
	return Findings{Probe: r}, ok
}

func (f *fakeFindings) Lookup(ctx context.Context, t tlsprobe.Target) (Findings, bool) {
	if r, ok := f.Get(t); ok {
		return r, true
	}
	f.mu.Lock()
	f.waited = append(f.waited, t)
	f.mu.Unlock()
	<-ctx.Done()
	return Findings{}, false
}

const evidenceRules = `
probe: {wait: 10ms}
mtasts: {enabled: false}
defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: verify-ok.test
    level: may
    upgrade: verify
  - match: floor-encrypt.test
    level: encrypt
    upgrade: verify
  - match: floor-verify.test
    level: verify
  - match: no-upgrade.test
    level: may
    upgrade: none
  - match: "[relay.test]:2525"
    level: may
    upgrade: verify
classes:
  - name: phi
    senders: ["@clinic.test"]
    level: verify
`

func TestEvidenceRaisesNeverLowers(t *testing.T) {
	t.Parallel()
	capable := func(c tlsprobe.Capability, cause tlsprobe.Cause) tlsprobe.Report {
		return tlsprobe.Report{Capability: c, Cause: cause}
	}
	ev := &fakeFindings{results: map[string]tlsprobe.Report{
		"good.test":          capable(tlsprobe.CapVerify, tlsprobe.CauseNone),
		"selfsigned.test":    capable(tlsprobe.CapEncrypt, tlsprobe.CauseUnknownAuthority),
		"plain.test":         capable(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS),
		"dnsfail.test":       capable(tlsprobe.CapUnknown, tlsprobe.CauseDNS),
		"verify-ok.test":     capable(tlsprobe.CapVerify, tlsprobe.CauseNone),
		"floor-encrypt.test": capable(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS),
		"floor-verify.test":  capable(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS),
		"no-upgrade.test":    capable(tlsprobe.CapVerify, tlsprobe.CauseNone),
		"[relay.test]:2525":  capable(tlsprobe.CapVerify, tlsprobe.CauseNone),
	}}
	e := NewEngine(mustLoad(t, evidenceRules), ev)
	const (
		encrypt = "encrypt protocols=>=TLSv1.2"
		verify  = "verify protocols=>=TLSv1.2"
	)
	tests := []struct {
		mapName, key, want string
	}{
		{"tlspolicy", "good.test", encrypt},          // capped by defaults.upgrade: encrypt
		{"tlspolicy", "selfsigned.test", encrypt},    // STARTTLS with good TLS is enough for encrypt
		{"tlspolicy", "plain.test", "may"},           // no STARTTLS: the floor
		{"tlspolicy", "dnsfail.test", "may"},         // a failed probe: the floor, never less
		{"tlspolicy", "tarpit.test", "may"},          // not ready within probe.wait: the floor
		{"tlspolicy", "verify-ok.test", verify},      // the rule allows verify
		{"tlspolicy", "floor-encrypt.test", encrypt}, // no probe outcome weakens a floor
		{"tlspolicy", "floor-verify.test", verify},
		{"tlspolicy", "no-upgrade.test", "may"}, // upgrade: none ignores evidence
		{"tlspolicy", "[relay.test]:2525", verify},
		{"tlspolicy", ".parent.test", ""}, // NOTFOUND: nothing to probe
		{"phi", "plain.test", verify},     // the class floor holds whatever the probe says
		{"phi", "good.test", verify},
	}
	for _, tt := range tests {
		got := e.LookupTable(context.Background(), tt.mapName, []byte(tt.key))
		if got.Text != tt.want {
			t.Errorf("%s %s = %v %q, want %q", tt.mapName, tt.key, got.Status, got.Text, tt.want)
		}
	}
	// Destinations already at their cap are not probed at all.
	for _, asked := range ev.asked {
		if asked.Name == "floor-verify.test" || asked.Name == "no-upgrade.test" {
			t.Errorf("probed %s although evidence could not change its answer", asked.Key())
		}
	}
}

func TestEvidenceTargets(t *testing.T) {
	t.Parallel()
	ev := &fakeFindings{results: map[string]tlsprobe.Report{}}
	e := NewEngine(mustLoad(t, evidenceRules), ev)
	for _, key := range []string{"Mixed.Example.", "[MX.example.net]", "[mx.example.net]:2525", "relay.example.net:587"} {
		e.LookupTable(context.Background(), "tlspolicy", []byte(key))
	}
	want := []tlsprobe.Target{
		{Name: "mixed.example"},
		{Name: "mx.example.net", Direct: true},
		{Name: "mx.example.net", Direct: true, Port: 2525},
		{Name: "relay.example.net", Port: 587}, // host:port: Postfix still looks up MX
	}
	seen := map[tlsprobe.Target]bool{}
	for _, a := range ev.asked {
		seen[a] = true
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("no probe asked for %+v; asked %+v", w, ev.asked)
		}
	}
}

func TestEvidenceWaitBounded(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, evidenceRules), &fakeFindings{results: map[string]tlsprobe.Report{}})
	d := e.Decide(context.Background(), "tarpit.test", "", 20*time.Millisecond)
	if !d.Waited || d.Probed() || d.Answer.Text != "may" {
		t.Errorf("decision = %+v, want the floor after waiting", d)
	}
}
