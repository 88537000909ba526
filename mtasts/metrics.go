package mtasts

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the package's collectors. Labels are results, outcomes and
// modes, never domain names (their number has no bound). A nil *Metrics
// records nothing.
type Metrics struct {
	fetches  *prometheus.CounterVec
	lookups  *prometheus.CounterVec
	policies *policyCollector
}

// NewMetrics creates the collectors and registers them on reg; a nil reg
// leaves them unregistered.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg) // a nil reg registers nothing
	m := &Metrics{
		fetches: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_mtasts_fetches_total",
			Help: "MTA-STS policy fetches over HTTPS, by result."}, []string{"result"}),
		lookups: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_mtasts_lookups_total",
			Help: "MTA-STS policy cache lookups, by outcome."}, []string{"outcome"}),
		policies: &policyCollector{desc: prometheus.NewDesc("tlspolicyd_mtasts_policies",
			"Unexpired MTA-STS policies in the cache, by mode.", []string{"mode"}, nil)},
	}
	for _, r := range FetchResults() {
		m.fetches.WithLabelValues(r.String())
	}
	for _, o := range Outcomes() {
		m.lookups.WithLabelValues(o.String())
	}
	if reg != nil {
		reg.MustRegister(m.policies)
	}
	return m
}

func (m *Metrics) fetched(r FetchResult) {
	if m != nil {
		m.fetches.WithLabelValues(r.String()).Inc()
	}
}

func (m *Metrics) lookedUp(o Outcome) {
	if m != nil {
		m.lookups.WithLabelValues(o.String()).Inc()
	}
}

// setSource makes the policies gauge count what count returns; the last
// Cache made with these Metrics is the one counted.
func (m *Metrics) setSource(count func() map[Mode]int) {
	if m != nil {
		m.policies.mu.Lock()
		m.policies.count = count
		m.policies.mu.Unlock()
	}
}

// policyCollector computes the policies gauge when scraped, from the cache
// itself: keeping a gauge in step with expiry, eviction and replacement
// would be bookkeeping that can drift.
type policyCollector struct {
	desc  *prometheus.Desc
	mu    sync.Mutex
	count func() map[Mode]int
}

func (p *policyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

func (p *policyCollector) Collect(ch chan<- prometheus.Metric) {
	p.mu.Lock()
	count := p.count
	p.mu.Unlock()
	var n map[Mode]int
	if count != nil {
		n = count()
	}
	for _, mode := range Modes() {
		ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, float64(n[mode]), mode.String())
	}
}
