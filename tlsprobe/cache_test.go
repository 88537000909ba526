package tlsprobe

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/tlspolicyd/tlspolicyd/internal/monoclock"
)

// Lifetimes of the caches under test, on the fake clock.
const (
	cacheTTL    = time.Hour
	cacheNegTTL = 10 * time.Minute
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeProbe stands in for Prober.Probe. It counts calls and the most probes
// running at once; while gate is set, each probe waits for the gate (send
// or close) or for its context to end. Each result's Detail says which call
// made it ("probe 2"); results fail (CauseDNS) while fail is set.
type fakeProbe struct {
	mu                  sync.Mutex
	calls               int
	running, maxRunning int
	canceled            int // probes ended by their context
	gate                chan struct{}
	fail                bool
	started             chan Target // each probe's target as it starts
}

func newFakeProbe() *fakeProbe {
	return &fakeProbe{started: make(chan Target, 1000)}
}

func (f *fakeProbe) probe(ctx context.Context, t Target, _ Report) Report {
	f.mu.Lock()
	f.calls++
	f.running++
	f.maxRunning = max(f.maxRunning, f.running)
	r := Report{Target: t, Capability: CapVerify, Detail: fmt.Sprintf("probe %d", f.calls)}
	if f.fail {
		r.Capability, r.Cause = CapUnknown, CauseDNS
	}
	gate := f.gate
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.running--
		f.mu.Unlock()
	}()
	select {
	case f.started <- t:
	default: // nobody is watching this many starts
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			f.mu.Lock()
			f.canceled++
			f.mu.Unlock()
			return Report{Target: t, Cause: CauseTimeout, Detail: ctx.Err().Error()}
		}
	}
	return r
}

// set changes the fake's behaviour for the probes that start next.
func (f *fakeProbe) set(gate chan struct{}, fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate, f.fail = gate, fail
}

func (f *fakeProbe) stats() (calls, maxRunning, canceled int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, f.maxRunning, f.canceled
}

// newTestCache returns a cache over f on clock, with its own metrics,
// closed when the test ends. cfg's zero lifetimes become cacheTTL and
// cacheNegTTL.
func newTestCache(t *testing.T, f *fakeProbe, clock *fakeClock, cfg CacheConfig) (*Cache[Report], *Metrics) {
	t.Helper()
	if cfg.TTL == 0 {
		cfg.TTL = cacheTTL
	}
	if cfg.NegativeTTL == 0 {
		cfg.NegativeTTL = cacheNegTTL
	}
	cfg.Clock = monoclock.New(clock.Now)
	cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	c := NewCache(f.probe, cfg, nil)
	t.Cleanup(c.Close)
	return c, cfg.Metrics
}

// settle waits until the probe in flight for target, if any, has stored its
// result.
func settle(c *Cache[Report], target Target) {
	c.mu.Lock()
	f := c.flights[target.Key()]
	c.mu.Unlock()
	if f != nil {
		<-f.done
	}
}

// canceled is a context that has ended: Lookup starts the probe but does not
// wait for it.
func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// checkCounts checks the cache's request metrics.
func checkCounts(t *testing.T, m *Metrics, hit, stale, miss float64) {
	t.Helper()
	var got [3]float64
	ch := make(chan prometheus.Metric, 3)
	m.lookups.Collect(ch)
	close(ch)
	for metric := range ch {
		var pb dto.Metric
		if err := metric.Write(&pb); err != nil {
			t.Fatal(err)
		}
		got[map[string]int{"hit": 0, "stale": 1, "miss": 2}[pb.GetLabel()[0].GetValue()]] = pb.GetCounter().GetValue()
	}
	if want := [3]float64{hit, stale, miss}; got != want {
		t.Errorf("cache requests hit, stale, miss = %v, want %v", got, want)
	}
}

// get calls c.Get and checks that it finds the result of probe number n
// (n 0: that it finds nothing).
func get(t *testing.T, c *Cache[Report], target Target, n int) {
	t.Helper()
	r, ok := c.Get(target)
	if want := fmt.Sprintf("probe %d", n); n == 0 && ok || n != 0 && (!ok || r.Detail != want) {
		t.Errorf("Get(%s) = %q, %v; want %q", target.Key(), r.Detail, ok, want)
	}
}

var exampleTarget = Target{Name: "example.test"}

func TestCacheHit(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	c, m := newTestCache(t, f, clock, CacheConfig{})
	if r, ok := c.Lookup(context.Background(), exampleTarget); !ok || r.Detail != "probe 1" || r.Capability != CapVerify {
		t.Fatalf("Lookup = %+v, %v", r, ok)
	}
	clock.Advance(cacheTTL / 2)
	get(t, c, exampleTarget, 1)
	if r, ok := c.Lookup(context.Background(), exampleTarget); !ok || r.Detail != "probe 1" {
		t.Errorf("second Lookup = %+v, %v", r, ok)
	}
	get(t, c, Target{Name: "example.test", Direct: true}, 0) // another key
	if calls, _, _ := f.stats(); calls != 1 {
		t.Errorf("%d probes, want 1", calls)
	}
	checkCounts(t, m, 2, 0, 1)
	if n := testutil.ToFloat64(m.entries); n != 1 || c.Len() != 1 {
		t.Errorf("entries metric %v, Len %d; want 1", n, c.Len())
	}
}

// doneSpy reports each call of Done. Lookup calls it only once it holds a
// probe flight to wait for, so the spy tells the test when a lookup waits.
type doneSpy struct {
	context.Context
	waiting chan<- struct{}
}

func (c doneSpy) Done() <-chan struct{} {
	c.waiting <- struct{}{}
	return c.Context.Done()
}

func TestCacheSharesOneProbe(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	gate := make(chan struct{})
	f.set(gate, false)
	c, m := newTestCache(t, f, clock, CacheConfig{})
	const n = 20
	waiting := make(chan struct{}, n)
	results := make(chan Report, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r, ok := c.Lookup(doneSpy{context.Background(), waiting}, exampleTarget)
			if !ok {
				t.Error("Lookup gave up")
			}
			results <- r
		})
	}
	for range n {
		<-waiting
	}
	close(gate)
	wg.Wait()
	close(results)
	for r := range results {
		if r.Detail != "probe 1" {
			t.Errorf("Lookup = %q, want probe 1", r.Detail)
		}
	}
	if calls, _, _ := f.stats(); calls != 1 {
		t.Errorf("%d probes for %d concurrent lookups, want 1", calls, n)
	}
	checkCounts(t, m, 0, 0, n)
}

// A lookup that cannot wait any longer gives up; the probe goes on and its
// result serves the next request.
func TestCacheLookupGivesUp(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	gate := make(chan struct{})
	f.set(gate, false)
	c, _ := newTestCache(t, f, clock, CacheConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if r, ok := c.Lookup(ctx, exampleTarget); ok {
		t.Errorf("Lookup = %+v, true; want false while the probe runs", r)
	}
	get(t, c, exampleTarget, 0)
	close(gate)
	settle(c, exampleTarget)
	get(t, c, exampleTarget, 1)
	if calls, _, canceled := f.stats(); calls != 1 || canceled != 0 {
		t.Errorf("%d probes, %d canceled; want 1 probe, run to its end", calls, canceled)
	}
}

func TestCachePositiveTTL(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	c, m := newTestCache(t, f, clock, CacheConfig{})
	c.Lookup(context.Background(), exampleTarget)
	clock.Advance(cacheTTL*3/4 - time.Second)
	get(t, c, exampleTarget, 1)
	clock.Advance(cacheTTL/4 + time.Second) // exactly the TTL
	get(t, c, exampleTarget, 0)
	if calls, _, _ := f.stats(); calls != 1 {
		t.Errorf("%d probes, want 1: Get does not probe", calls)
	}
	if r, ok := c.Lookup(context.Background(), exampleTarget); !ok || r.Detail != "probe 2" {
		t.Errorf("Lookup after the TTL = %q, %v; want probe 2", r.Detail, ok)
	}
	checkCounts(t, m, 1, 0, 2)
}

func TestCacheNegativeTTL(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	f.set(nil, true)
	c, _ := newTestCache(t, f, clock, CacheConfig{})
	if r, ok := c.Lookup(context.Background(), exampleTarget); !ok || !r.Failed() {
		t.Fatalf("Lookup = %+v, %v; want the failed result", r, ok)
	}
	clock.Advance(cacheNegTTL - time.Second)
	get(t, c, exampleTarget, 1) // remembered, and not refreshed early
	if calls, _, _ := f.stats(); calls != 1 {
		t.Errorf("%d probes, want 1", calls)
	}
	clock.Advance(time.Second)
	get(t, c, exampleTarget, 0)
	f.set(nil, false)
	if r, ok := c.Lookup(context.Background(), exampleTarget); !ok || r.Failed() || r.Detail != "probe 2" {
		t.Errorf("Lookup after the negative TTL = %+v, %v", r, ok)
	}
	clock.Advance(cacheNegTTL) // a success lives for the TTL
	get(t, c, exampleTarget, 2)
}

// A result past three quarters of its TTL is still served, and the first
// lookup that sees it starts one refresh in the background.
func TestCacheStaleRefresh(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	c, m := newTestCache(t, f, clock, CacheConfig{})
	c.Lookup(context.Background(), exampleTarget)
	<-f.started
	gate := make(chan struct{})
	f.set(gate, false)
	clock.Advance(cacheTTL * 3 / 4)
	for range 5 {
		get(t, c, exampleTarget, 1)
	}
	if r, ok := c.Lookup(context.Background(), exampleTarget); !ok || r.Detail != "probe 1" {
		t.Errorf("Lookup of a stale result = %q, %v; want probe 1 at once", r.Detail, ok)
	}
	<-f.started
	close(gate)
	settle(c, exampleTarget)
	if calls, _, _ := f.stats(); calls != 2 {
		t.Errorf("%d probes, want 2: one refresh", calls)
	}
	get(t, c, exampleTarget, 2)
	clock.Advance(cacheTTL / 2) // past the first result's expiry
	get(t, c, exampleTarget, 2)
	checkCounts(t, m, 2, 6, 1)
}

// A refresh that finds nothing (a DNS outage) does not throw away good
// evidence that has not expired; it is retried after the negative TTL.
func TestCacheFailedRefreshKeepsGoodResult(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	c, m := newTestCache(t, f, clock, CacheConfig{})
	c.Lookup(context.Background(), exampleTarget)
	f.set(nil, true)
	clock.Advance(cacheTTL * 3 / 4)
	get(t, c, exampleTarget, 1) // stale: refresh 2 fails
	settle(c, exampleTarget)
	get(t, c, exampleTarget, 1) // fresh until the negative TTL has passed
	if calls, _, _ := f.stats(); calls != 2 {
		t.Errorf("%d probes, want 2", calls)
	}
	clock.Advance(cacheNegTTL)
	get(t, c, exampleTarget, 1) // stale again: refresh 3 fails
	settle(c, exampleTarget)
	get(t, c, exampleTarget, 1)
	if calls, _, _ := f.stats(); calls != 3 {
		t.Errorf("%d probes, want 3", calls)
	}
	checkCounts(t, m, 2, 2, 1)
	clock.Advance(cacheTTL/4 - cacheNegTTL) // the good result's end
	get(t, c, exampleTarget, 0)
	if r, ok := c.Lookup(context.Background(), exampleTarget); !ok || !r.Failed() || r.Detail != "probe 4" {
		t.Errorf("Lookup = %+v, %v; want the failed probe 4", r, ok)
	}
	get(t, c, exampleTarget, 4)
}

func TestCacheMaxConcurrent(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	gate := make(chan struct{})
	f.set(gate, false)
	const limit, n = 3, 10
	c, _ := newTestCache(t, f, clock, CacheConfig{MaxConcurrent: limit})
	var targets []Target
	for i := range n {
		targets = append(targets, Target{Name: fmt.Sprintf("d%d.test", i)})
		if _, ok := c.Lookup(canceled(), targets[i]); ok {
			t.Fatal("Lookup with an ended context found a result")
		}
	}
	for range limit {
		<-f.started
	}
	select {
	case tg := <-f.started:
		t.Errorf("probe of %s started beyond the limit of %d", tg.Name, limit)
	case <-time.After(50 * time.Millisecond):
	}
	close(gate)
	for _, tg := range targets {
		settle(c, tg)
		if _, ok := c.Get(tg); !ok {
			t.Errorf("no result for %s", tg.Name)
		}
	}
	if calls, maxRunning, _ := f.stats(); calls != n || maxRunning != limit {
		t.Errorf("%d probes, at most %d at once; want %d, %d", calls, maxRunning, n, limit)
	}
}

func TestCacheMaxPending(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	gate := make(chan struct{})
	f.set(gate, false)
	c, m := newTestCache(t, f, clock, CacheConfig{MaxPending: 2, MaxConcurrent: 1})
	a, b, full := Target{Name: "a.test"}, Target{Name: "b.test"}, Target{Name: "full.test"}
	c.Lookup(canceled(), a) // running
	c.Lookup(canceled(), b) // waiting for a probe slot
	// No deadline: the lookup must not wait for a queue with no room.
	if r, ok := c.Lookup(context.Background(), full); ok {
		t.Errorf("Lookup with the queue full = %+v, true", r)
	}
	if n := testutil.ToFloat64(m.dropped); n != 1 {
		t.Errorf("queue full metric = %v, want 1", n)
	}
	close(gate)
	settle(c, a)
	settle(c, b)
	get(t, c, full, 0)
	if calls, _, _ := f.stats(); calls != 2 {
		t.Errorf("%d probes, want 2", calls)
	}
	// Room again.
	if _, ok := c.Lookup(context.Background(), full); !ok {
		t.Error("Lookup with room in the queue gave up")
	}
}

// Close cancels the probes running (a probe still waiting for a slot ends
// without running, or runs with its context already ended), wakes the
// lookups waiting for them, and returns once all have ended.
func TestCacheClose(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	f.set(make(chan struct{}), false) // never opened
	c, _ := newTestCache(t, f, clock, CacheConfig{MaxConcurrent: 1})
	waiting := make(chan struct{}, 2)
	done := make(chan struct{}, 2)
	for _, name := range []string{"running.test", "queued.test"} { // one runs, one waits for a slot
		go func() {
			defer func() { done <- struct{}{} }()
			if r, ok := c.Lookup(doneSpy{context.Background(), waiting}, Target{Name: name}); ok && !r.Failed() {
				t.Errorf("Lookup(%s) at Close = %+v, want no result or a failed one", name, r)
			}
		}()
	}
	<-waiting
	<-waiting
	<-f.started
	c.Close()
	// The queued probe may yet start as Close frees the slot (select picks
	// at random), but then with its context already ended.
	calls, _, canceled := f.stats()
	if calls < 1 || calls != canceled {
		t.Errorf("%d probes, %d canceled; want every probe canceled", calls, canceled)
	}
	<-done
	<-done
	if _, ok := c.Lookup(context.Background(), Target{Name: "late.test"}); ok {
		t.Error("Lookup after Close found a result")
	}
	if after, _, _ := f.stats(); after != calls {
		t.Errorf("%d probes started after Close", after-calls)
	}
}

// Results beyond Size push out the least recently used ones of their shard.
func TestCacheSizeBound(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	const size = 2 * numShards // two results per shard
	c, m := newTestCache(t, f, clock, CacheConfig{Size: size})
	// Three targets that land in one shard.
	var same []Target
	first := c.shard(Target{Name: "d0.test"}.Key())
	for i := 0; len(same) < 3; i++ {
		tg := Target{Name: fmt.Sprintf("d%d.test", i)}
		if c.shard(tg.Key()) == first {
			same = append(same, tg)
		}
	}
	for _, tg := range same {
		c.Lookup(context.Background(), tg)
	}
	get(t, c, same[0], 0) // the oldest is gone
	get(t, c, same[1], 2)
	get(t, c, same[2], 3)
	if n := testutil.ToFloat64(m.evictions); n != 1 {
		t.Errorf("evictions = %v, want 1", n)
	}
	if c.Len() != 2 {
		t.Errorf("Len = %d, want 2", c.Len())
	}

	for i := range 200 {
		c.Lookup(context.Background(), Target{Name: fmt.Sprintf("many%d.test", i)})
	}
	if n := c.Len(); n > size {
		t.Errorf("Len = %d, beyond Size %d", n, size)
	}
	if ev, n := testutil.ToFloat64(m.evictions), c.Len(); int(ev) != 203-n {
		t.Errorf("evictions = %v with %d of 203 results left", ev, n)
	}
	if n := testutil.ToFloat64(m.entries); int(n) != c.Len() {
		t.Errorf("entries metric = %v, Len %d", n, c.Len())
	}
}

// Probe probes even when a result is cached, and stores what it finds.
func TestCacheProbe(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	c, _ := newTestCache(t, f, clock, CacheConfig{})
	c.Lookup(context.Background(), exampleTarget)
	if r := c.Probe(context.Background(), exampleTarget); r.Detail != "probe 2" {
		t.Errorf("Probe = %q, want probe 2", r.Detail)
	}
	get(t, c, exampleTarget, 2)
}

// TestCachePrefetch: a miss starts a probe without waiting for it; a
// fresh result starts none; a result due for refresh starts one.
func TestCachePrefetch(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	gate := make(chan struct{})
	f.set(gate, false)
	c, m := newTestCache(t, f, clock, CacheConfig{})
	c.Prefetch(exampleTarget) // returns while the probe waits at the gate
	if got := <-f.started; got != exampleTarget {
		t.Fatalf("prefetch probed %v", got)
	}
	close(gate)
	settle(c, exampleTarget)
	get(t, c, exampleTarget, 1)
	c.Prefetch(exampleTarget)
	settle(c, exampleTarget)
	get(t, c, exampleTarget, 1) // fresh: no new probe
	clock.Advance(cacheTTL * 3 / 4)
	c.Prefetch(exampleTarget)
	settle(c, exampleTarget)
	get(t, c, exampleTarget, 2) // due for refresh: probed again
	if calls, _, _ := f.stats(); calls != 2 {
		t.Errorf("%d probes, want 2", calls)
	}
	checkCounts(t, m, 4, 1, 1) // the gets count too

}

func TestMetricsLint(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

// TestCacheIndexFollowsLRU stores, replaces and evicts from many
// goroutines at once, then checks that the lock-free index lookups read
// holds exactly the entries the LRUs hold: nothing evicted is still
// found, and nothing kept is lost.
func TestCacheIndexFollowsLRU(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	const size = 4 * numShards
	c, _ := newTestCache(t, f, clock, CacheConfig{Size: size, MaxPending: 10000})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				tg := Target{Name: fmt.Sprintf("d%d.test", (i*7+g)%60)}
				if i%3 == 0 {
					c.store(tg, Report{}) // a failure: negative entry, or kept good result
				} else {
					c.store(tg, Report{Detail: "good", Capability: CapEncrypt})
				}
				c.Get(tg)
			}
		}()
	}
	wg.Wait()
	for i := range c.shards {
		s := &c.shards[i]
		indexed := 0
		s.index.Range(func(k string, e *entry[Report]) bool {
			indexed++
			p, inPos := s.pos.Peek(k)
			n, inNeg := s.neg.Peek(k)
			if !(inPos && p == e || inNeg && n == e) {
				t.Errorf("shard %d: index holds %s, which neither LRU holds", i, k)
			}
			return true
		})
		if want := s.pos.Len() + s.neg.Len(); indexed != want {
			t.Errorf("shard %d: index has %d entries, LRUs %d", i, indexed, want)
		}
	}
}

// TestCachePeekAndKeys: Peek neither probes nor counts; Keys lists what
// is cached until it expires.
func TestCachePeekAndKeys(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	c, m := newTestCache(t, f, clock, CacheConfig{})
	if _, ok := c.Peek(exampleTarget); ok {
		t.Fatal("Peek found something in an empty cache")
	}
	c.Lookup(context.Background(), exampleTarget)
	clock.Advance(cacheTTL * 3 / 4) // due for a refresh: Peek must not start one
	if r, ok := c.Peek(exampleTarget); !ok || r.Detail != "probe 1" {
		t.Errorf("Peek = %q, %v; want probe 1", r.Detail, ok)
	}
	if calls, _, _ := f.stats(); calls != 1 {
		t.Errorf("%d probes after Peek, want 1", calls)
	}
	checkCounts(t, m, 0, 0, 1)
	if keys := c.Keys(); len(keys) != 1 || keys[0] != exampleTarget.Key() {
		t.Errorf("Keys = %v", keys)
	}
	clock.Advance(cacheTTL)
	if keys := c.Keys(); len(keys) != 0 {
		t.Errorf("Keys after expiry = %v", keys)
	}
}

// published is Evidence with a part of its own lifetime, as the daemon's
// findings have (a published record's TTL): refreshing it keeps the
// gathering time of the rest.
type published struct {
	n, prevN int // the gather that made it, and the one it refreshed
	gathered time.Time
	by       time.Time
}

func (p published) Failed() bool         { return false }
func (p published) Gathered() time.Time  { return p.gathered }
func (p published) RefreshBy() time.Time { return p.by }

// publishedCache is a cache of published values whose part lasts ttl; it
// reports on gathered each value it gathers.
func publishedCache(t *testing.T, clock *fakeClock, ttl time.Duration, gathered chan<- published) *Cache[published] {
	var mu sync.Mutex
	n := 0
	gather := func(_ context.Context, _ Target, prev published) published {
		mu.Lock()
		n++
		p := published{n: n, prevN: prev.n, gathered: prev.gathered, by: clock.Now().Add(ttl)}
		mu.Unlock()
		if p.gathered.IsZero() {
			p.gathered = clock.Now()
		}
		gathered <- p
		return p
	}
	c := NewCache(gather, CacheConfig{TTL: time.Hour, NegativeTTL: time.Minute, DueTick: -1, Clock: monoclock.New(clock.Now)}, nil)
	t.Cleanup(c.Close)
	return c
}

// A value's part that runs out before its TTL is refreshed when it runs
// out, without a lookup waiting: a lookup past it gets the value at once
// and starts the refresh, which is given the value to refresh and does not
// extend the rest's lifetime.
func TestCacheRefreshBy(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	gathered := make(chan published, 10)
	c := publishedCache(t, clock, time.Minute, gathered)
	tg := Target{Name: "sts.test"}
	if _, ok := c.Lookup(t.Context(), tg); !ok {
		t.Fatal("no value after a probe")
	}
	next(t, gathered)
	clock.Advance(59 * time.Second)
	if v, ok := c.Get(tg); !ok || v.n != 1 || c.flightFor(tg) {
		t.Fatalf("before RefreshBy: %+v, %v, refreshing %v; want the first value, no refresh", v, ok, c.flightFor(tg))
	}
	clock.Advance(time.Second)
	if v, ok := c.Get(tg); !ok || v.n != 1 {
		t.Fatalf("at RefreshBy: %+v, %v; want the cached value at once", v, ok)
	}
	if p := next(t, gathered); p.n != 2 || p.prevN != 1 {
		t.Errorf("refresh %+v: want gather 2 refreshing gather 1", p)
	}
	waitStored(t, c, tg, 2)
	// 45 minutes after the first gather the rest is due: its refresh
	// point did not move with the part's.
	clock.Advance(44 * time.Minute)
	c.Get(tg) // due by RefreshBy again
	next(t, gathered)
	waitStored(t, c, tg, 3)
	clock.Advance(16 * time.Minute) // an hour after the first gather
	if v, ok := c.Get(tg); ok {
		t.Errorf("an hour after the first gather: %+v still served; its refreshes must not extend it", v)
	}
}

// An entry read since it was stored is refreshed when its RefreshBy comes,
// without waiting for another lookup; one nobody read is left alone.
func TestCacheRefreshesDueEntriesInUse(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	gathered := make(chan published, 10)
	c := publishedCache(t, clock, time.Minute, gathered)
	used, idle := Target{Name: "used.test"}, Target{Name: "idle.test"}
	c.Lookup(t.Context(), used)
	c.Lookup(t.Context(), idle)
	next(t, gathered)
	next(t, gathered)
	if n := c.due.len(); n != 2 {
		t.Fatalf("%d refreshes queued, want 2", n)
	}
	c.Get(used) // read after it was stored
	clock.Advance(time.Minute)
	c.startDue()
	if p := next(t, gathered); p.prevN != 1 && p.prevN != 2 {
		t.Errorf("refreshed %+v", p)
	}
	waitFlights(c)
	if v, _ := c.Peek(used); v.n != 3 {
		t.Errorf("used.test holds gather %d, want 3 (refreshed)", v.n)
	}
	if v, _ := c.Peek(idle); v.n != 2 && v.n != 1 {
		t.Errorf("idle.test holds gather %d, want its first", v.n)
	}
	select {
	case p := <-gathered:
		t.Errorf("an entry nobody read was refreshed: %+v", p)
	default:
	}
	if n := c.due.len(); n != 1 {
		t.Errorf("%d refreshes queued after the refresh, want 1 (the new value's)", n)
	}
}

// flightFor reports whether a gather is running for tg.
func (c *Cache[V]) flightFor(tg Target) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flights[tg.Key()] != nil
}

// waitFlights waits until no gather is running.
func waitFlights[V Evidence](c *Cache[V]) {
	for {
		c.mu.Lock()
		var f *flight[V]
		for _, f = range c.flights {
			break
		}
		c.mu.Unlock()
		if f == nil {
			return
		}
		<-f.done
	}
}

// waitStored waits until tg's value is gather n.
func waitStored(t *testing.T, c *Cache[published], tg Target, n int) {
	t.Helper()
	waitFlights(c)
	if v, ok := c.Peek(tg); !ok || v.n != n {
		t.Fatalf("stored %+v, %v; want gather %d", v, ok, n)
	}
}

// next returns the next value gathered, failing the test if none comes.
func next(t *testing.T, gathered <-chan published) published {
	t.Helper()
	select {
	case p := <-gathered:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no gather started")
		return published{}
	}
}

// TestCachePutAndRange: a result gathered elsewhere is stored as a probe's
// would be (a failure does not replace a good result), without probing;
// Range sees the unexpired results and nothing else.
func TestCachePutAndRange(t *testing.T) {
	t.Parallel()
	f, clock := newFakeProbe(), newFakeClock()
	c, _ := newTestCache(t, f, clock, CacheConfig{})
	good := Report{Target: exampleTarget, Capability: CapVerify, ProbedAt: clock.Now(), Detail: "from a peer",
		Hosts: []HostReport{{Host: "mx.example.org", Capability: CapVerify}}}
	c.Put(exampleTarget, good)
	c.Put(exampleTarget, Report{Target: exampleTarget, Cause: CauseDNS, ProbedAt: clock.Now()})
	if r, ok := c.Get(exampleTarget); !ok || r.Detail != "from a peer" {
		t.Errorf("Get after Put = %q, %v; want the peer's good result", r.Detail, ok)
	}
	if calls, _, _ := f.stats(); calls != 0 {
		t.Errorf("%d probes after Put, want 0", calls)
	}
	var seen []string
	c.Range(func(key string, r Report) bool { seen = append(seen, key+"="+r.Detail); return true })
	if len(seen) != 1 || seen[0] != exampleTarget.Key()+"=from a peer" {
		t.Errorf("Range saw %q", seen)
	}
	clock.Advance(cacheTTL)
	seen = nil
	c.Range(func(key string, r Report) bool { seen = append(seen, key); return true })
	if len(seen) != 0 {
		t.Errorf("Range after expiry saw %q", seen)
	}
}
