package fleet

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the fleet's collectors. Only a daemon with state.redis
// registers them: one alone claims no fleet.
type Metrics struct {
	up        prometheus.Gauge
	lastSync  prometheus.Gauge
	ops       *prometheus.CounterVec
	errors    *prometheus.CounterVec
	published *prometheus.CounterVec
	received  *prometheus.CounterVec
	leases    *prometheus.CounterVec
	dropped   prometheus.Counter
	invalid   prometheus.Counter
}

// NewMetrics registers the fleet's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		up: f.NewGauge(prometheus.GaugeOpts{Name: "tlspolicyd_fleet_redis_up",
			Help: "1 if the last operation on the fleet's Redis succeeded, else 0 (the daemon answers from memory)."}),
		lastSync: f.NewGauge(prometheus.GaugeOpts{Name: "tlspolicyd_fleet_last_sync_timestamp_seconds",
			Help: "When this daemon last reconciled its pins and findings with the fleet's Redis."}),
		ops: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_fleet_redis_operations_total",
			Help: "Operations on the fleet's Redis (a pipeline counts once), by what they were for."}, []string{"op"}),
		errors: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_fleet_redis_errors_total",
			Help: "Failed operations on the fleet's Redis, by what they were for."}, []string{"op"}),
		published: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_fleet_messages_published_total",
			Help: "Changes this daemon published to the fleet, by kind."}, []string{"kind"}),
		received: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_fleet_messages_received_total",
			Help: "Changes received from the other daemons of the fleet, by kind."}, []string{"kind"}),
		leases: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_fleet_probe_leases_total",
			Help: "Probes by who ran them: held (this daemon took the lease and probed), waited (another held it), local (Redis could not be asked)."},
			[]string{"result"}),
		dropped: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_fleet_queue_dropped_total",
			Help: "Changes not queued for Redis because the queue was full (sent at the next full comparison)."}),
		invalid: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_fleet_invalid_values_total",
			Help: "Values read from the fleet's Redis that were too large or did not decode, and were ignored."}),
	}
	for _, op := range []string{"write", "sync", "lease"} {
		m.ops.WithLabelValues(op)
		m.errors.WithLabelValues(op)
	}
	for _, k := range []string{"pin", "findings", "decision"} {
		m.published.WithLabelValues(k)
		m.received.WithLabelValues(k)
	}
	for _, r := range []string{"held", "waited", "local"} {
		m.leases.WithLabelValues(r)
	}
	return m
}
