package policyd

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/puzpuzpuz/xsync/v4"

	"github.com/tlspolicyd/tlspolicyd/fleet"
	"github.com/tlspolicyd/tlspolicyd/internal/monoclock"
	"github.com/tlspolicyd/tlspolicyd/internal/ratelog"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// pinBook is the daemon's memory of what destinations have proved: once a
// probe shows a destination can do encrypt (or verify), it must keep doing
// so until the pin expires, pin_ttl after the last probe that confirmed
// it. An attacker who strips STARTTLS from a later probe, or from
// Postfix's own connection, then meets a policy that requires TLS: the
// mail defers instead of going out in plaintext.
//
// Reads (every lookup) go to a sync.Map without locks. A change (after a
// probe, by an administrator, or a pin expiring) is made in memory and its
// key marked dirty, both under mu, so that marks follow the changes'
// order; flush then writes each dirty key's pin as memory holds it at that
// moment, or removes it from the store if memory holds none. A probe never
// waits for the disk: the writer goroutine (see storeWriter) flushes what
// probes changed, while an administrator's command flushes itself and
// waits, since it must say whether the pin was written. Pins, unlike
// findings, are never given up: a failed write marks its keys dirty
// again, and the set of dirty keys is bounded by the number of pins.
type pinBook struct {
	pins *xsync.Map[string, *heldPin] // by target key; typed, for fast reads

	stored  atomic.Bool // a pin was ever stored; see any
	mu      sync.Mutex  // serialises changes to pins
	store   state.Store // nil: pins live in memory only
	ttl     time.Duration
	clock   *monoclock.Clock // heldPin.expires is on it
	log     *slog.Logger
	metrics *pinMetrics
	// downgraded, if set, hears of every possible downgrade a probe shows
	// (for the decision history).
	downgraded func(p state.Pin)
	// fleet, if set, hears of every pin this daemon learns, is given or
	// has removed, to share it with the other daemons of its fleet.
	fleet *fleet.Fleet

	dirtyMu sync.Mutex
	dirty   map[string]struct{} // keys whose pin the store is yet to get
	// flushMu is held by a flush from taking the dirty keys until its
	// write ends: the store gets memory's states in the order memory had
	// them, and a failed write's keys are dirty again before the next
	// flush looks.
	flushMu sync.Mutex
	wake    chan struct{} // signalled when a key becomes dirty; capacity 1
}

// newPinBook returns a book on clock.
func newPinBook(store state.Store, ttl time.Duration, clock *monoclock.Clock, log *slog.Logger, reg prometheus.Registerer) *pinBook {
	b := &pinBook{pins: xsync.NewMap[string, *heldPin](), store: store, ttl: ttl, clock: clock, log: log, dirty: make(map[string]struct{}), wake: make(chan struct{}, 1)}
	b.metrics = newPinMetrics(reg, b)
	return b
}

// markDirty records that the pins of keys must be written (mu held, or
// putting back keys a write failed to write).
func (b *pinBook) markDirty(keys ...string) {
	if b.store == nil {
		return
	}
	b.dirtyMu.Lock()
	for _, k := range keys {
		b.dirty[k] = struct{}{}
	}
	b.dirtyMu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// hasDirty reports whether some pin waits to be written.
func (b *pinBook) hasDirty() bool {
	b.dirtyMu.Lock()
	defer b.dirtyMu.Unlock()
	return len(b.dirty) > 0
}

// flush writes the dirty pins, and findings with them, in one transaction.
func (b *pinBook) flush(findings []state.Probe) error {
	if b.store == nil {
		return nil
	}
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	b.dirtyMu.Lock()
	keys := make([]string, 0, len(b.dirty))
	for k := range b.dirty {
		keys = append(keys, k)
	}
	clear(b.dirty)
	b.dirtyMu.Unlock()
	c := state.Changes{Probes: findings}
	for _, k := range keys {
		if v, ok := b.pins.Load(k); ok {
			c.Pins = append(c.Pins, *v.pin)
		} else {
			c.DeletePins = append(c.DeletePins, k)
		}
	}
	if err := b.store.Apply(c); err != nil {
		b.metrics.storeErrors.Inc()
		b.markDirty(keys...)
		return err
	}
	return nil
}

// any reports whether the book may hold a pin. Until one is stored, a
// lookup need not spell out its key to look for one.
func (b *pinBook) any() bool { return b != nil && b.stored.Load() }

// heldPin is a pin as memory holds it for lookups: with its expiry on the
// book's clock and its level parsed, so that a lookup checks it with one
// read of the monotonic clock and reads nothing else of the pin.
type heldPin struct {
	pin     *state.Pin
	expires time.Duration
	level   rules.Level
}

// put stores a pin in memory.
func (b *pinBook) put(p *state.Pin) {
	b.stored.Store(true)
	b.pins.Store(p.Key, &heldPin{pin: p, expires: b.clock.At(p.Expires), level: pinLevel(p)})
}

// now is the wall time on the book's clock.
func (b *pinBook) now() time.Time { return b.clock.Wall() }

// get returns the pin of a target key, and whether it is valid.
func (b *pinBook) get(key string) (*state.Pin, bool) {
	h, ok := b.getAt(key, b.clock.Now())
	if h == nil {
		return nil, false
	}
	return h.pin, ok
}

// getAt returns the held pin of a target key (nil: none), and whether it
// is valid at now, read from the book's clock.
func (b *pinBook) getAt(key string, now time.Duration) (*heldPin, bool) {
	h, ok := b.pins.Load(key)
	if !ok {
		return nil, false
	}
	return h, now < h.expires
}

// pinLevel is the level a pin stands for.
func pinLevel(p *state.Pin) rules.Level {
	l, _ := rules.ParseLevel(p.Level)
	return l
}

// learn updates the pins from a probe result: a result at or above the
// pinned level confirms (and may raise) the pin; a result below it is a
// possible downgrade attack, logged and counted, and the pin stands. A
// failed probe (no evidence) changes nothing. The store gets the change
// from the writer goroutine, and the fleet, if any, hears of it.
func (b *pinBook) learn(key string, r tlsprobe.Report, minTLS uint16) {
	b.learnAt(key, r, minTLS, b.now(), true)
}

// learnAt is learn of a probe made at now (a peer's probe is a moment
// old); share says whether the fleet is to hear of the change (not when
// the probe came from the fleet: the peer shares its own pin).
func (b *pinBook) learnAt(key string, r tlsprobe.Report, minTLS uint16, now time.Time, share bool) {
	if r.Failed() {
		return
	}
	shown := capabilityLevel(r.Capability)
	b.mu.Lock()
	defer b.mu.Unlock()
	old, had := b.get(key)
	switch {
	case had && !shown.AtLeast(pinLevel(old)):
		p := *old
		p.LastDowngrade, p.DowngradeReason = now, r.Reason(minTLS)
		b.put(&p)
		b.metrics.downgrades.WithLabelValues(p.Level).Inc()
		// One per pinned destination and probe, each naming a different
		// destination: the log's rate limit must not hold any back.
		b.log.WarnContext(ratelog.Unlimited(context.Background()),
			"possible downgrade attack: a probe saw less than the pinned level; the pin stands",
			"destination", key, "pinned", p.Level, "seen", r.Capability.String(), "evidence", p.DowngradeReason,
			"pin_expires", p.Expires)
		if b.downgraded != nil {
			b.downgraded(p)
		}
		b.markDirty(key)
		b.share(p, share)
	case shown.AtLeast(rules.LevelEncrypt):
		p := state.Pin{Key: key, Level: shown.String(), FirstSeen: now, LastSeen: now, Expires: now.Add(b.ttl), Source: "probe"}
		if had {
			p.FirstSeen, p.LastDowngrade, p.DowngradeReason = old.FirstSeen, old.LastDowngrade, old.DowngradeReason
			if !shown.AtLeast(pinLevel(old)) {
				p.Level = old.Level
			}
		}
		b.put(&p)
		b.markDirty(key)
		b.share(p, share)
	}
}

// ProbeBelowPin reports whether probe result r shows less than pin p
// while p is in force at now: a possible downgrade attack (or a partner
// that really dropped TLS). A failed probe shows nothing.
func ProbeBelowPin(p state.Pin, r tlsprobe.Report, now time.Time) bool {
	return p.Valid(now) && !r.Failed() && !capabilityLevel(r.Capability).AtLeast(pinLevel(&p))
}

// PinKey is the key under which a destination's pin is kept: the probe
// target of the destination as Postfix names it.
func PinKey(destination string) (string, error) {
	t, err := Target(destination)
	if err != nil {
		return "", err
	}
	return t.Key(), nil
}

// AdminPin makes the pin an administrator adds for a destination.
func AdminPin(destination, level string, ttl time.Duration, now time.Time) (state.Pin, error) {
	key, err := PinKey(destination)
	if err != nil {
		return state.Pin{}, err
	}
	l, err := rules.ParseLevel(level)
	switch {
	case err != nil:
		return state.Pin{}, fmt.Errorf("%q is not a level a pin can have: %w", level, ErrPinLevel)
	case l != rules.LevelEncrypt && l != rules.LevelVerify:
		return state.Pin{}, fmt.Errorf("%w, not %s (for %s, write a destination rule for %s with level: %s)", ErrPinLevel, l, l, key, l)
	}
	return state.Pin{Key: key, Level: l.String(), FirstSeen: now, LastSeen: now, Expires: now.Add(ttl), Source: "admin"}, nil
}

// add pins a destination by hand (pre-seeding a known partner). A pin
// below the one in force is refused (a *PinLowerError) unless forced;
// lowered is the pin a forced one replaced (nil when none was lowered).
// It returns once the pin is written; if the write fails, the pin is in
// force anyway and written later, and the error says so.
func (b *pinBook) add(destination, level string, force bool) (p state.Pin, lowered *state.Pin, err error) {
	p, err = AdminPin(destination, level, b.ttl, b.now())
	if err != nil {
		return state.Pin{}, nil, err
	}
	b.mu.Lock()
	if current, ok := b.get(p.Key); ok {
		if err := LowersPin(current, p, b.now()); err != nil {
			if !force {
				b.mu.Unlock()
				return state.Pin{}, nil, err
			}
			lowered = current
		}
	}
	b.put(&p)
	b.markDirty(p.Key)
	b.share(p, true)
	b.mu.Unlock()
	if err := b.flush(nil); err != nil {
		return p, lowered, fmt.Errorf("the pin is in force, but writing it to the state store failed (it will be tried again): %w", err)
	}
	return p, lowered, nil
}

// remove drops a pin: the way out when a partner truly drops TLS. Like
// add, it returns once the store has the change.
func (b *pinBook) remove(destination string) (bool, error) {
	key, err := PinKey(destination)
	if err != nil {
		return false, err
	}
	b.mu.Lock()
	_, had := b.pins.LoadAndDelete(key)
	b.markDirty(key)
	if had && b.fleet != nil {
		b.fleet.PinRemoved(key, b.now())
	}
	b.mu.Unlock()
	if err := b.flush(nil); err != nil {
		return had, fmt.Errorf("the pin is removed, but removing it from the state store failed (it will be tried again): %w", err)
	}
	return had, nil
}

// share tells the fleet of pin p, if there is a fleet and share is set.
// It runs under mu, so that the fleet hears of changes in their order;
// the fleet only queues it.
func (b *pinBook) share(p state.Pin, share bool) {
	if share && b.fleet != nil {
		b.fleet.PinChanged(p)
	}
}

// merge takes a peer's pin if it beats the one in memory by the fleet's
// rule (fleet.Beats): a peer never lowers a pin.
func (b *pinBook) merge(p state.Pin) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.pins.Load(p.Key); ok && !fleet.Beats(p, *old.pin, b.now()) {
		return
	}
	b.put(&p)
	b.markDirty(p.Key)
}

// removeBefore drops the pin of key if it was last confirmed at or before
// at: an operator's removal on another daemon of the fleet.
func (b *pinBook) removeBefore(key string, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.pins.Load(key); ok && !old.pin.LastSeen.After(at) {
		b.pins.Delete(key)
		b.markDirty(key)
		b.log.Info("pin removed on another daemon of the fleet", "destination", key, "removed_at", at)
	}
}

// prune forgets the pins that have expired, in memory and (at the next
// flush) in the store. It says how many.
func (b *pinBook) prune() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var gone []string
	b.pins.Range(func(k string, v *heldPin) bool {
		if !v.pin.Valid(now) {
			b.pins.Delete(k) // under mu: no change can have come between
			gone = append(gone, k)
		}
		return true
	})
	b.markDirty(gone...)
	return len(gone)
}

// list returns every pin, valid or expired, sorted by key.
func (b *pinBook) list() []state.Pin {
	out := []state.Pin{} // an empty list, not null, in JSON
	b.pins.Range(func(_ string, v *heldPin) bool {
		out = append(out, *v.pin)
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// UsePins gives an engine pins to answer with, kept in memory only: for
// `tlspolicyd query`, which reads the daemon's pins but must not write.
func (e *Engine) UsePins(pins []state.Pin, ttl time.Duration) {
	clock := e.mono
	if clock == nil {
		clock = monoclock.New(nil)
	}
	b := newPinBook(nil, ttl, clock, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	b.load(pins)
	e.pins = b
}

// load fills memory from the store's pins.
func (b *pinBook) load(pins []state.Pin) {
	for i := range pins {
		b.put(&pins[i])
	}
}

// pinMetrics are the pin book's collectors.
type pinMetrics struct {
	downgrades  *prometheus.CounterVec
	storeErrors prometheus.Counter
}

func newPinMetrics(reg prometheus.Registerer, b *pinBook) *pinMetrics {
	f := promauto.With(reg)
	m := &pinMetrics{
		downgrades: f.NewCounterVec(prometheus.CounterOpts{Name: "tlspolicyd_downgrades_total",
			Help: "Probes that saw less than a destination's pinned level (possible STARTTLS stripping), by pinned level."},
			[]string{"level"}),
		storeErrors: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_state_store_errors_total",
			Help: "Failed writes to the state store."}),
	}
	pinsDesc := prometheus.NewDesc("tlspolicyd_pins", "Valid pins, by level.", []string{"level"}, nil)
	reg.MustRegister(collectorFunc{pinsDesc, func(ch chan<- prometheus.Metric) {
		counts := map[string]int{"encrypt": 0, "verify": 0}
		now := b.now()
		b.pins.Range(func(_ string, v *heldPin) bool {
			if p := v.pin; p.Valid(now) {
				counts[p.Level]++
			}
			return true
		})
		for level, n := range counts {
			ch <- prometheus.MustNewConstMetric(pinsDesc, prometheus.GaugeValue, float64(n), level)
		}
	}})
	m.downgrades.WithLabelValues("encrypt")
	m.downgrades.WithLabelValues("verify")
	if b.store != nil {
		f.NewGaugeFunc(prometheus.GaugeOpts{Name: "tlspolicyd_state_store_size_bytes", Help: "Size of the state store file."},
			func() float64 { return float64(b.store.Size()) })
	}
	return m
}

// collectorFunc is a collector of one metric family computed at scrape.
type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
