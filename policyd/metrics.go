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
	requests      *requestCollector
	connsOpen     *prometheus.GaugeVec
	connsRejected *prometheus.CounterVec
	panics        *prometheus.CounterVec
	reloads       *prometheus.CounterVec
	configLoaded  prometheus.Gauge
	configRules   prometheus.Gauge
	decisions     *prometheus.CounterVec
}

// Result is the outcome of one request, the value of the "result" label.
// The first four follow Status, so that a lookup's status converts as is.
type Result uint8

const (
	ResultOK Result = iota
	ResultNotFound
	ResultTemp
	ResultPerm
	ResultMalformed // a request that could not be parsed
	ResultOversized // a request over the size limit
	numResults
)

var resultNames = [numResults]string{"ok", "notfound", "temp", "perm", "malformed", "oversized"}

func (r Result) String() string { return resultNames[r] }

// StatusResult is the result of a lookup that ended with status s.
func StatusResult(s Status) Result { return Result(s) }

// NewMetrics creates and registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: newRequestCollector(),
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
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tlspolicyd_decisions_total",
			Help: "RCPT-time decisions, by sender class (\"default\" for none) and action.",
		}, []string{"class", "action"}),
	}
	reg.MustRegister(m.requests, m.connsOpen, m.connsRejected, m.panics,
		m.reloads, m.configLoaded, m.configRules, m.decisions)
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

// Decision counts one RCPT-time decision. Class names come from the
// configuration, so the label set stays bounded. m may be nil.
func (m *Metrics) Decision(v Verdict) {
	if m == nil {
		return
	}
	class := "default"
	if v.Class != nil {
		class = v.Class.Name
	}
	m.decisions.WithLabelValues(class, v.Action.String()).Inc()
}

// ProtocolMetrics are one protocol's collectors, resolved once. Per-request
// counts go to per-connection counters (see requestStats); connection events are
// rare and use ordinary collectors.
type ProtocolMetrics struct {
	*requestStats
	Open     prometheus.Gauge
	Rejected prometheus.Counter
	Panics   prometheus.Counter
}

// Protocol returns the collectors for one wire protocol.
func (m *Metrics) Protocol(name string) *ProtocolMetrics {
	return &ProtocolMetrics{
		requestStats: m.requests.protocol(name),
		Open:         m.connsOpen.WithLabelValues(name),
		Rejected:     m.connsRejected.WithLabelValues(name),
		Panics:       m.panics.WithLabelValues(name),
	}
}
