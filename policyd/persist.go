package policyd

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// What probes learn reaches the state store through storeWriter, in its
// own goroutine, so that a lookup waiting for a probe never also waits for
// a disk sync: a probe's goroutine updates the pins in memory and queues
// the findings, and the writer writes both in batches, one transaction
// (one sync) per batch. It also prunes what expired: pins at their expiry,
// findings probe.ttl after they were gathered.
//
// The findings queue is bounded, and findings that do not fit are dropped
// (counted, with one warning): that is safe because stored findings are
// only a cache for the next start. The findings stay in memory and answer
// lookups; after a restart the store gives the destination's earlier
// findings, true when gathered and gone probe.ttl after, or none, and the
// destination is probed again, its pin (if any) answering meanwhile. Pins
// are never dropped: they wait in the pin book's set of dirty keys, which
// a full queue does not touch, until a write succeeds.

// Store writer sizes.
const (
	findingsQueueLen = 4096 // findings waiting for the writer
	findingsBatch    = 1024 // findings written in one transaction at most
	storePrune       = time.Hour
	storeRetry       = 5 * time.Second // after a failed write, pins are written again this often
)

// findingsWrite is findings queued for the store.
type findingsWrite struct {
	key     string
	f       Findings
	expires time.Time
}

type storeWriter struct {
	store state.Store
	book  *pinBook
	q     *queue[findingsWrite]
	ttl   time.Duration // probe.ttl: how long findings are kept after they were gathered
	now   func() time.Time
	log   *slog.Logger
	stop  context.CancelFunc
	done  chan struct{}
}

func newStoreWriter(store state.Store, book *pinBook, ttl time.Duration, now func() time.Time, log *slog.Logger,
	reg prometheus.Registerer) *storeWriter {
	dropped := promauto.With(reg).NewCounter(prometheus.CounterOpts{Name: "tlspolicyd_findings_dropped_total",
		Help: "Findings (from probes or the fleet) not written to the state store because its writer's queue was full (they stay in memory)."})
	return &storeWriter{store: store, book: book, ttl: ttl, now: now, log: log,
		q: newQueue[findingsWrite](findingsQueueLen, dropped, log,
			"findings are not being written to the state store as fast as they arrive (from probes, or from the fleet "+
				"when joining one); those that do not fit stay in memory only (counted in tlspolicyd_findings_dropped_total)")}
}

// offer queues findings for the store, without waiting, if they are worth
// storing (see storable). Failed findings remove nothing from the store
// either: the cache keeps a destination's good findings over a failure
// until they expire (tlsprobe.Cache.store), and so does the store, which
// prunes them then.
func (w *storeWriter) offer(key string, f Findings) {
	if expires, ok := storable(f, w.ttl); ok {
		w.q.offer(findingsWrite{key, f, expires})
	}
}

// start runs the writer until close.
func (w *storeWriter) start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.stop, w.done = cancel, make(chan struct{})
	go w.run(ctx)
}

func (w *storeWriter) run(ctx context.Context) {
	defer close(w.done)
	prune := time.NewTicker(storePrune)
	defer prune.Stop()
	retry := time.NewTicker(storeRetry)
	defer retry.Stop()
	w.prune()
	batch := make([]findingsWrite, 0, findingsBatch)
	for {
		select {
		case fw := <-w.q.ch:
			// What queued up during the last write goes in this one.
			batch = w.q.take(append(batch[:0], fw), findingsBatch)
			w.write(batch)
		case <-w.book.wake:
			w.write(nil)
		case <-retry.C:
			if w.book.hasDirty() {
				w.write(nil)
			}
		case <-prune.C:
			w.prune()
		case <-ctx.Done():
			w.drain()
			return
		}
	}
}

// drain writes everything queued and every dirty pin.
func (w *storeWriter) drain() {
	for {
		batch := w.q.take(nil, findingsBatch)
		w.write(batch)
		if len(batch) < findingsBatch {
			return
		}
	}
}

// write writes findings and the dirty pins in one transaction.
func (w *storeWriter) write(batch []findingsWrite) {
	probes := make([]state.Probe, 0, len(batch))
	for _, fw := range batch {
		b, err := fw.f.MarshalBinary()
		if err != nil {
			w.log.Error("cannot encode findings for the state store", "destination", fw.key, "err", err)
			continue
		}
		probes = append(probes, state.Probe{Key: fw.key, Expires: fw.expires, Findings: b})
	}
	if err := w.book.flush(probes); err != nil {
		w.log.Error("cannot write to the state store; pins are kept and written again, findings stay in memory only",
			"findings", len(probes), "err", err)
	}
	w.q.caughtUp()
}

// prune forgets expired pins (the next write removes them from the store)
// and removes expired findings from the store.
func (w *storeWriter) prune() {
	pins := w.book.prune()
	findings, err := w.store.PruneProbes(w.now())
	if err != nil {
		w.log.Error("cannot prune the state store's findings", "err", err)
	}
	if pins+findings > 0 {
		w.log.Info("state store pruned", "expired_pins", pins, "expired_findings", findings)
	}
}

// close stops the writer after it has written what is queued. A writer
// that never started writes it now.
func (w *storeWriter) close() {
	if w.stop == nil {
		w.drain()
		return
	}
	w.stop()
	<-w.done
}

// onFindings is what the daemon does with each value the findings cache
// stores. It runs in the probe's goroutine, before the lookups waiting for
// the probe wake, so it waits for no disk: it learns pins in memory and
// queues the findings, and the writer does the rest.
func onFindings(book *pinBook, w *storeWriter, minTLS uint16) func(key string, f Findings) {
	return func(key string, f Findings) {
		if f.peer {
			return // taken when it arrived
		}
		if !f.probeKept {
			book.learn(key, f.Probe, minTLS)
		}
		w.offer(key, f)
	}
}

// storable reports whether findings go to the store, and until when they
// are kept there. Failed findings (nothing learnt: NXDOMAIN, no answer)
// are kept in memory only, for probe.negative_ttl: after a restart the
// destination is probed again, as it would be anyway once that short
// lifetime passed, and a store of them would grow with every name ever
// looked up. Findings that do not say when they were gathered cannot say
// when they expire.
func storable(f Findings, ttl time.Duration) (time.Time, bool) {
	if f.Failed() || f.Gathered().IsZero() {
		return time.Time{}, false
	}
	return f.Gathered().Add(ttl), true
}

// restoreFindings puts stored findings back in the cache at start: those
// that expire last, as many as the cache holds (a shard that fills keeps
// the newest). Findings that do not decode (a record of a later release,
// damage) are skipped and counted: they are a cache, and the destination
// is probed again.
func restoreFindings(store state.Store, cache *tlsprobe.Cache[Findings], now time.Time) (restored, skipped int, err error) {
	intern := map[string]string{}
	err = store.Probes(now, cache.Capacity(), func(p state.Probe) error {
		var f Findings
		if err := decodeFindings(p.Findings, &f, intern); err != nil {
			skipped++
		} else if cache.Restore(p.Key, f) {
			restored++
		}
		return nil
	})
	cache.UpdateMetrics()
	return restored, skipped, err
}

// legacyFindings converts findings stored by releases before the compact
// format (JSON), for state.Bolt.MigrateProbes: failed and expired ones
// are dropped, as the daemon no longer stores them.
func legacyFindings(ttl time.Duration, now time.Time) func(key string, record []byte) (state.Probe, bool) {
	return func(key string, record []byte) (state.Probe, bool) {
		var f Findings
		if err := json.Unmarshal(record, &f); err != nil {
			return state.Probe{}, false
		}
		expires, ok := storable(f, ttl)
		if !ok || !now.Before(expires) {
			return state.Probe{}, false
		}
		b, err := f.MarshalBinary()
		if err != nil {
			return state.Probe{}, false
		}
		return state.Probe{Key: key, Expires: expires, Findings: b}, true
	}
}
