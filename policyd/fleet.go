package policyd

import (
	"context"
	"time"

	"github.com/tlspolicyd/tlspolicyd/fleet"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// A daemon with state.redis shares its pins and findings with its fleet
// (package fleet). Its memory stays what lookups read: what the fleet
// brings goes into the pin book and the findings cache as a probe's
// results would, through fleetLocal, and what the daemon learns goes to
// the fleet from the pin book and from fleetGather, never from a lookup.

// leaseMargin is how much longer a probe lease lasts than probe.timeout.
const leaseMargin = 5 * time.Second

// newFleet is the fleet link of state.redis, or nil for a daemon alone
// (no goroutine, no metric).
func newFleet(s rules.Settings, opts Options, now func() time.Time) *fleet.Fleet {
	if !s.Redis.Enabled() {
		return nil
	}
	return fleet.New(fleet.Config{
		Redis: s.Redis, PinTTL: s.PinTTL, FindingsTTL: s.ProbeTTL, Lease: s.ProbeTimeout + leaseMargin,
		Now: now, Logger: opts.Logger, Metrics: fleet.NewMetrics(opts.Registerer),
	})
}

// fleetLocal is the daemon as the fleet sees it.
type fleetLocal struct {
	book    *pinBook
	history *recorder
	cache   *tlsprobe.Cache[Findings]
	writer  *storeWriter
	minTLS  uint16
	now     func() time.Time
	ttl     time.Duration // probe.ttl
}

func (l fleetLocal) Pins() []state.Pin { return l.book.list() }

func (l fleetLocal) AddDecisions(ds []state.Decision) { l.history.addPeers(ds) }

func (l fleetLocal) Pin(key string) (state.Pin, bool) {
	v, ok := l.book.pins.Load(key)
	if !ok {
		return state.Pin{}, false
	}
	return *v.pin, true
}

// MergePin takes a peer's pin if it is one this daemon could have made:
// its key a destination's, confirmed no later than now and lasting no
// longer than state.pin_ttl (give every daemon of a fleet the same). A
// pin that is not (damage, a foreign writer) is ignored, never kept for
// ever.
func (l fleetLocal) MergePin(p state.Pin) {
	now := l.now()
	slack := time.Hour // clocks of the fleet's machines
	if k, err := PinKey(p.Key); err != nil || k != p.Key || p.LastSeen.After(now.Add(slack)) ||
		p.Expires.After(p.LastSeen.Add(l.book.ttl+slack)) {
		l.book.log.Warn("fleet: ignored a pin from Redis that no daemon could have made", "destination", p.Key,
			"last_seen", p.LastSeen, "expires", p.Expires)
		return
	}
	l.book.merge(p)
}

func (l fleetLocal) RemovePin(key string, at time.Time) { l.book.removeBefore(key, at) }

// Findings gives the findings in memory that a store would keep and want
// asks for.
func (l fleetLocal) Findings(want func(key string, version time.Time) bool, put func(key string, version time.Time, data []byte)) {
	l.cache.Range(func(key string, f Findings) bool {
		if _, good := storable(f, l.ttl); !good || !want(key, findingsVersion(f)) {
			return true
		}
		if data, err := f.MarshalBinary(); err == nil {
			put(key, findingsVersion(f), data)
		}
		return true
	})
}

// PutFindings takes a peer's findings if they are about key, hold
// evidence, are fresh and newer than those in memory: into the cache, the
// pin book (learning from a new probe as from a local one, so that a pin
// learnt elsewhere protects here too) and the state file.
func (l fleetLocal) PutFindings(key string, version time.Time, data []byte) {
	var f Findings
	if decodeFindings(data, &f, nil) != nil || f.Probe.Target.Key() != key {
		return
	}
	expires, ok := storable(f, l.ttl)
	if !ok || !l.now().Before(expires) {
		return
	}
	t := f.Probe.Target
	cur, had := l.cache.Peek(t)
	if had && !version.After(findingsVersion(cur)) {
		return
	}
	l.cache.Put(t, f)
	if !had || f.Probe.ProbedAt.After(cur.Probe.ProbedAt) {
		at := f.Probe.ProbedAt
		if now := l.now(); at.After(now) {
			at = now
		}
		l.book.learnAt(key, f.Probe, l.minTLS, at, false)
	}
	l.writer.offer(key, f)
}

// findingsVersion orders a destination's findings across the fleet: the
// later of the probe and of the MTA-STS policy fetch, so that a policy
// read again without a new probe counts as news.
func findingsVersion(f Findings) time.Time {
	v := f.Probe.ProbedAt
	if f.STS != nil && f.STS.FetchedAt.After(v) {
		v = f.STS.FetchedAt
	}
	return v
}

// fleetGather wraps gather so that one daemon of the fleet probes a
// destination at a time: the one that takes the destination's lease
// probes and publishes; the others wait for its findings (in the probe's
// goroutine: lookups wait probe.wait at most, as ever) and take them. A
// holder that fails or dies lets the lease go, and a waiter takes it.
// Without Redis, the daemon probes alone. A few rounds at most, then it
// probes anyway: the fleet never keeps a daemon from evidence.
//
// peek reads the cache without starting anything: findings a peer
// published before this probe began to wait for them are already there.
func fleetGather(fl *fleet.Fleet, gather tlsprobe.Gather[Findings], now func() time.Time,
	peek func(tlsprobe.Target) (Findings, bool)) tlsprobe.Gather[Findings] {
	probe := func(ctx context.Context, t tlsprobe.Target, prev Findings, key string) Findings {
		f := gather(ctx, t, prev)
		if data, err := f.MarshalBinary(); err == nil && ctx.Err() == nil {
			if f.Failed() || f.Gathered().IsZero() {
				// For those waiting on this probe only.
				fl.PublishFindings(key, now(), data, false)
			} else {
				fl.PublishFindings(key, findingsVersion(f), data, true)
			}
		}
		return f
	}
	return func(ctx context.Context, t tlsprobe.Target, prev Findings) Findings {
		key := t.Key()
		for range 3 {
			if f, ok := peek(t); ok && findingsVersion(f).After(findingsVersion(prev)) {
				f.peer = true
				return f
			}
			held, err := fl.Lease(ctx, key)
			if err != nil {
				return probe(ctx, t, prev, key)
			}
			if held {
				f := probe(ctx, t, prev, key)
				fl.Release(key)
				return f
			}
			if data, ok := fl.WaitFindings(ctx, key, findingsVersion(prev)); ok {
				var f Findings
				if decodeFindings(data, &f, nil) == nil && f.Probe.Target.Key() == key {
					f.peer = !f.Failed()
					return f
				}
			}
			if ctx.Err() != nil {
				return Findings{}
			}
		}
		return probe(ctx, t, prev, key)
	}
}
