package mtasts

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// lookup does c.Lookup and checks its outcome, whether a policy applies
// and, if one is returned, its mode and id.
func lookup(t *testing.T, c *Cache, domain string, outcome Outcome, ok bool, mode Mode, id string) Discovery {
	t.Helper()
	r := c.Lookup(testContext(t), domain)
	if r.Outcome != outcome || r.OK != ok {
		t.Fatalf("Lookup(%s) = %v ok=%v (err %v), want %v ok=%v", domain, r.Outcome, r.OK, r.Err, outcome, ok)
	}
	if r.Policy.Version != "" && (r.Policy.Mode != mode || r.Policy.ID != id) {
		t.Fatalf("Lookup(%s) policy %v, want mode %v id %q", domain, r.Policy, mode, id)
	}
	return r
}

// newCache returns a cache over w with a clock and fresh metrics.
func newCache(t *testing.T, w *world) (*Cache, *clock, *Metrics, *prometheus.Registry) {
	clk := newClock()
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	return NewCache(w.fetcher(clk), 100, clk.Now, m), clk, m, reg
}

func TestCacheModes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "enforce.test", "testing.test", "none.test")
	w.set("testing.test", answer{body: testingBody})
	w.set("none.test", answer{body: noneBody})
	c, clk, m, _ := newCache(t, w)

	r := lookup(t, c, "enforce.test", OutcomeFetched, true, ModeEnforce, "1")
	if !slices.Equal(r.Policy.MX, []string{"mx1.example.test", "*.mx.example.test"}) || !r.Policy.FetchedAt.Equal(clk.Now()) {
		t.Errorf("policy %+v", r.Policy)
	}
	if got := r.Policy.PostfixMatch(); got != "mx1.example.test:.mx.example.test" {
		t.Errorf("PostfixMatch = %q", got)
	}
	lookup(t, c, "testing.test", OutcomeFetched, true, ModeTesting, "1")
	// Mode none: reported, applies nothing.
	lookup(t, c, "none.test", OutcomeFetched, false, ModeNone, "1")

	clk.Advance(time.Hour)
	lookup(t, c, "ENFORCE.test.", OutcomeCached, true, ModeEnforce, "1")
	lookup(t, c, "testing.test", OutcomeCached, true, ModeTesting, "1")
	lookup(t, c, "none.test", OutcomeCached, false, ModeNone, "1")
	if p, o, ok := c.Get(testContext(t), "enforce.test"); o != OutcomeCached || !ok || p.Mode != ModeEnforce {
		t.Errorf("Get = %v, %v, %v", p, o, ok)
	}
	for _, d := range []string{"enforce.test", "testing.test", "none.test"} {
		if n := w.hitsOf(d); n != 1 {
			t.Errorf("%s fetched %d times, want once", d, n)
		}
	}
	checkGauge(t, m, map[Mode]int{ModeNone: 1, ModeTesting: 1, ModeEnforce: 1})
	if got := testutil.ToFloat64(m.fetches.WithLabelValues("ok")); got != 3 {
		t.Errorf("fetches{ok} = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.lookups.WithLabelValues("cached")); got != 4 {
		t.Errorf("lookups{cached} = %v, want 4", got)
	}
}

// checkGauge checks tlspolicyd_mtasts_policies.
func checkGauge(t *testing.T, m *Metrics, want map[Mode]int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# HELP tlspolicyd_mtasts_policies Unexpired MTA-STS policies in the cache, by mode.\n# TYPE tlspolicyd_mtasts_policies gauge\n")
	for _, mode := range Modes() {
		b.WriteString("tlspolicyd_mtasts_policies{mode=\"" + mode.String() + "\"} " + strconv.Itoa(want[mode]) + "\n")
	}
	if err := testutil.CollectAndCompare(m.policies, strings.NewReader(b.String())); err != nil {
		t.Error(err)
	}
}

// A new id is fetched; the same id is not, until the policy is due for
// refresh (a day, or half of max_age if shorter).
func TestCacheIDChange(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	c, clk, _, _ := newCache(t, w)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")
	lookup(t, c, "example.test", OutcomeCached, true, ModeEnforce, "1")

	w.setTXT("example.test", "v=STSv1; id=2")
	w.set("example.test", answer{body: "version: STSv1\nmode: enforce\nmx: new.example.test\nmax_age: 86400\n"})
	r := lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "2")
	if !slices.Equal(r.Policy.MX, []string{"new.example.test"}) {
		t.Errorf("MX = %q after the id changed", r.Policy.MX)
	}
	lookup(t, c, "example.test", OutcomeCached, true, ModeEnforce, "2")
	if n := w.hitsOf("example.test"); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}

	clk.Advance(12*time.Hour - time.Second) // max_age is a day: refresh at half
	lookup(t, c, "example.test", OutcomeCached, true, ModeEnforce, "2")
	clk.Advance(time.Second)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "2")
	if n := w.hitsOf("example.test"); n != 3 {
		t.Errorf("%d fetches, want 3 (a refresh)", n)
	}
}

// A policy with a long max_age is refreshed daily (RFC 8461 section 3.3).
func TestCacheDailyRefresh(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	w.set("example.test", answer{body: "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 31557600\n"})
	c, clk, _, _ := newCache(t, w)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")
	clk.Advance(24*time.Hour - time.Second)
	lookup(t, c, "example.test", OutcomeCached, true, ModeEnforce, "1")
	clk.Advance(time.Second)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")
}

// A failed fetch keeps the cached policy applying until it expires, and not
// a moment longer; the failure is retried only after Backoff.
func TestCacheFetchFailureKeepsCached(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	c, clk, m, _ := newCache(t, w)
	first := lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")

	w.setTXT("example.test", "v=STSv1; id=2")
	w.set("example.test", answer{status: 500})
	r := lookup(t, c, "example.test", OutcomeFetchFailedCached, true, ModeEnforce, "1")
	if !errors.Is(r.Err, ErrHTTP) || !slices.Equal(r.Policy.MX, first.Policy.MX) {
		t.Errorf("Lookup = %+v, want the cached policy and the HTTP error", r)
	}
	// Within Backoff the host is not asked again.
	lookup(t, c, "example.test", OutcomeFetchFailedCached, true, ModeEnforce, "1")
	if n := w.hitsOf("example.test"); n != 2 {
		t.Errorf("%d fetches, want 2 (backoff)", n)
	}
	clk.Advance(c.Backoff)
	lookup(t, c, "example.test", OutcomeFetchFailedCached, true, ModeEnforce, "1")
	if n := w.hitsOf("example.test"); n != 3 {
		t.Errorf("%d fetches, want 3 (after backoff)", n)
	}
	if got := testutil.ToFloat64(m.fetches.WithLabelValues("http_error")); got != 2 {
		t.Errorf("fetches{http_error} = %v, want 2", got)
	}

	// The policy expires a day after it was fetched.
	clk.Advance(24*time.Hour - c.Backoff - time.Second)
	lookup(t, c, "example.test", OutcomeFetchFailedCached, true, ModeEnforce, "1")
	clk.Advance(time.Second)
	r = lookup(t, c, "example.test", OutcomeFetchFailed, false, 0, "")
	if r.Policy.Version != "" {
		t.Errorf("expired policy returned: %v", r.Policy)
	}
	checkGauge(t, m, nil)

	// Once the host is back, the new policy is fetched.
	w.set("example.test", answer{body: testingBody})
	clk.Advance(c.Backoff)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeTesting, "2")
}

// A fetch that fails with nothing cached gives no policy, and is retried
// only after Backoff, or at once for a new id.
func TestCacheFetchFailureNoCache(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	w.set("example.test", answer{status: 404})
	c, clk, _, _ := newCache(t, w)
	r := lookup(t, c, "example.test", OutcomeFetchFailed, false, 0, "")
	if !errors.Is(r.Err, ErrHTTP) || r.Policy.Version != "" {
		t.Errorf("Lookup = %+v", r)
	}
	lookup(t, c, "example.test", OutcomeFetchFailed, false, 0, "")
	if n := w.hitsOf("example.test"); n != 1 {
		t.Errorf("%d fetches within backoff, want 1", n)
	}
	w.setTXT("example.test", "v=STSv1; id=2")
	lookup(t, c, "example.test", OutcomeFetchFailed, false, 0, "")
	if n := w.hitsOf("example.test"); n != 2 {
		t.Errorf("%d fetches after an id change, want 2", n)
	}
	w.set("example.test", answer{body: enforceBody})
	clk.Advance(c.Backoff - time.Second)
	lookup(t, c, "example.test", OutcomeFetchFailed, false, 0, "")
	clk.Advance(time.Second)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "2")
}

// Invalid and oversized policies are refused; a cached policy still applies.
func TestCacheInvalidPolicy(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "bad.test", "big.test", "cached.test")
	w.set("bad.test", answer{body: "version: STSv1\nmode: enforce\nmax_age: 60\n"})
	w.set("big.test", answer{body: enforceBody + "x: " + strings.Repeat("y", MaxPolicySize)})
	c, _, m, _ := newCache(t, w)
	r := lookup(t, c, "bad.test", OutcomeInvalidPolicy, false, 0, "")
	if !errors.Is(r.Err, ErrInvalidPolicy) {
		t.Errorf("err = %v", r.Err)
	}
	r = lookup(t, c, "big.test", OutcomeInvalidPolicy, false, 0, "")
	if !errors.Is(r.Err, ErrTooLarge) {
		t.Errorf("err = %v", r.Err)
	}
	lookup(t, c, "cached.test", OutcomeFetched, true, ModeEnforce, "1")
	w.setTXT("cached.test", "v=STSv1; id=2")
	w.set("cached.test", answer{body: "version: STSv1\nmode: enforce\nmx: *.*.example.test\nmax_age: 60\n"})
	r = lookup(t, c, "cached.test", OutcomeFetchFailedCached, true, ModeEnforce, "1")
	if !errors.Is(r.Err, ErrInvalidPolicy) {
		t.Errorf("err = %v", r.Err)
	}
	for res, want := range map[string]float64{"invalid": 2, "too_large": 1, "ok": 1} {
		if got := testutil.ToFloat64(m.fetches.WithLabelValues(res)); got != want {
			t.Errorf("fetches{%s} = %v, want %v", res, got, want)
		}
	}
}

// No record: no policy and no fetch; a cached policy still applies until it
// expires (RFC 8461 section 3.3).
func TestCacheNoRecord(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	w.dns.AddA("other.test", "192.0.2.1")
	c, clk, _, _ := newCache(t, w)
	lookup(t, c, "nowhere.test", OutcomeNoPolicy, false, 0, "") // NXDOMAIN
	lookup(t, c, "other.test", OutcomeNoPolicy, false, 0, "")   // NODATA
	if c.Len() != 0 {
		t.Errorf("%d domains remembered for no policy", c.Len())
	}

	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")
	w.dns.Remove("_mta-sts.example.test", dns.TypeANY)
	lookup(t, c, "example.test", OutcomeNoRecordCached, true, ModeEnforce, "1")
	w.dns.SetRcode("_mta-sts.example.test", dns.RcodeNameError)
	lookup(t, c, "example.test", OutcomeNoRecordCached, true, ModeEnforce, "1")
	clk.Advance(24 * time.Hour)
	lookup(t, c, "example.test", OutcomeNoPolicy, false, 0, "")
	if n := w.hitsOf("example.test"); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}

func TestCacheDNSFailure(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	c, _, _, _ := newCache(t, w)
	w.dns.SetRcode("_mta-sts.example.test", dns.RcodeServerFailure)
	r := lookup(t, c, "example.test", OutcomeDNSFailure, false, 0, "")
	if !errors.Is(r.Err, ErrDNS) {
		t.Errorf("err = %v", r.Err)
	}
	w.dns.SetRcode("_mta-sts.example.test", dns.RcodeSuccess)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")
	w.dns.SetRcode("_mta-sts.example.test", dns.RcodeServerFailure)
	lookup(t, c, "example.test", OutcomeDNSFailureCached, true, ModeEnforce, "1")
}

// Several MTA-STS records, or an invalid one, mean no policy is available
// (RFC 8461 section 3.1), but a cached policy still applies.
func TestCacheInvalidRecord(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	c, _, _, _ := newCache(t, w)
	w.setTXT("example.test", "v=STSv1; id=1", "v=STSv1; id=2")
	r := lookup(t, c, "example.test", OutcomeInvalidRecord, false, 0, "")
	if !errors.Is(r.Err, ErrMultipleRecords) {
		t.Errorf("err = %v", r.Err)
	}
	w.setTXT("example.test", "v=STSv1; id=1")
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")
	w.setTXT("example.test", "v=STSv1; id=bad-id")
	r = lookup(t, c, "example.test", OutcomeInvalidRecordCached, true, ModeEnforce, "1")
	if !errors.Is(r.Err, ErrInvalidRecord) {
		t.Errorf("err = %v", r.Err)
	}
	if n := w.hitsOf("example.test"); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}

// A domain withdrawing MTA-STS publishes mode none under a new id: the
// cached enforce policy is replaced, and none is cached in its place so
// that the domain is not fetched on every lookup (RFC 8461 section 8.3).
func TestCacheNoneReplacesEnforce(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	c, _, m, _ := newCache(t, w)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")
	checkGauge(t, m, map[Mode]int{ModeEnforce: 1})
	w.setTXT("example.test", "v=STSv1; id=2")
	w.set("example.test", answer{body: noneBody})
	lookup(t, c, "example.test", OutcomeFetched, false, ModeNone, "2")
	lookup(t, c, "example.test", OutcomeCached, false, ModeNone, "2")
	checkGauge(t, m, map[Mode]int{ModeNone: 1})
	// Even if the record then goes, enforce does not come back.
	w.dns.Remove("_mta-sts.example.test", dns.TypeANY)
	lookup(t, c, "example.test", OutcomeNoRecordCached, false, ModeNone, "2")
	if n := w.hitsOf("example.test"); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

// Concurrent lookups of one domain share one TXT query and one fetch.
func TestCacheSingleFlight(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	release := make(chan struct{})
	w.set("example.test", answer{body: enforceBody, release: release})
	w.hit = make(chan string, 10)
	c, _, _, _ := newCache(t, w)
	const n = 8
	results := make(chan Discovery, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { results <- c.Lookup(testContext(t), "example.test") })
	}
	<-w.hit // one lookup is fetching; wait for the others to queue behind it
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		fl := c.flights["example.test"]
		return fl != nil && fl.waiters == n-1
	})
	close(release)
	wg.Wait()
	close(results)
	for r := range results {
		if r.Outcome != OutcomeFetched || !r.OK || r.Policy.ID != "1" {
			t.Errorf("a lookup got %v %+v", r.Outcome, r.Policy)
		}
	}
	if got := w.hitsOf("example.test"); got != 1 {
		t.Errorf("%d fetches, want 1", got)
	}
	if got := w.dns.Count("_mta-sts.example.test", dns.TypeTXT); got != 1 {
		t.Errorf("%d TXT queries, want 1", got)
	}
}

// waitFor polls cond until it holds, failing the test after a while.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// A lookup stops when its context ends; a timed-out fetch is not held
// against the domain (no backoff), and a waiter whose context ends gets
// the cached policy, if any, under OutcomeTimeout.
func TestCacheContext(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	c, _, _, _ := newCache(t, w)
	lookup(t, c, "example.test", OutcomeFetched, true, ModeEnforce, "1")
	w.setTXT("example.test", "v=STSv1; id=2")
	w.set("example.test", answer{block: true})
	w.hit = make(chan string, 10)

	leaderCtx, cancelLeader := context.WithCancel(testContext(t))
	leader := make(chan Discovery, 1)
	go func() { leader <- c.Lookup(leaderCtx, "example.test") }()
	<-w.hit

	// A waiter gives up first.
	waiterCtx, cancelWaiter := context.WithCancel(testContext(t))
	waiter := make(chan Discovery, 1)
	go func() { waiter <- c.Lookup(waiterCtx, "example.test") }()
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		fl := c.flights["example.test"]
		return fl != nil && fl.waiters == 1
	})
	cancelWaiter()
	if r := <-waiter; r.Outcome != OutcomeTimeout || !r.OK || r.Policy.ID != "1" || !errors.Is(r.Err, context.Canceled) {
		t.Errorf("waiter got %v ok=%v %v (%v)", r.Outcome, r.OK, r.Policy, r.Err)
	}

	cancelLeader()
	r := <-leader
	if r.Outcome != OutcomeFetchFailedCached || r.Policy.ID != "1" || !errors.Is(r.Err, ErrTimeout) {
		t.Errorf("leader got %v %v (%v)", r.Outcome, r.Policy, r.Err)
	}
	// No backoff: the next lookup fetches again at once.
	w.set("example.test", answer{body: testingBody})
	lookup(t, c, "example.test", OutcomeFetched, true, ModeTesting, "2")
}

// When the leader's context ends, a waiter whose context is still live
// looks up itself rather than taking the leader's failure.
func TestCacheWaiterRetries(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	release := make(chan struct{})
	w.set("example.test", answer{body: enforceBody, release: release})
	w.hit = make(chan string, 10)
	c, _, _, _ := newCache(t, w)

	leaderCtx, cancelLeader := context.WithCancel(testContext(t))
	leader := make(chan Discovery, 1)
	go func() { leader <- c.Lookup(leaderCtx, "example.test") }()
	<-w.hit
	waiter := make(chan Discovery, 1)
	go func() { waiter <- c.Lookup(testContext(t), "example.test") }()
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		fl := c.flights["example.test"]
		return fl != nil && fl.waiters == 1
	})
	cancelLeader()
	if r := <-leader; r.Outcome != OutcomeFetchFailed {
		t.Errorf("leader got %v (%v)", r.Outcome, r.Err)
	}
	<-w.hit // the waiter's own fetch
	close(release)
	if r := <-waiter; r.Outcome != OutcomeFetched || !r.OK {
		t.Errorf("waiter got %v (%v)", r.Outcome, r.Err)
	}
}

// The cache holds at most its size in domains, dropping the least recently
// used; the gauge counts what it holds.
func TestCacheSize(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "a.test", "b.test", "c.test")
	clk := newClock()
	m := NewMetrics(prometheus.NewPedanticRegistry())
	c := NewCache(w.fetcher(clk), 2, clk.Now, m)
	lookup(t, c, "a.test", OutcomeFetched, true, ModeEnforce, "1")
	lookup(t, c, "b.test", OutcomeFetched, true, ModeEnforce, "1")
	lookup(t, c, "a.test", OutcomeCached, true, ModeEnforce, "1") // b is now the oldest
	lookup(t, c, "c.test", OutcomeFetched, true, ModeEnforce, "1")
	if c.Len() != 2 {
		t.Errorf("Len = %d, want 2", c.Len())
	}
	checkGauge(t, m, map[Mode]int{ModeEnforce: 2})
	lookup(t, c, "a.test", OutcomeCached, true, ModeEnforce, "1")
	lookup(t, c, "b.test", OutcomeFetched, true, ModeEnforce, "1")
	// Expired policies are not counted.
	clk.Advance(25 * time.Hour)
	checkGauge(t, m, nil)
}

func TestCacheInvalidDomain(t *testing.T) {
	t.Parallel()
	c := NewCache(&Fetcher{Resolver: nilResolver{}}, 0, nil, nil)
	for _, d := range []string{"", "[192.0.2.1]", "example.test:25", "a b"} {
		if _, o, ok := c.Get(context.Background(), d); o != OutcomeNoPolicy || ok {
			t.Errorf("Get(%q) = %v, %v", d, o, ok)
		}
	}
	if r := c.Lookup(context.Background(), "[x]"); !errors.Is(r.Err, ErrInvalidDomain) {
		t.Errorf("err = %v", r.Err)
	}
}

// Metrics register under their names with every label present, and a nil
// *Metrics is usable.
func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	NewMetrics(reg)
	n, err := testutil.GatherAndCount(reg, "tlspolicyd_mtasts_fetches_total", "tlspolicyd_mtasts_lookups_total", "tlspolicyd_mtasts_policies")
	if err != nil {
		t.Fatal(err)
	}
	if want := len(FetchResults()) + len(Outcomes()) + len(Modes()); n != want {
		t.Errorf("%d series, want %d", n, want)
	}
	var m *Metrics
	m.fetched(FetchOK)
	m.lookedUp(OutcomeCached)
	m.setSource(nil)
}

func TestOutcomeNames(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, o := range Outcomes() {
		s := o.String()
		if s == "" || strings.HasPrefix(s, "Outcome(") || seen[s] {
			t.Errorf("outcome %d named %q", o, s)
		}
		seen[s] = true
	}
	if got := Outcome(200).String(); got != "Outcome(200)" {
		t.Errorf("unknown outcome: %q", got)
	}
}
