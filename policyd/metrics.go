package policyd

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/tlspolicyd/tlspolicyd/internal/buildinfo"
)

// Metrics holds the daemon's own Prometheus collectors (the wire protocols
// and the evidence packages register theirs). main creates the registry and
// the daemon registers on it once. Label values are bounded sets: never a
// domain or an address, which would grow without limit.
type Metrics struct {
	reloads      *prometheus.CounterVec
	configLoaded prometheus.Gauge
	configRules  prometheus.Gauge
	decisions    *prometheus.CounterVec
}

// NewMetrics creates and registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		reloads: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_config_reloads_total",
			Help: "Configuration reloads (SIGHUP), by result: success or failure."}, []string{"result"}),
		configLoaded: f.NewGauge(prometheus.GaugeOpts{Name: "tlspolicyd_config_last_load_timestamp_seconds",
			Help: "Unix time at which the configuration now in force was loaded."}),
		configRules: f.NewGauge(prometheus.GaugeOpts{Name: "tlspolicyd_config_rules",
			Help: "Destination rules in the configuration now in force."}),
		decisions: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_decisions_total",
			Help: "RCPT-time decisions, by sender class (\"default\" for none) and action."}, []string{"class", "action"}),
	}
	build := buildinfo.Read()
	f.NewGauge(prometheus.GaugeOpts{Name: "tlspolicyd_build_info",
		Help:        "The running build: always 1, with its version, VCS revision and Go release as labels.",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision, "goversion": build.GoVersion}}).Set(1)
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

// rcptDecision counts one RCPT-time decision. Class names come from the
// configuration, so the label set stays bounded. m may be nil.
func (m *Metrics) rcptDecision(d RcptDecision) {
	if m == nil {
		return
	}
	class := "default"
	if d.Class != nil {
		class = d.Class.Name
	}
	m.decisions.WithLabelValues(class, d.Action.String()).Inc()
}
