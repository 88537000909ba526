package policyd

import (
	"context"
	"fmt"
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
