package wire

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics holds the wire protocols' Prometheus collectors: requests by
// result and duration, and connection events. Label values are bounded
// sets (protocol names, results): never a domain or an address, which
// would grow without limit.
type Metrics struct {
	requests      *requestCollector
	connsOpen     *prometheus.GaugeVec
	connsRejected *prometheus.CounterVec
	connsEvicted  *prometheus.CounterVec
	panics        *prometheus.CounterVec
}

// RequestResult is the outcome of one request as the "result" label of
// tlspolicyd_requests_total counts it: the status of an answered lookup,
// or why a request got no lookup at all.
type RequestResult uint8

const (
	ResultOK RequestResult = iota
	ResultNotFound
	ResultTemp
	ResultPerm
	ResultMalformed // a request that could not be parsed
	ResultOversized // a request over the size limit
	numResults
)

var resultNames = [numResults]string{"ok", "notfound", "temp", "perm", "malformed", "oversized"}

func (r RequestResult) String() string { return resultNames[r] }

// resultOf is the result of a lookup answered with status s.
func resultOf(s Status) RequestResult {
	switch s {
	case StatusOK:
		return ResultOK
	case StatusNotFound:
		return ResultNotFound
	case StatusPerm:
		return ResultPerm
	}
	return ResultTemp
}

// NewMetrics creates and registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{requests: newRequestCollector()}
	reg.MustRegister(m.requests, &answerCollector{
		desc: prometheus.NewDesc("tlspolicyd_answers_total",
			"Table lookups answered, by map and by the level answered (route, notfound, error for the others).",
			[]string{"map", "level"}, nil),
		requests: m.requests,
		always:   []string{"none", "may", "encrypt", "verify", "secure", "dane", "dane-only", "notfound", "error"},
	})
	m.connsOpen = f.NewGaugeVec(prometheus.GaugeOpts{Name: "tlspolicyd_connections_open",
		Help: "Client connections currently open, by wire protocol."}, []string{"protocol"})
	m.connsRejected = f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_connections_rejected_total",
		Help: "New connections closed at once: the listener was at listen.max_connections and no connection was idle."}, []string{"protocol"})
	m.connsEvicted = f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_connections_evicted_total",
		Help: "Idle connections closed to admit a new one: the listener was at listen.max_connections."}, []string{"protocol"})
	m.panics = f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_panics_total",
		Help: "Panics recovered while serving a connection (each closes only that connection)."}, []string{"protocol"})
	return m
}

// ProtocolMetrics are one protocol's collectors, resolved once. Per-request
// counts go to per-connection counters (see requestStats); connection events are
// rare and use ordinary collectors.
type ProtocolMetrics struct {
	*requestStats
	Open     prometheus.Gauge
	Rejected prometheus.Counter // new connections refused
	Evicted  prometheus.Counter // idle connections closed to admit new ones
	Panics   prometheus.Counter
}

// Protocol returns the collectors for one wire protocol.
func (m *Metrics) Protocol(name string) *ProtocolMetrics {
	return &ProtocolMetrics{
		requestStats: m.requests.protocol(name),
		Open:         m.connsOpen.WithLabelValues(name),
		Rejected:     m.connsRejected.WithLabelValues(name),
		Evicted:      m.connsEvicted.WithLabelValues(name),
		Panics:       m.panics.WithLabelValues(name),
	}
}
