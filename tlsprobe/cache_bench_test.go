package tlsprobe

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkCacheGetHit measures the lookup path on a hit: concurrent Gets
// of 1,000 cached destinations, as busy Postfix processes make them.
func BenchmarkCacheGetHit(b *testing.B) {
	probe := func(_ context.Context, t Target, _ Report) Report {
		return Report{Target: t, Capability: CapVerify, ProbedAt: time.Now()}
	}
	c := NewCache(probe, CacheConfig{TTL: time.Hour, NegativeTTL: time.Minute}, nil)
	defer c.Close()
	targets := make([]Target, 1000)
	for i := range targets {
		targets[i] = Target{Name: fmt.Sprintf("d%d.test", i)}
		c.Probe(context.Background(), targets[i])
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := c.Get(targets[i%len(targets)]); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
}
