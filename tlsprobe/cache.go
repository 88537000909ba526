package tlsprobe

import (
	"cmp"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/puzpuzpuz/xsync/v4"
	"github.com/tlspolicyd/tlspolicyd/internal/monoclock"

	"github.com/hashicorp/golang-lru/v2/expirable"
)

// Defaults for the CacheConfig fields left zero.
const (
	DefaultCacheSize     = 100000
	DefaultMaxConcurrent = 16
	DefaultMaxPending    = 1024
)

// numShards splits the cache so that concurrent hits on different
// destinations do not queue on one LRU lock.
const numShards = 8

// CacheConfig sets the cache's bounds and lifetimes.
type CacheConfig struct {
	Size          int           // results kept, in all (0: DefaultCacheSize)
	TTL           time.Duration // a result is fresh this long
	NegativeTTL   time.Duration // a failed probe is remembered this long
	MaxConcurrent int           // probes running at once (0: DefaultMaxConcurrent)
	MaxPending    int           // probes running or waiting to run (0: DefaultMaxPending)
	// DueTick is how often the cache starts the refreshes that are due
	// by Evidence.RefreshBy (0: DefaultDueTick; negative: never, for
	// tests, which call startDue).
	DueTick time.Duration
	// Clock is the cache's time (nil: the system clock). A lookup that
	// also reads pins on the same clock reads it once for both (RefAt).
	Clock   *monoclock.Clock
	Metrics *Metrics
}

// DefaultDueTick is CacheConfig.DueTick's default: a published record is
// re-read within a second of its TTL running out.
const DefaultDueTick = time.Second

// Evidence is what a Cache holds: a probe Report, or a value built around
// one (the daemon adds what destinations publish, MTA-STS and DANE).
type Evidence interface {
	// Failed reports that the value holds no evidence at all: it is kept
	// for the negative TTL and never replaces a good value.
	Failed() bool
	// Gathered is when the evidence was gathered: the value lasts TTL
	// from then.
	Gathered() time.Time
	// RefreshBy is when part of the value must be gathered again, before
	// three quarters of the TTL if it comes sooner: a published DNS
	// record's TTL running out. Zero: no such part.
	RefreshBy() time.Time
}

// Gathered implements Evidence.
func (r Report) Gathered() time.Time { return r.ProbedAt }

// RefreshBy implements Evidence: a probe report lasts its TTL.
func (r Report) RefreshBy() time.Time { return time.Time{} }

// Gather gathers a target's evidence. prev is the value cached for it, due
// for a refresh, or the zero V: a gatherer may refresh only the part of
// prev that is due.
type Gather[V Evidence] func(ctx context.Context, t Target, prev V) V

// Cache keeps probe results and runs the probes for misses. Lookups of a
// cached destination take no lock and never wait for the network;
// a miss starts at most one probe per destination, however many lookups
// ask; probes run with bounded concurrency and a bounded queue; and a
// result past three quarters of its TTL is refreshed in the background on
// its next lookup, so a busy destination waits for a probe only once.
//
// A value whose RefreshBy comes sooner (a published record's TTL) is
// refreshed then, in the background, if a lookup read it since it was
// stored: a destination in use follows the record's lifetime without its
// lookups waiting, and one nobody asks for costs no query.
type Cache[V Evidence] struct {
	probe    Gather[V]
	onResult func(key string, v V)
	cfg      CacheConfig
	perShard int // good results a shard holds
	shards   [numShards]shard[V]
	sem      chan struct{}
	ctx      context.Context // parent of every probe; canceled by Close
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex // guards flights and closed
	flights  map[string]*flight[V]
	closed   bool
	due      dueQueue[V]
	// lookups counts lookups by result, per shard (see lookupCounter).
	lookups []lookupCounter
	// clock is the time entries keep theirs on (see monoclock).
	clock *monoclock.Clock
}

// shard holds successes and failures apart, each with its own TTL, so a
// failure is retried soon while a success is kept for hours. The LRUs bound
// the memory; lookups read index, which holds the entry of each key in
// pos or neg (a key is never in both), without taking a lock. Writers
// (store, Restore) hold mu and update index before the LRUs; an LRU
// dropping an entry (size, expiry, Remove) deletes it from index only if
// index still holds that very entry.
//
// Hits do not reorder the LRUs (that would take their lock), so a full
// shard drops the result stored longest ago; a destination in use is
// stored again at each refresh, three quarters into its TTL.
//
// index is an xsync.Map rather than a sync.Map: typed, it hashes a string
// key without boxing it, and reads take half the time of a sync.Map's.
type shard[V Evidence] struct {
	index    *xsync.Map[string, *entry[V]]
	mu       sync.Mutex
	pos, neg *expirable.LRU[string, *entry[V]]
}

// load returns the entry of key, without a lock.
func (s *shard[V]) load(key string) (*entry[V], bool) { return s.index.Load(key) }

// drop deletes key from index if index holds e for it.
func (s *shard[V]) drop(key string, e *entry[V]) {
	s.index.Compute(key, func(cur *entry[V], loaded bool) (*entry[V], xsync.ComputeOp) {
		if loaded && cur == e {
			return nil, xsync.DeleteOp
		}
		return cur, xsync.CancelOp
	})
}

// entry is an immutable cached result; a change replaces the entry. Only
// read changes, once, from false to true. Its times are offsets on the
// cache's clock.
type entry[V Evidence] struct {
	res       V
	expires   time.Duration
	refreshAt time.Duration // after this, a lookup starts a background refresh
	read      atomic.Bool
}

// newEntry is the entry of r for ttl, gathered at r.Gathered() (or now,
// when r does not say), due for refresh at three quarters of ttl or at
// r.RefreshBy(), whichever comes first.
func (c *Cache[V]) newEntry(r V, now time.Duration, ttl time.Duration) *entry[V] {
	at := now
	if g := r.Gathered(); !g.IsZero() {
		at = min(c.clock.At(g), now)
	}
	e := &entry[V]{res: r, expires: at + ttl, refreshAt: at + ttl*3/4}
	if by := r.RefreshBy(); !by.IsZero() {
		e.refreshAt = min(e.refreshAt, c.clock.At(by))
	}
	return e
}

// markRead records that a lookup read e, writing only the first time: hits
// on a busy destination do not contend on the flag.
func (e *entry[V]) markRead() {
	if !e.read.Load() {
		e.read.Store(true)
	}
}

// flight is one probe in progress; waiters block on done.
type flight[V Evidence] struct {
	done chan struct{}
	res  V
}

// NewCache returns a cache that runs probe for misses. Probes outlive the
// lookups that started them (a lookup gives up after probe.wait; the probe
// goes on for the next one) until Close. onResult, if not nil, sees every
// value the cache stores, in the probe's goroutine (never on a lookup's
// path): the daemon learns pins from it and persists it.
func NewCache[V Evidence](probe Gather[V], cfg CacheConfig, onResult func(key string, v V)) *Cache[V] {
	if cfg.Size <= 0 {
		cfg.Size = DefaultCacheSize
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.Clock == nil {
		cfg.Clock = monoclock.New(nil)
	}
	c := &Cache[V]{
		clock:    cfg.Clock,
		probe:    probe,
		onResult: onResult,
		cfg:      cfg,
		sem:      make(chan struct{}, cfg.MaxConcurrent),
		flights:  make(map[string]*flight[V]),
		due:      dueQueue[V]{max: cfg.Size},
		lookups:  make([]lookupCounter, numShards),
	}
	cfg.Metrics.countLookups(c.lookups)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if tick := cmp.Or(cfg.DueTick, DefaultDueTick); tick > 0 {
		c.wg.Add(1)
		go c.startDueEvery(tick)
	}
	per := max(cfg.Size/numShards, 1)
	c.perShard = per
	for i := range c.shards {
		s := &c.shards[i]
		s.index = xsync.NewMap[string, *entry[V]]()
		// Called under the LRU's lock: it must not touch the LRUs.
		onEvict := func(key string, e *entry[V]) {
			s.drop(key, e)
			c.cfg.Metrics.evicted()
		}
		// The LRU's own expiry (wall clock) only frees memory; freshness
		// is decided by entry.expires against the injected clock.
		s.pos = expirable.NewLRU(per, onEvict, cfg.TTL)
		s.neg = expirable.NewLRU(max(per/4, 1), onEvict, cfg.NegativeTTL)
	}
	return c
}

func (c *Cache[V]) shard(key string) *shard[V] { return &c.shards[shardOf(key)] }

// shardOf is the shard of key: FNV-1a, inline, no allocation.
func shardOf(key string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return h % numShards
}

// missed counts a lookup of key that found nothing.
func (c *Cache[V]) missed(key string) {
	c.lookups[shardOf(key)].n[cacheMiss].Add(1)
}

// Capacity is how many good results the cache holds at most (failures
// are held apart, in less room): a restart need restore no more.
func (c *Cache[V]) Capacity() int { return c.cfg.Size }

// Len returns the number of cached results.
func (c *Cache[V]) Len() int {
	n := 0
	for i := range c.shards {
		n += c.shards[i].pos.Len() + c.shards[i].neg.Len()
	}
	return n
}

// Get returns the cached result for t without waiting; it starts a
// background refresh when the result is due for one.
func (c *Cache[V]) Get(t Target) (V, bool) {
	if r := c.Ref(t); r != nil {
		return *r, true
	}
	var zero V
	return zero, false
}

// Ref is Get for the lookup path: it returns the cached result itself,
// which the caller must not modify, or nil. A result is never changed once
// cached (a new one replaces it), so the caller may keep reading it.
func (c *Cache[V]) Ref(t Target) *V { return c.RefAt(t, c.clock.Now()) }

// Clock is the cache's clock.
func (c *Cache[V]) Clock() *monoclock.Clock { return c.clock }

// RefAt is Ref at time now, read from the cache's clock.
func (c *Cache[V]) RefAt(t Target, now time.Duration) *V {
	key := t.Key()
	i := shardOf(key)
	e, ok := c.shards[i].load(key)
	if !ok || now >= e.expires {
		return nil
	}
	e.markRead()
	if now >= e.refreshAt {
		c.lookups[i].n[cacheStale].Add(1)
		c.start(t, key)
	} else {
		c.lookups[i].n[cacheHit].Add(1)
	}
	return &e.res
}

// Lookup returns the cached result for t or, on a miss, starts a probe and
// waits for it until ctx ends. It reports false when no result is ready in
// time (or the probe queue is full); the probe then goes on in the
// background for later lookups.
func (c *Cache[V]) Lookup(ctx context.Context, t Target) (V, bool) {
	if r, ok := c.Get(t); ok {
		return r, true
	}
	c.missed(t.Key())
	var zero V
	f := c.start(t, t.Key())
	if f == nil {
		return zero, false
	}
	select {
	case <-f.done:
		return f.res, true
	case <-ctx.Done():
		return zero, false
	}
}

// Peek returns the cached result for t, fresh or due for a refresh, without
// starting anything and without counting a cache request: for the status
// page and reports, which must neither probe nor skew the hit ratio.
func (c *Cache[V]) Peek(t Target) (V, bool) {
	key := t.Key()
	e, ok := c.shard(key).load(key)
	if !ok || c.clock.Now() >= e.expires {
		var zero V
		return zero, false
	}
	return e.res, true
}

// Keys returns the keys of every unexpired result, good or failed, in no
// particular order.
func (c *Cache[V]) Keys() []string {
	now := c.clock.Now()
	var keys []string
	for i := range c.shards {
		c.shards[i].index.Range(func(k string, v *entry[V]) bool {
			if now < v.expires {
				keys = append(keys, k)
			}
			return true
		})
	}
	return keys
}

// Range calls fn with every unexpired result, good or failed, and its
// key, in no particular order, until fn returns false; like Peek, it
// starts nothing and counts nothing.
func (c *Cache[V]) Range(fn func(key string, v V) bool) {
	now := c.clock.Now()
	for i := range c.shards {
		more := true
		c.shards[i].index.Range(func(k string, e *entry[V]) bool {
			if now < e.expires {
				more = fn(k, e.res)
			}
			return more
		})
		if !more {
			return
		}
	}
}

// Prefetch makes sure a result for t is cached or being gathered, without
// waiting: a fresh result is left alone, a stale one is refreshed in the
// background, and a miss starts a probe whose result a later lookup finds.
// A lookup that can answer without evidence (from a pin) calls it so that
// the evidence stays fresh.
func (c *Cache[V]) Prefetch(t Target) { c.PrefetchAt(t, c.clock.Now()) }

// PrefetchAt is Prefetch at time now, read from the cache's clock.
func (c *Cache[V]) PrefetchAt(t Target, now time.Duration) {
	if c.RefAt(t, now) != nil {
		return
	}
	c.missed(t.Key())
	c.start(t, t.Key())
}

// Probe runs a probe now, ignoring the cache (for `tlspolicyd probe`), and
// stores its result.
func (c *Cache[V]) Probe(ctx context.Context, t Target) V {
	var zero V
	r := c.probe(ctx, t, zero)
	c.store(t, r)
	return r
}

// start returns the flight for key, starting one if none is running. It
// returns nil when the cache is closed or MaxPending probes are queued.
func (c *Cache[V]) start(t Target, key string) *flight[V] {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.flights[key]; f != nil {
		return f
	}
	if c.closed {
		return nil
	}
	if len(c.flights) >= c.cfg.MaxPending {
		c.cfg.Metrics.queueFull()
		return nil
	}
	// t and key may borrow the caller's buffer (a lookup's key): keep
	// copies, in variables of their own so that the compiler sees that
	// the originals are not kept.
	kept, keptKey := t.Clone(), strings.Clone(key)
	f := &flight[V]{done: make(chan struct{})}
	c.flights[keptKey] = f
	c.wg.Add(1)
	go c.run(kept, keptKey, f)
	return f
}

// run waits for a probe slot, probes (refreshing what is cached for key,
// if anything), stores the result and wakes the waiters.
func (c *Cache[V]) run(t Target, key string, f *flight[V]) {
	defer c.wg.Done()
	select {
	case c.sem <- struct{}{}:
		prev, _ := c.Peek(t)
		f.res = c.probe(c.ctx, t, prev)
		<-c.sem
		c.store(t, f.res)
		if c.onResult != nil {
			c.onResult(key, f.res)
		}
	case <-c.ctx.Done():
		// Shutting down before the probe could start: the zero value,
		// which holds no evidence.
	}
	c.mu.Lock()
	delete(c.flights, key)
	c.mu.Unlock()
	close(f.done)
}

// store caches a result. A failed probe (no evidence at all: DNS failure,
// nothing answered) does not replace an unexpired good result: losing
// evidence to a passing outage would weaken answers. The good result is
// kept, and the refresh retried after the negative TTL.
func (c *Cache[V]) store(t Target, r V) {
	key := t.Key()
	now := c.clock.Now()
	s := c.shard(key)
	s.mu.Lock()
	var e *entry[V]
	switch old, ok := s.pos.Peek(key); {
	case !r.Failed():
		e = c.newEntry(r, now, c.cfg.TTL)
		s.put(key, e, true)
	case ok && now < old.expires:
		e = &entry[V]{res: old.res, expires: old.expires, refreshAt: now + c.cfg.NegativeTTL}
		s.put(key, e, true)
	default:
		s.put(key, &entry[V]{res: r, expires: now + c.cfg.NegativeTTL, refreshAt: now + c.cfg.NegativeTTL}, false)
	}
	s.mu.Unlock()
	if e != nil && e.refreshAt < e.expires {
		c.due.push(t, key, e)
	}
	c.cfg.Metrics.setEntries(c.Len())
}

// put makes e the entry of key, in pos if good, else in neg. s.mu must be
// held. index is updated first, so a lookup never finds the key missing
// while it is replaced; the LRUs then drop the old entry, which leaves
// index alone since it no longer holds it.
func (s *shard[V]) put(key string, e *entry[V], good bool) {
	s.index.Store(key, e)
	if good {
		s.pos.Add(key, e)
		s.neg.Remove(key)
	} else {
		s.neg.Add(key, e)
		s.pos.Remove(key)
	}
}

// Restore puts a stored result back in the cache at start, as fresh as
// its age allows: a restart neither forgets results nor probes every
// destination again. Results already past their TTL are dropped, and so
// is a good result for which its shard has no room left: a caller that
// restores the newest first keeps the newest. It reports whether r was
// restored. Call UpdateMetrics after the last.
func (c *Cache[V]) Restore(key string, r V) bool {
	now := c.clock.Now()
	ttl := c.cfg.TTL
	if r.Failed() {
		ttl = c.cfg.NegativeTTL
	}
	if r.Gathered().IsZero() {
		return false // no telling how old it is
	}
	e := c.newEntry(r, now, ttl)
	if now >= e.expires {
		return false
	}
	if r.Failed() {
		e.refreshAt = e.expires
	}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !r.Failed() && s.pos.Len() >= c.perShard {
		return false
	}
	s.put(key, e, !r.Failed())
	return true
}

// Put stores a result gathered elsewhere (by another daemon of a fleet)
// as if a probe had gathered it here, under the same rules: a failed
// result does not replace a good one. onResult does not see it.
func (c *Cache[V]) Put(t Target, r V) {
	c.store(t, r)
}

// UpdateMetrics sets the cache's metrics to what it holds, after Restore.
func (c *Cache[V]) UpdateMetrics() { c.cfg.Metrics.setEntries(c.Len()) }

// Close cancels probes in flight and waits for them to end.
func (c *Cache[V]) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
}
