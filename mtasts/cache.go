package mtasts

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Outcome is how a Cache lookup ended, for logs and the
// tlspolicyd_mtasts_lookups_total{outcome} metric. The "_cached" outcomes
// are failures that RFC 8461 section 3.3 answers with the cached policy:
// "if no 'live' policy can be discovered via DNS or fetched via HTTPS, but
// a valid (non-expired) policy exists in the sender's cache, the sender MUST
// apply that cached policy".
type Outcome uint8

// Outcomes; String gives the metric label.
const (
	// OutcomeNoPolicy: no MTA-STS record, and nothing cached.
	OutcomeNoPolicy Outcome = iota
	// OutcomeFetched: a policy was fetched, because none was cached, the
	// published id changed or the cached policy was due for refresh.
	OutcomeFetched
	// OutcomeCached: the cached policy, whose id is still the one
	// published; nothing fetched.
	OutcomeCached
	// OutcomeNoRecordCached: the record is gone but the cached policy has
	// not expired, so it still applies. Domains withdraw MTA-STS by
	// publishing mode none (section 8.3), not by removing the record.
	OutcomeNoRecordCached
	// OutcomeInvalidRecord: the record is invalid or there are several
	// (section 3.1: no policy available); nothing cached.
	OutcomeInvalidRecord
	// OutcomeInvalidRecordCached: as OutcomeInvalidRecord, cached policy used.
	OutcomeInvalidRecordCached
	// OutcomeDNSFailure: the TXT lookup failed; nothing cached.
	OutcomeDNSFailure
	// OutcomeDNSFailureCached: as OutcomeDNSFailure, cached policy used.
	OutcomeDNSFailureCached
	// OutcomeFetchFailed: the fetch failed (or failed recently, see
	// Cache.Backoff); nothing cached.
	OutcomeFetchFailed
	// OutcomeFetchFailedCached: as OutcomeFetchFailed, cached policy used.
	OutcomeFetchFailedCached
	// OutcomeInvalidPolicy: the fetched policy was invalid or too large;
	// nothing cached.
	OutcomeInvalidPolicy
	// OutcomeTimeout: the caller's context ended while it waited for
	// another lookup of the same domain; the cached policy, if any, is
	// returned.
	OutcomeTimeout
)

var outcomeNames = [...]string{
	OutcomeNoPolicy:            "no_policy",
	OutcomeFetched:             "fetched",
	OutcomeCached:              "cached",
	OutcomeNoRecordCached:      "no_record_cached",
	OutcomeInvalidRecord:       "invalid_record",
	OutcomeInvalidRecordCached: "invalid_record_cached",
	OutcomeDNSFailure:          "dns_failure",
	OutcomeDNSFailureCached:    "dns_failure_cached",
	OutcomeFetchFailed:         "fetch_failed",
	OutcomeFetchFailedCached:   "fetch_failed_cached",
	OutcomeInvalidPolicy:       "invalid_policy",
	OutcomeTimeout:             "timeout",
}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Outcomes lists every outcome, for metric labels.
func Outcomes() []Outcome {
	os := make([]Outcome, len(outcomeNames))
	for i := range os {
		os[i] = Outcome(i)
	}
	return os
}

// Discovery is a Cache lookup in full.
type Discovery struct {
	// Policy is the policy now known for the domain: fresh, cached, or
	// the zero Policy when none is known.
	Policy Policy
	// Outcome says how the lookup went.
	Outcome Outcome
	// OK reports whether Policy is one to apply: mode testing or enforce.
	// A mode none policy is returned (for display) with OK false.
	OK bool
	// Err explains a failure outcome (DNS, record, fetch), for logs.
	Err error
	// TTL is how long the TXT record's answer may be kept (Record.TTL):
	// looking up again sooner cannot see a new id. 0 when the lookup
	// failed or did not get that far.
	TTL time.Duration
}

// Defaults for the Cache.
const (
	// DefaultCacheSize bounds the domains a Cache remembers when NewCache
	// is given no size.
	DefaultCacheSize = 10000
	// DefaultBackoff is Cache.Backoff's initial value.
	DefaultBackoff = 5 * time.Minute
	// maxRefreshAge is when a cached policy whose id has not changed is
	// fetched again: RFC 8461 section 3.3 asks senders to "proactively
	// refresh cached policies before they expire; a suggested refresh
	// frequency is once per day". Policies with a max_age under two days
	// are refreshed at half their age instead.
	maxRefreshAge = 24 * time.Hour
)

// Cache keeps each domain's policy for its max_age (RFC 8461 sections 3.1
// and 3.3) and answers "which policy applies now". Each lookup reads the TXT
// record, a cheap DNS query, and fetches the policy only when the published
// id differs from the cached policy's, when nothing is cached, or when the
// cached policy is due for refresh. A cached policy that has not expired
// keeps applying while the record is missing or invalid, DNS fails or the
// fetch fails; an expired one is never used. A fetched mode none policy
// replaces the cached one (section 8.3) and is itself cached, so that a
// withdrawn domain is not fetched on every lookup.
//
// Concurrent lookups of one domain share one discovery and fetch. The cache
// holds at most size domains, dropping the least recently used. It starts
// no goroutine. It is safe for concurrent use.
type Cache struct {
	// Backoff is how long after a failed fetch the cache answers from
	// memory (cached policy or none) instead of fetching again for the
	// same id: a domain whose policy host is down must not be fetched on
	// every lookup (section 3.3 lets senders rate-limit fetches). A new
	// id is fetched at once. Set it before the first lookup.
	Backoff time.Duration

	f   *Fetcher
	now func() time.Time
	m   *Metrics

	mu      sync.Mutex
	entries *simplelru.LRU[string, *entry] // by normalised domain
	flights map[string]*flight
}

// entry is what the cache knows of a domain.
type entry struct {
	policy Policy // meaningful when has
	has    bool
	// The last failed fetch, for Backoff: the id it was for, when, why.
	failID  string
	failAt  time.Time
	failErr error
}

// flight is a lookup in progress, which others for the domain wait for.
type flight struct {
	done    chan struct{}
	res     Discovery
	retry   bool // the leader's context ended: waiters must look up themselves
	waiters int  // lookups waiting; tests read it
}

// NewCache returns a cache that fetches with f, remembers at most size
// domains (DefaultCacheSize if size <= 0), tells time with now (time.Now if
// nil) and records into m (nil: nothing), whose policies gauge then counts
// this cache.
func NewCache(f *Fetcher, size int, now func() time.Time, m *Metrics) *Cache {
	if size <= 0 {
		size = DefaultCacheSize
	}
	if now == nil {
		now = time.Now
	}
	entries, err := simplelru.NewLRU[string, *entry](size, nil)
	if err != nil {
		panic(err) // only for size <= 0, excluded above
	}
	c := &Cache{
		Backoff: DefaultBackoff,
		f:       f,
		now:     now,
		m:       m,
		entries: entries,
		flights: make(map[string]*flight),
	}
	m.setSource(c.countByMode)
	return c
}

// Get returns the policy to apply to mail for domain now, how the lookup
// went, and whether there is a policy to apply (mode testing or enforce; see
// Discovery.OK). It honours ctx: discovery and fetch stop when it ends.
//
// A policy applies to its exact domain only (RFC 8461 section 3.4): look up
// the recipient domain, not a parent, a next-hop host or a relay.
func (c *Cache) Get(ctx context.Context, domain string) (Policy, Outcome, bool) {
	r := c.Lookup(ctx, domain)
	return r.Policy, r.Outcome, r.OK
}

// Lookup is Get with the error that explains a failure outcome.
func (c *Cache) Lookup(ctx context.Context, domain string) Discovery {
	d, err := normalizeDomain(domain)
	if err != nil {
		r := Discovery{Outcome: OutcomeNoPolicy, Err: err}
		c.m.lookedUp(r.Outcome)
		return r
	}
	for {
		c.mu.Lock()
		if fl := c.flights[d]; fl != nil {
			fl.waiters++
			c.mu.Unlock()
			select {
			case <-fl.done:
				if fl.retry && ctx.Err() == nil {
					continue
				}
				c.m.lookedUp(fl.res.Outcome)
				return fl.res
			case <-ctx.Done():
				c.mu.Lock()
				fl.waiters--
				p, has := c.current(d, c.now())
				c.mu.Unlock()
				r := Discovery{Outcome: OutcomeTimeout, Err: ctx.Err()}
				if has {
					r.Policy, r.OK = p, p.Mode != ModeNone
				}
				c.m.lookedUp(r.Outcome)
				return r
			}
		}
		fl := &flight{done: make(chan struct{})}
		c.flights[d] = fl
		c.mu.Unlock()

		r := c.resolve(ctx, d)

		c.mu.Lock()
		delete(c.flights, d)
		fl.res, fl.retry = r, ctx.Err() != nil
		c.mu.Unlock()
		close(fl.done)
		c.m.lookedUp(r.Outcome)
		return r
	}
}

// resolve does one lookup of d; it runs alone for d (single flight).
func (c *Cache) resolve(ctx context.Context, d string) (r Discovery) {
	c.mu.Lock()
	cached, has := c.current(d, c.now())
	c.mu.Unlock()
	rec, err := c.f.Discover(ctx, d)
	defer func() { r.TTL = rec.TTL }() // whatever the outcome
	// answer returns the cached policy under the "_cached" variant of a
	// failure outcome when there is one, else nothing under failed.
	answer := func(failed, withCache Outcome, err error) Discovery {
		if has {
			return Discovery{Policy: cached, Outcome: withCache, OK: cached.Mode != ModeNone, Err: err}
		}
		return Discovery{Outcome: failed, Err: err}
	}
	id, found := rec.ID, rec.Found
	switch {
	case errors.Is(err, ErrInvalidRecord) || errors.Is(err, ErrMultipleRecords):
		return answer(OutcomeInvalidRecord, OutcomeInvalidRecordCached, err)
	case err != nil:
		return answer(OutcomeDNSFailure, OutcomeDNSFailureCached, err)
	case !found:
		return answer(OutcomeNoPolicy, OutcomeNoRecordCached, nil)
	case has && cached.ID == id && !c.refreshDue(cached):
		return Discovery{Policy: cached, Outcome: OutcomeCached, OK: cached.Mode != ModeNone}
	}
	fetchFailed := func(err error) Discovery {
		if !has && (errors.Is(err, ErrInvalidPolicy) || errors.Is(err, ErrTooLarge)) {
			return Discovery{Outcome: OutcomeInvalidPolicy, Err: err}
		}
		return answer(OutcomeFetchFailed, OutcomeFetchFailedCached, err)
	}

	c.mu.Lock()
	if e, ok := c.entries.Peek(d); ok && e.failErr != nil && e.failID == id && c.now().Before(e.failAt.Add(c.Backoff)) {
		err := e.failErr
		c.mu.Unlock()
		return fetchFailed(err)
	}
	c.mu.Unlock()

	p, err := c.f.Fetch(ctx, d)
	c.m.fetched(FetchResultOf(err))
	if err != nil && ctx.Err() != nil {
		return fetchFailed(err) // the caller giving up says nothing about the domain
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries.Get(d)
	if !ok {
		e = &entry{}
		c.entries.Add(d, e)
	}
	if err != nil {
		e.failID, e.failAt, e.failErr = id, now, err
		return fetchFailed(err)
	}
	p.ID, p.FetchedAt = id, now
	*e = entry{policy: p, has: true}
	return Discovery{Policy: p, Outcome: OutcomeFetched, OK: p.Mode != ModeNone}
}

// current returns d's cached policy if it has not expired at now, and
// forgets it if it has. c.mu must be held.
func (c *Cache) current(d string, now time.Time) (Policy, bool) {
	e, ok := c.entries.Get(d)
	if !ok || !e.has {
		return Policy{}, false
	}
	if !now.Before(e.policy.Expires()) {
		e.policy, e.has = Policy{}, false
		if e.failErr == nil {
			c.entries.Remove(d)
		}
		return Policy{}, false
	}
	return e.policy, true
}

// refreshDue reports whether a cached policy is old enough to fetch again
// although its id has not changed: after a day, or half its max_age if
// that is shorter (RFC 8461 section 3.3).
func (c *Cache) refreshDue(p Policy) bool {
	return c.now().Sub(p.FetchedAt) >= min(maxRefreshAge, p.MaxAge/2)
}

// countByMode counts the unexpired cached policies by mode, for the
// policies gauge.
func (c *Cache) countByMode() map[Mode]int {
	now := c.now()
	n := make(map[Mode]int)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries.Values() {
		if e.has && now.Before(e.policy.Expires()) {
			n[e.policy.Mode]++
		}
	}
	return n
}

// Len returns how many domains the cache remembers (with a policy or a
// recent failure).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries.Len()
}
