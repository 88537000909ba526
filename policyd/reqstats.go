package policyd

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
// on every request, which measured at about a tenth of a lookup's CPU
// time. requestStats keeps the same counts in stripes instead: each
// connection updates its own stripe, and a scrape adds the stripes up.

// numStripes spreads connections over this many sets of counters.
const numStripes = 8

// durationBuckets are the request duration histogram's upper bounds, in
// seconds: lookups answered from memory take microseconds; one that waited
// for a probe takes up to probe.wait.
var durationBuckets = []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5, 1, 5, 30}

// stripe is one set of counters, padded so that stripes used by different
// CPUs do not share a cache line.
type stripe struct {
	results [numResults]atomic.Uint64
	buckets [17]atomic.Uint64 // len(durationBuckets)+1: the last is +Inf
	sumNS   atomic.Uint64
	_       [64]byte
}

// requestStats counts one protocol's requests by result, and their
// durations.
type requestStats struct {
	stripes    [numStripes]stripe
	boundsNS   []int64 // durationBuckets in nanoseconds
	nextStripe atomic.Uint32
}

// Stripe assigns a new connection its stripe, round robin.
func (s *requestStats) Stripe() int {
	return int(s.nextStripe.Add(1) % numStripes)
}

// Request counts one request on a stripe: its result and its duration.
func (s *requestStats) Request(stripe int, r Result, d time.Duration) {
	st := &s.stripes[stripe%numStripes]
	st.results[r].Add(1)
	i := 0
	for i < len(s.boundsNS) && int64(d) > s.boundsNS[i] {
		i++
	}
	st.buckets[i].Add(1)
	st.sumNS.Add(uint64(max(d, 0)))
}

// Count returns the number of requests with result r.
func (s *requestStats) Count(r Result) uint64 {
	var n uint64
	for i := range s.stripes {
		n += s.stripes[i].results[r].Load()
	}
	return n
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
	s := &requestStats{boundsNS: make([]int64, len(durationBuckets))}
	for i, b := range durationBuckets {
		s.boundsNS[i] = int64(b * 1e9)
	}
	c.protocols[name] = s
	return s
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
		for r := Result(0); r < numResults; r++ {
			ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(s.Count(r)), name, r.String())
		}
		var count, sumNS uint64
		cumulative := make(map[float64]uint64, len(durationBuckets))
		for i, b := range durationBuckets {
			for j := range s.stripes {
				count += s.stripes[j].buckets[i].Load()
			}
			cumulative[b] = count
		}
		for j := range s.stripes {
			count += s.stripes[j].buckets[len(durationBuckets)].Load()
			sumNS += s.stripes[j].sumNS.Load()
		}
		ch <- prometheus.MustNewConstHistogram(c.duration, count, float64(sumNS)/1e9, cumulative, name)
	}
}
