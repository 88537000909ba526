package policyd

import (
	"context"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/fleet"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

// The decision history: the first answer the daemon gives for each
// destination and map, and every change after it, with the rule and the
// evidence behind it, kept in the state store for state.history.
//
// Lookups must not pay for it. A lookup only compares a hash of its
// destination, map and answer with a slot of a fixed table (one atomic
// load, no lock, no allocation); only when they differ (a first answer, a
// change, or a slot another destination took) does it build a record and
// hand it to the recorder's bounded queue. The recorder, in its own
// goroutine, drops what is not a change (it remembers recent answers and
// asks the store for older ones), logs the changes, and writes them in
// batches, so that no lookup waits for a disk sync.
//
// The recorder also keeps the destinations with history, for the list of
// known destinations that the status page and the API show. Lookups never
// need it, so the daemon does not wait for it at start: the recorder reads
// it from the store's history index in the background (a million
// destinations take a fraction of a second and about 30 MB), and until
// it has, the list holds only what is in memory (see knownWait).

// History sizes.
const (
	seenSlots       = 1 << 20 // 8 MiB of hashes: the table of answers given
	historyQueueLen = 4096    // records waiting for the recorder
	lastAnswers     = 200000  // (destination, map) pairs whose last answer the recorder keeps in memory
	historyBatch    = 256     // records written in one transaction at most
	historyFlush    = time.Second
	historyPrune    = time.Hour
	perDestination  = 1000 // records kept per destination, besides the age limit
)

// HistoryStore is the part of the state store the history needs.
type HistoryStore interface {
	AppendDecisions(ds ...state.Decision) error
	Decisions(destination string, limit int) ([]state.Decision, error)
	LatestDecision(destination, mapName string) (state.Decision, bool, error)
	PruneDecisions(olderThan time.Time, perDestination int) (int, error)
	WalkDecisionDestinations(since time.Time, fn func(destination []byte, newest time.Time) error) error
	DecisionDestinationsSize() (destinations, nameBytes int)
}

// recorder keeps the decision history.
type recorder struct {
	seed  maphash.Seed
	seen  []atomic.Uint64 // per slot: destination-and-map hash (high half), answer hash (low half)
	q     *queue[state.Decision]
	store HistoryStore
	ttl   func() time.Duration // state.history in force
	now   func() time.Time
	log   *slog.Logger
	logs  func() rules.DecisionLog // log.decisions in force

	mu    sync.Mutex // guards last and known
	last  *simplelru.LRU[string, string]
	known *knownSet // for the list of known destinations

	// loading is set while the destinations with history are read at
	// start; loaded is closed when that ends.
	loading atomic.Bool
	loaded  chan struct{}

	recorded prometheus.Counter
	stop     context.CancelFunc
	done     chan struct{} // closed when run and the load have ended
	// fleet, if set, gets every record written, for the other daemons.
	fleet *fleet.Fleet
}

func newRecorder(store HistoryStore, ttl func() time.Duration, logs func() rules.DecisionLog, now func() time.Time,
	log *slog.Logger, reg prometheus.Registerer) *recorder {
	last, _ := simplelru.NewLRU[string, string](lastAnswers, nil)
	f := promauto.With(reg)
	dropped := f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_history_dropped_total",
		Help: "Decision history records lost because the recorder's queue was full."})
	return &recorder{
		seed: maphash.MakeSeed(), seen: make([]atomic.Uint64, seenSlots),
		q: newQueue[state.Decision](historyQueueLen, dropped, log,
			"decision history records are being lost: the recorder's queue is full (counted in tlspolicyd_history_dropped_total)"),
		store: store, ttl: ttl, logs: logs, now: now, log: log,
		last: last, known: &knownSet{}, loaded: make(chan struct{}),
		recorded: f.NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_history_records_total",
			Help: "Decision history records written: first answers, changes and RCPT-time refusals."}),
	}
}

// changed reports whether the answer for (mapName, name) may differ from
// the last one recorded: the lookup path's whole cost of the history.
func (h *recorder) changed(mapName string, name []byte, answer string) bool {
	key := maphash.Bytes(h.seed, name) ^ maphash.String(h.seed, mapName)*0x9e3779b97f4a7c15
	v := key&^0xffffffff | maphash.String(h.seed, answer)&0xffffffff
	slot := &h.seen[key&(seenSlots-1)]
	if slot.Load() == v {
		return false
	}
	slot.Store(v)
	return true
}

// offer hands a record to the recorder without waiting; a full queue
// drops it and counts the loss.
func (h *recorder) offer(d state.Decision) { h.q.offer(d) }

// start runs the recorder until close: it prunes, writes what lookups
// offer, and meanwhile, in a goroutine of its own so that no record waits
// for it, reads the destinations the store holds records of.
func (h *recorder) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.stop, h.done = cancel, make(chan struct{})
	h.loading.Store(true)
	var wg sync.WaitGroup
	wg.Go(func() { h.load(ctx) })
	wg.Go(func() { h.run(ctx) })
	go func() {
		wg.Wait()
		close(h.done)
	}()
}

// load reads the destinations with records within state.history from the
// store's index and adds them to those recorded since the start.
func (h *recorder) load(ctx context.Context) {
	defer close(h.loaded)
	defer h.loading.Store(false)
	start := time.Now()
	var b knownBuilder
	// Sized at once, the arrays neither leave garbage behind as they
	// grow nor hold room they do not need.
	n, size := h.store.DecisionDestinationsSize()
	b.names.Grow(size)
	b.ends, b.newest = make([]uint32, 0, n), make([]int64, 0, n)
	err := h.store.WalkDecisionDestinations(h.now().Add(-h.ttl()), func(d []byte, newest time.Time) error {
		if err := b.add(d, newest.UnixNano()); err != nil {
			return err
		}
		return ctx.Err()
	})
	if err != nil {
		if ctx.Err() == nil {
			h.log.Error("cannot read the destinations of the decision history; the list of known destinations lacks those known only from it", "err", err)
		}
		return
	}
	loaded := b.set()
	n = loaded.count()
	h.mu.Lock()
	loaded.absorb(h.known)
	h.known = loaded
	h.mu.Unlock()
	h.log.Info("destinations of the decision history read", "destinations", n,
		"took", time.Since(start).Round(time.Millisecond).String())
}

// listComplete reports whether the destinations with history are all in
// memory: false while they are being read at start.
func (h *recorder) listComplete() bool { return !h.loading.Load() }

// waitList waits at most max, or until ctx ends, for the destinations
// with history to be read, and reports whether they are.
func (h *recorder) waitList(ctx context.Context, max time.Duration) bool {
	if h.listComplete() {
		return true
	}
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-h.loaded:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return h.listComplete()
}

func (h *recorder) run(ctx context.Context) {
	flush := time.NewTicker(historyFlush)
	defer flush.Stop()
	prune := time.NewTicker(historyPrune)
	defer prune.Stop()
	h.prune()
	var batch []state.Decision
	write := func() {
		if len(batch) == 0 {
			return
		}
		if err := h.store.AppendDecisions(batch...); err != nil {
			h.log.Error("cannot write the decision history to the state store", "records", len(batch), "err", err)
		} else {
			h.recorded.Add(float64(len(batch)))
		}
		if h.fleet != nil {
			h.fleet.PublishDecisions(batch) // it copies what it keeps
		}
		batch = batch[:0]
		h.q.caughtUp()
	}
	for {
		select {
		case d := <-h.q.ch:
			if h.isChange(&d) {
				batch = append(batch, d)
				if len(batch) >= historyBatch {
					write()
				}
			}
		case <-flush.C:
			write()
		case <-prune.C:
			h.prune()
		case <-ctx.Done():
			for _, d := range h.q.take(nil, cap(h.q.ch)) {
				if h.isChange(&d) {
					batch = append(batch, d)
				}
			}
			write()
			return
		}
	}
}

// isChange fills in d's previous answer and reports whether d records a
// change (or a first answer); it logs the change as a decision record.
func (h *recorder) isChange(d *state.Decision) bool {
	if d.Map == MapDowngrade {
		h.mu.Lock()
		h.known.touch(d.Destination, d.Time.UnixNano())
		h.mu.Unlock()
		return true
	}
	key := d.Destination + "\x00" + d.Map
	h.mu.Lock()
	prev, ok := h.last.Get(key)
	h.mu.Unlock()
	if !ok {
		if old, found, err := h.store.LatestDecision(d.Destination, d.Map); err == nil && found {
			prev, ok = old.Answer, true
		}
	}
	h.mu.Lock()
	h.last.Add(key, d.Answer)
	h.known.touch(d.Destination, d.Time.UnixNano())
	h.mu.Unlock()
	if ok && prev == d.Answer {
		return false
	}
	d.Previous = prev
	if h.logs() != rules.DecisionsNone {
		h.log.LogAttrs(context.Background(), slog.LevelInfo, "decision changed", decisionAttrs(*d)...)
	}
	return true
}

// addPeers records the decisions of the other daemons of the fleet, as
// they recorded them: the history and the list of known destinations are
// the fleet's.
func (h *recorder) addPeers(ds []state.Decision) {
	if err := h.store.AppendDecisions(ds...); err != nil {
		h.log.Error("cannot write the fleet's decision history to the state store", "records", len(ds), "err", err)
		return
	}
	h.mu.Lock()
	for _, d := range ds {
		h.known.touch(d.Destination, d.Time.UnixNano())
	}
	h.mu.Unlock()
}

func (h *recorder) prune() {
	n, err := h.store.PruneDecisions(h.now().Add(-h.ttl()), perDestination)
	if err != nil {
		h.log.Error("cannot prune the decision history", "err", err)
		return
	}
	if n > 0 {
		h.log.Info("decision history pruned", "records", n, "older_than", h.ttl().String())
	}
	cutoff := h.now().Add(-h.ttl()).UnixNano()
	h.mu.Lock()
	h.known.compact(cutoff)
	h.mu.Unlock()
}

// destinations lists those with history within state.history (or as
// many of them as have been read, see listComplete) and others, which are
// sorted and hold no duplicates.
func (h *recorder) destinations(others []string) *knownList {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.known.list(others)
}

// close stops the recorder after writing what is queued.
func (h *recorder) close() {
	if h.stop != nil {
		h.stop()
		<-h.done
	}
}

// decisionAttrs are a decision record's log fields.
func decisionAttrs(d state.Decision) []slog.Attr {
	attrs := []slog.Attr{slog.String("destination", d.Destination), slog.String("map", d.Map),
		slog.String("answer", d.Answer), slog.String("previous", d.Previous), slog.String("rule", d.Rule)}
	e := d.Evidence
	for _, kv := range [][2]string{{"probe", e.Probe}, {"pin", e.Pin}, {"mta_sts", e.MTASTS}, {"dane", e.DANE}, {"sender", e.Sender}} {
		if kv[1] != "" {
			attrs = append(attrs, slog.String(kv[0], kv[1]))
		}
	}
	return attrs
}

// clock is the history's clock (the daemon's, injected), or the system's.
func (e *Engine) clock() time.Time {
	if e.history != nil {
		return e.history.now()
	}
	return time.Now()
}

// logsAll reports whether every lookup is logged (log.decisions: all).
func (e *Engine) logsAll(rs *rules.Rules) bool {
	return e.log != nil && rs.Settings.LogDecisions == rules.DecisionsAll
}

// changed reports whether an answer may differ from the last one recorded
// for the destination and map (false without a history).
func (e *Engine) changed(mapName string, name []byte, a wire.Answer) bool {
	return e.history != nil && e.history.changed(mapName, name, a.Text)
}

// record builds the record of an answer (d, if not nil, holds the
// evidence): with log.decisions: all it logs it, changed or not, and a
// changed one goes to the recorder.
func (e *Engine) record(rs *rules.Rules, mapName, destination string, r *rules.Rule, a wire.Answer, d *Decision, changed bool) {
	// A lookup's destination borrows the lookup's buffer: keep a copy.
	rec := state.Decision{Time: e.clock(), Destination: strings.Clone(destination), Map: mapName, Answer: answerText(a), Rule: ruleRef(r)}
	if d != nil {
		rec.Evidence = evidenceOf(d)
	}
	if e.logsAll(rs) {
		e.log.LogAttrs(context.Background(), slog.LevelInfo, "decision", decisionAttrs(rec)...)
	}
	if changed {
		e.history.offer(rec)
	}
}

// answerText is an answer as the history shows it.
func answerText(a wire.Answer) string {
	switch a.Status {
	case wire.StatusOK:
		return a.Text
	case wire.StatusNotFound:
		return "NOTFOUND"
	}
	return a.Status.String() + " " + a.Text
}

// ruleRef is the "FILE:LINE" of a rule (of the pattern that matched, for a
// rule with a list or a match file), or "" for defaults not written in the
// file.
func ruleRef(r *rules.Rule) string {
	if r == nil {
		return ""
	}
	return r.Ref()
}

// evidenceOf says what a decision rested on besides its rule.
func evidenceOf(d *Decision) state.Evidence {
	var ev state.Evidence
	if d.Pin != nil {
		ev.Pin = d.Pin.Level
	}
	if !d.Probed() {
		if d.Waited {
			ev.Probe = "no result within probe.wait"
		}
		return ev
	}
	p := d.Findings.Probe
	minTLS := d.rules.Settings.MinTLSVersion
	switch {
	case p.Failed():
		ev.Probe = "failed: " + p.Reason(minTLS)
	case p.Cause == tlsprobe.CauseNone:
		ev.Probe = p.Capability.String()
	default:
		ev.Probe = p.Capability.String() + " (" + p.Reason(minTLS) + ")"
	}
	if sts := d.Findings.STS; sts != nil {
		ev.MTASTS = sts.Mode.String() + " id " + sts.ID
	}
	if d.Findings.DANE != dane.NoDANE {
		ev.DANE = d.Findings.DANE.String()
	}
	return ev
}

// MapDowngrade is the history's map name for possible downgrade attacks: a
// probe that saw less than the pinned level.
const MapDowngrade = "downgrade"

// recordDowngrade puts a possible downgrade attack in the history. Each is
// an event of its own, never merged with an earlier one.
func (e *Engine) recordDowngrade(p state.Pin) {
	if e.history == nil {
		return
	}
	e.history.offer(state.Decision{Time: p.LastDowngrade, Destination: p.Key, Map: MapDowngrade,
		Answer: "possible downgrade: " + p.DowngradeReason, Evidence: state.Evidence{Pin: p.Level}})
}
