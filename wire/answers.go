package wire

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// tlspolicyd_answers_total counts answered lookups by map and by the
// answer's label (Answer.Label: the level answered, "route", "notfound",
// "error"). Like the request counts it is on every lookup's path, so each
// connection counts into slots of its own; a scrape adds them up.

// connAnswerSlots is how many (map, label) pairs a connection counts
// without a lock; Postfix uses one or two maps per connection.
const connAnswerSlots = 8

// answerCount is the count of one (map, label) pair.
type answerCount struct {
	key answerKey
	n   atomic.Uint64
}

type answerKey struct{ mapName, label string }

// connAnswers are one connection's answer counts: slots filled in order
// by the connection's goroutine, read by scrapes.
type connAnswers struct {
	slots [connAnswerSlots]atomic.Pointer[answerCount]
}

// answerTotals are the counts of closed connections, and of pairs that
// found no free slot on their connection.
type answerTotals struct {
	mu sync.Mutex
	n  map[answerKey]uint64
}

func (t *answerTotals) add(k answerKey, n uint64) {
	t.mu.Lock()
	if t.n == nil {
		t.n = make(map[answerKey]uint64)
	}
	t.n[k] += n
	t.mu.Unlock()
}

// Answer counts one answered lookup of mapName under label ("" counts
// nothing: the engine gives no label to answers for unknown maps, whose
// names come from clients and have no bound).
func (c *ConnStats) Answer(mapName, label string) {
	if label == "" {
		return
	}
	for i := range c.answers.slots {
		s := c.answers.slots[i].Load()
		if s == nil {
			s = &answerCount{key: answerKey{mapName, label}}
			c.answers.slots[i].Store(s)
		}
		if s.key.mapName == mapName && s.key.label == label {
			s.n.Add(1)
			return
		}
	}
	c.overflow.add(answerKey{mapName, label}, 1)
}

// each calls f with every pair counted on the connection.
func (a *connAnswers) each(f func(answerKey, uint64)) {
	for i := range a.slots {
		if s := a.slots[i].Load(); s != nil {
			f(s.key, s.n.Load())
		}
	}
}

// answerSnapshot returns the answer counts of every connection, open or
// closed. It holds s.mu throughout, as CloseConn does while it moves a
// connection's counts from the open ones to the closed totals, so that a
// connection closing meanwhile is counted once, not twice.
func (s *requestStats) answerSnapshot() map[answerKey]uint64 {
	out := make(map[answerKey]uint64)
	add := func(k answerKey, n uint64) { out[k] += n }
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.open {
		c.answers.each(add)
	}
	s.answersClosed.mu.Lock()
	for k, n := range s.answersClosed.n {
		add(k, n)
	}
	s.answersClosed.mu.Unlock()
	return out
}

// answerCollector exposes tlspolicyd_answers_total, summed over the
// protocols that answer lookups.
type answerCollector struct {
	desc     *prometheus.Desc
	requests *requestCollector
	always   []string // labels shown for the default map from the start, so alerts and graphs have series
}

func (c *answerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *answerCollector) Collect(ch chan<- prometheus.Metric) {
	total := make(map[answerKey]uint64)
	for _, s := range c.requests.all() {
		for k, n := range s.answerSnapshot() {
			total[k] += n
		}
	}
	for _, l := range c.always {
		k := answerKey{"tlspolicy", l}
		total[k] += 0
	}
	for k, n := range total {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), k.mapName, k.label)
	}
}
