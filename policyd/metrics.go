package policyd

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the daemon's Prometheus collectors. It is created once by
// main with the registry it owns and handed to every server and the engine.
// Label values are bounded sets (protocol names, results): never a domain or
// an address, which would grow without limit.
type Metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	connsOpen     *prometheus.GaugeVec
	connsRejected *prometheus.CounterVec
	panics        *prometheus.CounterVec
	reloads       *prometheus.CounterVec
	configLoaded  prometheus.Gauge
	configRules   prometheus.Gauge
}

// Request results, the values of the "result" label.
const (
	ResultOK        = "ok"
	ResultNotFound  = "notfound"
	ResultTemp      = "temp"
	ResultPerm      = "perm"
	ResultMalformed = "malformed" // a request that could not be parsed
	ResultOversized = "oversized" // a request over the size limit
)

// NewMetrics creates and registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tlspolicyd_requests_total",
			Help: "Requests answered, by wire protocol and result.",
		}, []string{"protocol", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tlspolicyd_request_duration_seconds",
			Help:    "Time from a complete request to its reply being written, by wire protocol.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5, 1, 5, 30},
		}, []string{"protocol"}),
		connsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tlspolicyd_connections_open",
			Help: "Client connections currently open, by wire protocol.",
		}, []string{"protocol"}),
		connsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tlspolicyd_connections_rejected_total",
			Help: "Connections closed at once because the connection cap was reached.",
		}, []string{"protocol"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tlspolicyd_panics_total",
			Help: "Panics recovered while serving a connection (each closes only that connection).",
		}, []string{"protocol"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tlspolicyd_config_reloads_total",
			Help: "Configuration reloads (SIGHUP), by result: success or failure.",
		}, []string{"result"}),
		configLoaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tlspolicyd_config_last_load_timestamp_seconds",
			Help: "Unix time at which the configuration now in force was loaded.",
		}),
		configRules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tlspolicyd_config_rules",
			Help: "Destination rules in the configuration now in force.",
		}),
	}
	reg.MustRegister(m.requests, m.duration, m.connsOpen, m.connsRejected, m.panics,
		m.reloads, m.configLoaded, m.configRules)
	// Show both reload results from the start, so that alerts on
	// increase(...{result="failure"}) have a series to work on.
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	return m
}

// ConfigLoaded records a configuration taking effect.
func (m *Metrics) ConfigLoaded(at time.Time, rules int) {
	m.configLoaded.Set(float64(at.UnixNano()) / 1e9)
	m.configRules.Set(float64(rules))
}

// Reload counts a SIGHUP reload by outcome.
func (m *Metrics) Reload(ok bool) {
	if ok {
		m.reloads.WithLabelValues("success").Inc()
	} else {
		m.reloads.WithLabelValues("failure").Inc()
	}
}

// ProtocolMetrics are one protocol's collectors, resolved once so that the
// request path only does atomic adds.
type ProtocolMetrics struct {
	results  map[string]prometheus.Counter
	duration prometheus.Observer
	Open     prometheus.Gauge
	Rejected prometheus.Counter
	Panics   prometheus.Counter
}

// Protocol returns the collectors for one wire protocol.
func (m *Metrics) Protocol(name string) *ProtocolMetrics {
	p := &ProtocolMetrics{
		results:  make(map[string]prometheus.Counter),
		duration: m.duration.WithLabelValues(name),
		Open:     m.connsOpen.WithLabelValues(name),
		Rejected: m.connsRejected.WithLabelValues(name),
		Panics:   m.panics.WithLabelValues(name),
	}
	for _, r := range []string{ResultOK, ResultNotFound, ResultTemp, ResultPerm, ResultMalformed, ResultOversized} {
		p.results[r] = m.requests.WithLabelValues(name, r)
	}
	return p
}

// Request counts one answered request and its duration. result is one of
// the Result constants.
func (p *ProtocolMetrics) Request(result string, d time.Duration) {
	if c, ok := p.results[result]; ok {
		c.Inc()
	}
	p.duration.Observe(d.Seconds())
}

// StatusResult maps a lookup status to its result label.
func StatusResult(s Status) string {
	return s.String()
}
