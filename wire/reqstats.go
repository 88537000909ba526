package wire

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Request counting is on every lookup's path. Prometheus counters and
// histograms are each one set of atomics shared by every goroutine; with
// connections served on both CPUs, those cache lines bounce between cores
// on every request, which measured at several percent of a lookup's CPU
// time. So each connection counts into its own counters, which only its
// goroutine writes; a scrape adds up the open connections' counters and
// the totals of the closed ones.

// durationBuckets are the request duration histogram's upper bounds, in
// seconds: lookups answered from memory take microseconds; one that waited
// for a probe takes up to probe.wait.
var durationBuckets = []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5, 1, 5, 30}

// counters is one set of request counts: one connection's, or the totals
// of closed connections. Atomic so that a scrape may read them while the
// connection writes; uncontended, since one goroutine writes.
type counters struct {
	results [numResults]atomic.Uint64
	buckets [17]atomic.Uint64 // len(durationBuckets)+1: the last is +Inf
	sumNS   atomic.Uint64
	_       [64]byte // keep neighbours off this cache line
}

// ConnStats are one connection's counters.
type ConnStats struct {
	counters
	answers  connAnswers
	overflow *answerTotals // the protocol's, for pairs beyond the connection's slots
	boundsNS []int64
}

// Request counts one request: its result and its duration.
func (c *ConnStats) Request(r RequestResult, d time.Duration) {
	c.results[r].Add(1)
	i := 0
	for i < len(c.boundsNS) && int64(d) > c.boundsNS[i] {
		i++
	}
	c.buckets[i].Add(1)
	c.sumNS.Add(uint64(max(d, 0)))
}

// requestStats counts one protocol's requests by result, and their
// durations.
type requestStats struct {
	boundsNS []int64 // durationBuckets in nanoseconds
	mu       sync.Mutex
	open     map[*ConnStats]struct{}
	closed   counters // totals of connections that have closed
	// answersClosed are the answer counts of closed connections (and
	// overflows).
	answersClosed answerTotals
}

// OpenConn returns the counters of a new connection.
func (s *requestStats) OpenConn() *ConnStats {
	c := &ConnStats{boundsNS: s.boundsNS, overflow: &s.answersClosed}
	s.mu.Lock()
	s.open[c] = struct{}{}
	s.mu.Unlock()
	return c
}

// CloseConn adds a closed connection's counts to the totals.
func (s *requestStats) CloseConn(c *ConnStats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.open, c)
	s.closed.add(&c.counters)
	c.answers.each(s.answersClosed.add)
}

func (t *counters) add(c *counters) {
	for i := range c.results {
		t.results[i].Add(c.results[i].Load())
	}
	for i := range c.buckets {
		t.buckets[i].Add(c.buckets[i].Load())
	}
	t.sumNS.Add(c.sumNS.Load())
}

// snapshot returns the totals of every connection, open or closed.
func (s *requestStats) snapshot() *counters {
	var t counters
	s.mu.Lock()
	defer s.mu.Unlock()
	t.add(&s.closed)
	for c := range s.open {
		t.add(&c.counters)
	}
	return &t
}

// Count returns the number of requests with result r.
func (s *requestStats) Count(r RequestResult) uint64 {
	return s.snapshot().results[r].Load()
}

// requestCollector exposes every protocol's requestStats as
// tlspolicyd_requests_total and tlspolicyd_request_duration_seconds.
type requestCollector struct {
	requests, duration *prometheus.Desc
	mu                 sync.Mutex
	protocols          map[string]*requestStats
}

func newRequestCollector() *requestCollector {
	return &requestCollector{
		requests: prometheus.NewDesc("tlspolicyd_requests_total",
			"Requests answered, by wire protocol and result.", []string{"protocol", "result"}, nil),
		duration: prometheus.NewDesc("tlspolicyd_request_duration_seconds",
			"Time from a request's first byte to its reply being written, by wire protocol.", []string{"protocol"}, nil),
		protocols: make(map[string]*requestStats),
	}
}

// protocol returns the stats of one protocol, creating them once.
func (c *requestCollector) protocol(name string) *requestStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.protocols[name]; s != nil {
		return s
	}
	s := &requestStats{boundsNS: make([]int64, len(durationBuckets)), open: make(map[*ConnStats]struct{})}
	for i, b := range durationBuckets {
		s.boundsNS[i] = int64(b * 1e9)
	}
	c.protocols[name] = s
	return s
}

// all returns every protocol's stats.
func (c *requestCollector) all() []*requestStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*requestStats, 0, len(c.protocols))
	for _, s := range c.protocols {
		out = append(out, s)
	}
	return out
}

func (c *requestCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.requests
	ch <- c.duration
}

func (c *requestCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	names := make([]string, 0, len(c.protocols))
	for name := range c.protocols {
		names = append(names, name)
	}
	c.mu.Unlock()
	sort.Strings(names)
	for _, name := range names {
		c.mu.Lock()
		s := c.protocols[name]
		c.mu.Unlock()
		t := s.snapshot()
		for r := RequestResult(0); r < numResults; r++ {
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(t.results[r].Load()), name, r.String())
		}
		var count uint64
		cumulative := make(map[float64]uint64, len(durationBuckets))
		for i, b := range durationBuckets {
			count += t.buckets[i].Load()
			cumulative[b] = count
		}
		count += t.buckets[len(durationBuckets)].Load()
		ch <- prometheus.MustNewConstHistogram(c.duration, count, float64(t.sumNS.Load())/1e9, cumulative, name)
	}
}
