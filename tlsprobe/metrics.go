package tlsprobe

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the prober's and the cache's collectors. Labels are causes
// and results, never domain names. A nil *Metrics records nothing.
type Metrics struct {
	probes         *prometheus.CounterVec
	duration       prometheus.Histogram
	inFlight       prometheus.Gauge
	privateRefused prometheus.Counter
	// lookups is tlspolicyd_probe_cache_requests_total, read from the
	// cache's own counters at scrape time (see lookupCounter).
	lookups   *lookupCollector
	evictions prometheus.Counter
	entries   prometheus.Gauge
	dropped   prometheus.Counter
	// MX host results (see Hosts).
	hostProbes  *prometheus.CounterVec
	hostResults *prometheus.CounterVec
	shared      prometheus.Counter
	reg         prometheus.Registerer
}

// NewMetrics creates and registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		probes: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_probes_total",
			Help: "Completed probes of a destination, by outcome cause (none: every answering MX verified)."}, []string{"cause"}),
		duration: f.NewHistogram(prometheus.HistogramOpts{Name: "tlspolicyd_probe_duration_seconds",
			Help:    "Time to probe one destination (all its MX hosts).",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60}}),
		inFlight: f.NewGauge(prometheus.GaugeOpts{Name: "tlspolicyd_probes_in_flight", Help: "Probes running now."}),
		privateRefused: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_probe_private_addresses_refused_total",
			Help: "MX addresses not probed because they are loopback, private, link-local or reserved."}),
		lookups: &lookupCollector{desc: prometheus.NewDesc("tlspolicyd_probe_cache_requests_total",
			"Probe cache lookups by result: hit (fresh), stale (hit, refresh started), miss.", []string{"result"}, nil)},
		evictions: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_probe_cache_evictions_total",
			Help: "Probe results dropped from the cache (expired or pushed out by size)."}),
		entries: f.NewGauge(prometheus.GaugeOpts{Name: "tlspolicyd_probe_cache_entries", Help: "Probe results in the cache."}),
		dropped: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_probe_queue_full_total",
			Help: "Probes not started because the queue of waiting probes was full; those lookups got the floor."}),
		hostProbes: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_host_probes_total",
			Help: "STARTTLS sessions with one MX host address, by outcome cause (none: verified)."}, []string{"cause"}),
		hostResults: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_host_results_total",
			Help: "MX host results that destination probes used, by source: shared (another destination's, no connection) or probed."},
			[]string{"source"}),
		shared: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_probes_shared_total",
			Help: "Destination probes answered entirely from MX host results shared with other destinations (no connection)."}),
		reg: reg,
	}
	for _, c := range Causes() {
		m.hostProbes.WithLabelValues(c.String())
	}
	m.hostResults.WithLabelValues("shared")
	m.hostResults.WithLabelValues("probed")
	for _, c := range Causes() {
		m.probes.WithLabelValues(c.String())
	}
	if reg != nil {
		reg.MustRegister(m.lookups)
	}
	return m
}

func (m *Metrics) probeStarted() {
	if m != nil {
		m.inFlight.Inc()
	}
}

func (m *Metrics) probeDone(r Report) {
	if m != nil {
		m.inFlight.Dec()
		m.probes.WithLabelValues(r.Cause.String()).Inc()
		m.duration.Observe(r.Duration.Seconds())
	}
}

// countHosts registers the gauge of host results held, read from n at
// scrape time.
func (m *Metrics) countHosts(n func() int) {
	if m != nil && m.reg != nil {
		promauto.With(m.reg).NewGaugeFunc(prometheus.GaugeOpts{Name: "tlspolicyd_hosts_known",
			Help: "MX host results held for sharing between destinations (one per host name, address and port)."},
			func() float64 { return float64(n()) })
	}
}

func (m *Metrics) hostProbed(r HostReport) {
	if m != nil {
		m.hostProbes.WithLabelValues(r.Cause.String()).Inc()
	}
}

func (m *Metrics) probeShared() {
	if m != nil {
		m.shared.Inc()
	}
}

func (m *Metrics) hostResult(shared bool) {
	if m == nil {
		return
	}
	source := "probed"
	if shared {
		source = "shared"
	}
	m.hostResults.WithLabelValues(source).Inc()
}

func (m *Metrics) refusedPrivate() {
	if m != nil {
		m.privateRefused.Inc()
	}
}

// cacheResult is the outcome of a cache lookup, a label of
// tlspolicyd_probe_cache_requests_total.
type cacheResult uint8

const (
	cacheHit   cacheResult = iota // fresh
	cacheStale                    // a hit; a refresh was started
	cacheMiss
	numCacheResults
)

func (r cacheResult) String() string { return [...]string{"hit", "stale", "miss"}[r] }

// lookupCounter counts a cache's lookups by result. A lookup that hits
// the cache is on the daemon's hot path: a counter shared by every CPU
// would make each hit wait for the cache line holding it, so each shard of
// the cache counts its own lookups, on a cache line of its own, and a
// scrape sums them.
type lookupCounter struct {
	n [numCacheResults]atomic.Uint64
	_ [64 - 8*numCacheResults%64]byte
}

// lookupCollector exports the lookup counts of the cache that uses these
// metrics (a Metrics serves one cache).
type lookupCollector struct {
	desc   *prometheus.Desc
	counts atomic.Pointer[[]lookupCounter]
}

func (c *lookupCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lookupCollector) Collect(ch chan<- prometheus.Metric) {
	var sum [numCacheResults]uint64
	if counts := c.counts.Load(); counts != nil {
		for i := range *counts {
			for r := range sum {
				sum[r] += (*counts)[i].n[r].Load()
			}
		}
	}
	for r, n := range sum {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), cacheResult(r).String())
	}
}

// countLookups makes counts the lookup counters these metrics export.
func (m *Metrics) countLookups(counts []lookupCounter) {
	if m != nil {
		m.lookups.counts.Store(&counts)
	}
}

func (m *Metrics) evicted() {
	if m != nil {
		m.evictions.Inc()
	}
}

func (m *Metrics) setEntries(n int) {
	if m != nil {
		m.entries.Set(float64(n))
	}
}

func (m *Metrics) queueFull() {
	if m != nil {
		m.dropped.Inc()
	}
}
