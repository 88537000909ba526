package policyd

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tlspolicyd/tlspolicyd/internal/monoclock"
	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// fakeClock is a settable clock for pin expiry.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestPinBook(t *testing.T, store state.Store) (*pinBook, *fakeClock, *testlog.Buffer) {
	t.Helper()
	clock := &fakeClock{now: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	log := &testlog.Buffer{}
	return newPinBook(store, 30*24*time.Hour, monoclock.New(clock.Now), log.Logger(), prometheus.NewRegistry()), clock, log
}

func result(c tlsprobe.Capability, cause tlsprobe.Cause) tlsprobe.Report {
	return tlsprobe.Report{Capability: c, Cause: cause, Hosts: []tlsprobe.HostReport{{Host: "mx.example.org", Capability: c, Cause: cause}}}
}

func TestPinLearning(t *testing.T) {
	t.Parallel()
	b, clock, log := newTestPinBook(t, nil)
	const key = "example.org"
	if _, ok := b.get(key); ok {
		t.Fatal("pinned before any probe")
	}
	// Plaintext or a failed probe pins nothing.
	b.learn(key, result(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS), 0x0303)
	b.learn(key, tlsprobe.Report{Cause: tlsprobe.CauseDNS}, 0x0303)
	if _, ok := b.get(key); ok {
		t.Fatal("pinned without evidence of TLS")
	}
	// Encrypt, then verify raises the pin; first seen is kept.
	b.learn(key, result(tlsprobe.CapEncrypt, tlsprobe.CauseUnknownAuthority), 0x0303)
	first, _ := b.get(key)
	clock.advance(time.Hour)
	b.learn(key, result(tlsprobe.CapVerify, tlsprobe.CauseNone), 0x0303)
	p, ok := b.get(key)
	if !ok || p.Level != "verify" || !p.FirstSeen.Equal(first.FirstSeen) || !p.LastSeen.Equal(clock.Now()) {
		t.Fatalf("after verify: %+v", p)
	}
	// A later probe that sees less is a possible downgrade: logged,
	// counted, recorded; the pin stands and is not extended.
	clock.advance(time.Hour)
	b.learn(key, result(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS), 0x0303)
	p, ok = b.get(key)
	if !ok || p.Level != "verify" || p.LastDowngrade != clock.Now() || !strings.Contains(p.DowngradeReason, "no STARTTLS at mx.example.org") {
		t.Fatalf("after a downgrade: %+v", p)
	}
	if p.Expires != p.LastSeen.Add(30*24*time.Hour) || p.LastSeen == clock.Now() {
		t.Errorf("a downgrade must not extend the pin: %+v", p)
	}
	if got := testutil.ToFloat64(b.metrics.downgrades.WithLabelValues("verify")); got != 1 {
		t.Errorf("downgrades = %v, want 1", got)
	}
	if !strings.Contains(log.String(), "possible downgrade attack") {
		t.Errorf("downgrade not logged:\n%s", log)
	}
	// An encrypt-only result is also below a verify pin.
	b.learn(key, result(tlsprobe.CapEncrypt, tlsprobe.CauseNameMismatch), 0x0303)
	if p, _ := b.get(key); p.Level != "verify" {
		t.Errorf("encrypt evidence lowered a verify pin: %+v", p)
	}
	// A confirmation extends it; the pin expires pin_ttl after that.
	b.learn(key, result(tlsprobe.CapVerify, tlsprobe.CauseNone), 0x0303)
	clock.advance(30*24*time.Hour - time.Second)
	if _, ok := b.get(key); !ok {
		t.Error("expired before pin_ttl after its last confirmation")
	}
	clock.advance(time.Second)
	if _, ok := b.get(key); ok {
		t.Error("still valid pin_ttl after its last confirmation")
	}
}

func TestPinsPersist(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	store, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := newTestPinBook(t, store)
	b.learn("example.org", result(tlsprobe.CapVerify, tlsprobe.CauseNone), 0x0303)
	if _, _, err := b.add("partner.test", "encrypt", false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.add("partner.test", "secure", false); err == nil {
		t.Error("a secure pin was accepted; pins are encrypt or verify")
	}
	if found, err := b.remove("EXAMPLE.org."); !found || err != nil {
		t.Errorf("remove = %v, %v", found, err)
	}
	store.Close()
	store, err = state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	pins, err := store.Pins()
	if err != nil || len(pins) != 1 || pins[0].Key != "partner.test" || pins[0].Source != "admin" {
		t.Fatalf("stored pins %+v, %v", pins, err)
	}
}

const pinRules = `
probe: {wait: 10ms}
defaults: {level: may, upgrade: verify}
destinations:
  - match: capped.test
    upgrade: encrypt
  - match: optout.test
    upgrade: none
classes:
  - name: phi
    senders: ["@clinic.test"]
    level: verify
`

func TestEngineAnswersFromPins(t *testing.T) {
	t.Parallel()
	ev := &fakeFindings{results: map[string]tlsprobe.Report{
		// The probe now sees plaintext everywhere: a stripping attacker.
		"pinned.test":  result(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS),
		"capped.test":  result(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS),
		"optout.test":  result(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS),
		"expired.test": result(tlsprobe.CapNone, tlsprobe.CauseNoSTARTTLS),
	}}
	e := NewEngine(mustLoad(t, pinRules), ev)
	b, clock, _ := newTestPinBook(t, nil)
	e.pins = b
	for _, key := range []string{"pinned.test", "capped.test", "optout.test", "expired.test", "waiting.test"} {
		if _, _, err := b.add(key, "verify", false); err != nil {
			t.Fatal(err)
		}
	}
	b.put(&state.Pin{Key: "expired.test", Level: "verify", Expires: clock.Now()})
	ctx := context.Background()
	for key, want := range map[string]string{
		"pinned.test":  "verify protocols=>=TLSv1.2",
		"capped.test":  "encrypt protocols=>=TLSv1.2", // the rule's upgrade caps pins too
		"optout.test":  "may",                         // upgrade: none ignores pins
		"expired.test": "may",
		"waiting.test": "verify protocols=>=TLSv1.2", // answered at once; no wait for the probe
	} {
		if got := e.LookupTable(ctx, rules.MapTLSPolicy, []byte(key)); got.Text != want {
			t.Errorf("%s = %q, want %q", key, got.Text, want)
		}
	}
	// At RCPT the pin vouches for the destination: delivery-time
	// enforcement will defer under attack, so the sender is not refused.
	if v := e.CheckRecipient(ctx, "doctor@clinic.test", "a@pinned.test"); v.Action != ActionDunno {
		t.Errorf("RCPT to a verify-pinned destination = %s", v.Render())
	}
	if v := e.CheckRecipient(ctx, "doctor@clinic.test", "a@expired.test"); v.Action != ActionReject {
		t.Errorf("RCPT after the pin expired = %s, want REJECT", v.Render())
	}
}

// TestPinnedLookupPrefetches: with no published-policy source to consult,
// a lookup answered from a pin at its cap does not wait for evidence, but
// asks for it in the background, so that the pin is confirmed (or a
// downgrade seen) by the next probe.
func TestPinnedLookupPrefetches(t *testing.T) {
	t.Parallel()
	ev := &fakeFindings{}
	e := NewEngine(mustLoad(t, pinRules+"mtasts: {enabled: false}\n"), ev)
	b, _, _ := newTestPinBook(t, nil)
	e.pins = b
	if _, _, err := b.add("pinned.test", "verify", false); err != nil {
		t.Fatal(err)
	}
	if got := e.LookupTable(context.Background(), rules.MapTLSPolicy, []byte("pinned.test")); got.Text != "verify protocols=>=TLSv1.2" {
		t.Fatalf("pinned.test = %q", got.Text)
	}
	e.LookupTable(context.Background(), rules.MapTLSPolicy, []byte("unpinned.test"))
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.prefetched) != 1 || ev.prefetched[0].Key() != "pinned.test" {
		t.Errorf("prefetched %v, want only pinned.test (an unpinned miss waits for its probe instead)", ev.prefetched)
	}
}

func TestDaemonRestoresPinsAndProbes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	store, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := store.PutPins(state.Pin{Key: "pinned.test", Level: "verify", FirstSeen: now, LastSeen: now, Expires: now.Add(time.Hour), Source: "probe"}); err != nil {
		t.Fatal(err)
	}
	r := result(tlsprobe.CapEncrypt, tlsprobe.CauseUnknownAuthority)
	r.ProbedAt = now
	raw, _ := Findings{Probe: r}.MarshalBinary()
	if err := store.PutProbes(state.Probe{Key: "probed.test", Expires: now.Add(time.Hour), Findings: raw}); err != nil {
		t.Fatal(err)
	}
	store.Close()

	p := mustLoad(t, "defaults: {level: may, upgrade: verify}\nprobe: {wait: 0s}\n")
	reg := prometheus.NewRegistry()
	p.Settings.StatePath = path
	d, err := NewDaemon(p, Options{Registerer: reg, Gatherer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Probe: ProbeDeps{Resolver: offlineResolver{}}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	ctx := context.Background()
	if got := d.Engine.LookupTable(ctx, rules.MapTLSPolicy, []byte("pinned.test")); got.Text != "verify protocols=>=TLSv1.2" {
		t.Errorf("pinned.test after restart = %q", got.Text)
	}
	// probe.wait is 0 and the resolver is offline: only the restored
	// result can give encrypt.
	if got := d.Engine.LookupTable(ctx, rules.MapTLSPolicy, []byte("probed.test")); got.Text != "encrypt protocols=>=TLSv1.2" {
		t.Errorf("probed.test after restart = %q", got.Text)
	}
}

// TestKnownDestinationsNeverWait: with a published-policy source on (so
// evidence could always add something), a destination that a pin or a
// rule answers is answered at once while its evidence is gathered in the
// background; only one the daemon knows nothing about waits probe.wait.
func TestKnownDestinationsNeverWait(t *testing.T) {
	t.Parallel()
	ev := &fakeFindings{}
	e := NewEngine(mustLoad(t, "probe: {wait: 20ms}\ndefaults: {level: may, upgrade: verify}\ndestinations:\n  - {match: named.test, level: may}\n"), ev)
	b, _, _ := newTestPinBook(t, nil)
	e.pins = b
	if _, _, err := b.add("pinned.test", "verify", false); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for key, want := range map[string]string{
		"pinned.test":  "verify protocols=>=TLSv1.2",
		"named.test":   "may",
		"unknown.test": "may", // no evidence within probe.wait: the floor
	} {
		got := e.LookupTable(ctx, rules.MapTLSPolicy, []byte(key))
		if got.Text != want {
			t.Errorf("%s = %q, want %q", key, got.Text, want)
		}
	}
	if d := e.Peek("named.test"); !strings.Contains(d.Explain(), "gathered in the background") {
		t.Errorf("why: %s", d.Explain())
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.waited) != 1 || ev.waited[0].Key() != "unknown.test" {
		t.Errorf("lookups that waited for a probe: %v, want only unknown.test", ev.waited)
	}
	prefetched := map[string]bool{}
	for _, p := range ev.prefetched {
		prefetched[p.Key()] = true
	}
	if !prefetched["pinned.test"] || !prefetched["named.test"] {
		t.Errorf("prefetched %v, want pinned.test and named.test gathered in the background", prefetched)
	}
}
