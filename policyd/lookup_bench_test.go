package policyd

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// shippedDefaults are the shipped rules.yaml's settings that decide the
// lookup path: no rule names the destinations, upgrade: encrypt and
// MTA-STS on, so every lookup reads the probe cache.
const shippedDefaults = "defaults: {level: may, upgrade: encrypt}\nmtasts: {enabled: true}\n"

// cachedEngine is an engine over a real findings cache holding verified
// findings for n destinations, "d0.test" to "d<n-1>.test", with a history
// recorder that has already seen every answer (as a running daemon's has).
func cachedEngine(tb testing.TB, n int) (*Engine, [][]byte) {
	tb.Helper()
	gather := func(_ context.Context, t tlsprobe.Target, _ Findings) Findings {
		return Findings{Probe: tlsprobe.Report{Target: t, Capability: tlsprobe.CapVerify, ProbedAt: time.Now()}}
	}
	c := tlsprobe.NewCache(gather, tlsprobe.CacheConfig{TTL: time.Hour, NegativeTTL: time.Minute}, nil)
	tb.Cleanup(c.Close)
	e := NewEngine(mustLoad(tb, shippedDefaults), c)
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = []byte(fmt.Sprintf("d%d.test", i))
		c.Probe(context.Background(), tlsprobe.Target{Name: string(keys[i])})
	}
	return e, keys
}

// A lookup answered from cached findings allocates nothing.
func TestLookupTableCachedAllocs(t *testing.T) {
	e, keys := cachedEngine(t, 10)
	ctx := context.Background()
	if a := e.LookupTable(ctx, "tlspolicy", keys[0]); a.Label != "encrypt" {
		t.Fatalf("answer %+v, want encrypt (the cached probe, capped by upgrade)", a)
	}
	for _, k := range keys {
		if allocs := testing.AllocsPerRun(100, func() { e.LookupTable(ctx, "tlspolicy", k) }); allocs != 0 {
			t.Errorf("LookupTable(%s) from the cache allocates %v times per call, want 0", k, allocs)
		}
	}
}

// BenchmarkLookupTableCached is BenchmarkLookupTable for the shipped
// defaults' path: destinations no rule names, answered from the cache.
func BenchmarkLookupTableCached(b *testing.B) {
	e, keys := cachedEngine(b, 1000)
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.LookupTable(ctx, "tlspolicy", keys[i%len(keys)])
	}
}

// BenchmarkLookupTableCachedParallel is BenchmarkLookupTableCached from
// every CPU at once, as many Postfix processes ask: hits on different
// destinations must not wait for each other.
func BenchmarkLookupTableCachedParallel(b *testing.B) {
	e, keys := cachedEngine(b, 1000)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for i := 0; pb.Next(); i++ {
			e.LookupTable(ctx, "tlspolicy", keys[i%len(keys)])
		}
	})
}

// BenchmarkLookupTableMix is the lookup mix tools/loadgen sends with
// -upgrade encrypt, answered as the daemon answers it once every
// destination is probed: rules of every kind, MTA-STS on, findings cached
// and a pin learnt for each destination that verified.
func BenchmarkLookupTableMix(b *testing.B) {
	const mixRules = shippedDefaults + `destinations:
  - match: example.org
    level: verify
  - match: .example.org
    level: encrypt
  - match: "[relay.example.net]:587"
    level: secure
`
	gather := func(_ context.Context, t tlsprobe.Target, _ Findings) Findings {
		return Findings{Probe: tlsprobe.Report{Target: t, Capability: tlsprobe.CapVerify, ProbedAt: time.Now()}}
	}
	c := tlsprobe.NewCache(gather, tlsprobe.CacheConfig{TTL: time.Hour, NegativeTTL: time.Minute}, nil)
	b.Cleanup(c.Close)
	e := NewEngine(mustLoad(b, mixRules), c)
	keys := [][]byte{[]byte("example.org"), []byte("mx1.example.org"), []byte("[relay.example.net]:587"),
		[]byte("someone.test"), []byte("Some.Example.ORG"), []byte("SomeOne.TEST")}
	var pins []state.Pin
	now := time.Now()
	for _, k := range keys {
		t, err := Target(string(k))
		if err != nil {
			b.Fatal(err)
		}
		c.Probe(context.Background(), t)
		pins = append(pins, state.Pin{Key: t.Key(), Level: "verify", FirstSeen: now, LastSeen: now, Expires: now.Add(time.Hour), Source: "probe"})
	}
	e.UsePins(pins, time.Hour)
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.LookupTable(ctx, "tlspolicy", keys[i%len(keys)])
	}
}

// stsEngine is an engine over a real findings cache holding, for n
// destinations "s0.test" to "s<n-1>.test", the findings a daemon keeps of
// a domain with an MTA-STS policy in enforce mode, as the state store
// gives them back (decoded, as at a restart), under rules yaml.
func stsEngine(tb testing.TB, n int, yaml string) (*Engine, [][]byte) {
	tb.Helper()
	gather := func(_ context.Context, t tlsprobe.Target, _ Findings) Findings {
		b, err := testFindings(t.Name, time.Now()).MarshalBinary()
		if err != nil {
			tb.Fatal(err)
		}
		var f Findings
		if err := f.UnmarshalBinary(b); err != nil {
			tb.Fatal(err)
		}
		return f
	}
	c := tlsprobe.NewCache(gather, tlsprobe.CacheConfig{TTL: time.Hour, NegativeTTL: time.Minute}, nil)
	tb.Cleanup(c.Close)
	e := NewEngine(mustLoad(tb, yaml), c)
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = []byte(fmt.Sprintf("s%d.test", i))
		c.Probe(context.Background(), tlsprobe.Target{Name: string(keys[i])})
	}
	return e, keys
}

// A lookup of a destination whose MTA-STS policy decides allocates
// nothing once its answer has been rendered, and a reload that changes
// how policies are written is seen at the next lookup.
func TestLookupTableSTSAllocs(t *testing.T) {
	e, keys := stsEngine(t, 10, shippedDefaults+"postfix_version: \"3.10\"\n")
	ctx := context.Background()
	for _, k := range keys {
		a := e.LookupTable(ctx, "tlspolicy", k)
		if want := "secure match=mx1." + string(k) + ":mx2." + string(k) + " servername=hostname"; !strings.HasPrefix(a.Text, want) ||
			!strings.Contains(a.Text, " policy_domain="+string(k)+" ") {
			t.Fatalf("answer for %s: %q, want the policy rendered for it, with TLSRPT attributes (Postfix 3.10)", k, a.Text)
		}
		if allocs := testing.AllocsPerRun(100, func() { e.LookupTable(ctx, "tlspolicy", k) }); allocs != 0 {
			t.Errorf("LookupTable(%s) answered by its MTA-STS policy allocates %v times per call, want 0", k, allocs)
		}
	}
	e.SetRules(mustLoad(t, shippedDefaults+"postfix_version: \"3.6\"\n"))
	for _, k := range keys {
		if a := e.LookupTable(ctx, "tlspolicy", k); strings.Contains(a.Text, "policy_type=sts") || !strings.Contains(a.Text, "servername=") {
			t.Fatalf("answer for %s after the reload to Postfix 3.6: %q, want the policy without TLSRPT attributes", k, a.Text)
		}
	}
}

// BenchmarkLookupTableSTS is BenchmarkLookupTableCached for destinations
// whose MTA-STS policy decides the answer.
func BenchmarkLookupTableSTS(b *testing.B) {
	e, keys := stsEngine(b, 1000, shippedDefaults+"postfix_version: \"3.10\"\n")
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.LookupTable(ctx, "tlspolicy", keys[i%len(keys)])
	}
}
