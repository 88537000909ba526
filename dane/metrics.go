package dane

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metric result labels: one per Verdict, except that NoDANE is split into
// "insecure" (DANE does not apply because DNSSEC did not validate something,
// or the resolver is not trusted) and "no_dane" (validated: the domain
// publishes no TLSA records).
const (
	labelDANEOnly    = "dane_only"
	labelMixed       = "mixed"
	labelEncryptOnly = "encrypt_only"
	labelNoDANE      = "no_dane"
	labelInsecure    = "insecure"
	labelTempFail    = "temp_fail"
)

var labels = []string{labelDANEOnly, labelMixed, labelEncryptOnly, labelNoDANE, labelInsecure, labelTempFail}

// Metrics counts DANE lookups. Labels are results, never domain or host
// names, whose number has no bound. A nil *Metrics records nothing.
type Metrics struct {
	lookups *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg:
//
//	tlspolicyd_dane_lookups_total{result="dane_only|mixed|encrypt_only|no_dane|insecure|temp_fail"}
//
// It panics if they are already registered there, as MustRegister does; a
// nil reg (a one-off command such as query) registers nothing.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lookups: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_dane_lookups_total",
			Help: "DANE (RFC 7672) checks of a destination by result: dane_only, mixed (opportunistic dane), encrypt_only (TLSA present but unusable), no_dane (validated: no TLSA), insecure (not DNSSEC-validated, or resolver not trusted), temp_fail."},
			[]string{"result"}),
	}
	for _, l := range labels {
		m.lookups.WithLabelValues(l)
	}
	return m
}

func (m *Metrics) lookup(label string) {
	if m != nil {
		m.lookups.WithLabelValues(label).Inc()
	}
}

// label is the result label for a verdict.
func label(v Verdict, insecure bool) string {
	switch v {
	case DANEOnly:
		return labelDANEOnly
	case MixedDANE:
		return labelMixed
	case EncryptOnly:
		return labelEncryptOnly
	case TempFail:
		return labelTempFail
	}
	if insecure {
		return labelInsecure
	}
	return labelNoDANE
}
