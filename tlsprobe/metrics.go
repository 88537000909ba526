package tlsprobe

import (
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
	cache          *prometheus.CounterVec
	// cacheResults are cache's children, resolved once: a lookup that hits
	// the cache is on the daemon's hot path, and WithLabelValues hashes the
	// label and takes the vector's lock on every call.
	cacheResults [numCacheResults]prometheus.Counter
	evictions    prometheus.Counter
	entries      prometheus.Gauge
	dropped      prometheus.Counter
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
		cache: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_probe_cache_requests_total",
			Help: "Probe cache lookups by result: hit (fresh), stale (hit, refresh started), miss."}, []string{"result"}),
		evictions: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_probe_cache_evictions_total",
			Help: "Probe results dropped from the cache (expired or pushed out by size)."}),
		entries: f.NewGauge(prometheus.GaugeOpts{Name: "tlspolicyd_probe_cache_entries", Help: "Probe results in the cache."}),
		dropped: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_probe_queue_full_total",
			Help: "Probes not started because the queue of waiting probes was full; those lookups got the floor."}),
	}
	for _, c := range Causes() {
		m.probes.WithLabelValues(c.String())
	}
	for r := range m.cacheResults {
		m.cacheResults[r] = m.cache.WithLabelValues(cacheResult(r).String())
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

func (m *Metrics) cacheLookup(r cacheResult) {
	if m != nil {
		m.cacheResults[r].Inc()
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
