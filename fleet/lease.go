package fleet

import (
	"context"
	"time"
)

// One probe per destination across the fleet: before probing, a daemon
// takes the destination's lease (SET NX PX, for Config.Lease). The holder
// probes, publishes the findings and releases the lease; the others wait
// for the findings, in the probe's goroutine (a lookup waits probe.wait at
// most, as it does for a local probe), and take them. If the holder dies,
// its lease expires and a waiter takes it and probes. If Redis cannot be
// asked, the daemon probes on its own: a fleet never keeps a daemon from
// evidence it would gather alone.

// findingsWaiter is a probe waiting for a peer's findings newer than
// after.
type findingsWaiter struct {
	after time.Time
	ch    chan []byte // the findings data; capacity 1
}

// Lease takes the probe lease of key. It reports true if this daemon
// holds it (it must probe, publish, then Release), false if another does;
// an error (ErrDown, a timeout) means: probe locally.
func (f *Fleet) Lease(ctx context.Context, key string) (bool, error) {
	if !f.up.Load() {
		f.m.leases.WithLabelValues("local").Inc()
		return false, ErrDown
	}
	ctx, cancel := context.WithTimeout(ctx, leaseTimeout)
	defer cancel()
	f.m.ops.WithLabelValues("lease").Inc()
	held, err := f.rdb.SetNX(ctx, f.keys.lease(key), f.node, f.cfg.Lease).Result()
	switch {
	case err != nil:
		f.m.errors.WithLabelValues("lease").Inc()
		f.m.leases.WithLabelValues("local").Inc()
		return false, err
	case held:
		f.m.leases.WithLabelValues("held").Inc()
	default:
		f.m.leases.WithLabelValues("waited").Inc()
	}
	return held, nil
}

// Release gives the lease of key up, after the findings it was taken for
// (queued before it) are published.
func (f *Fleet) Release(key string) {
	f.offer(op{key: key, release: true})
}

// WaitFindings waits for a peer's findings of key gathered after after,
// while another daemon holds the lease. It returns false when the lease is
// gone without them (the holder failed or died: take the lease again),
// when Redis cannot be asked, or when ctx ends.
func (f *Fleet) WaitFindings(ctx context.Context, key string, after time.Time) ([]byte, bool) {
	w := &findingsWaiter{after: after, ch: make(chan []byte, 1)}
	f.mu.Lock()
	f.waiters[key] = append(f.waiters[key], w)
	f.mu.Unlock()
	defer f.unwait(key, w)
	poll := time.NewTicker(leasePoll)
	defer poll.Stop()
	for {
		select {
		case data := <-w.ch:
			return data, true
		case <-poll.C:
			if !f.up.Load() {
				return nil, false
			}
			c, cancel := context.WithTimeout(ctx, leaseTimeout)
			n, err := f.rdb.Exists(c, f.keys.lease(key)).Result()
			cancel()
			if err != nil || n == 0 {
				// The findings may have come with the release.
				select {
				case data := <-w.ch:
					return data, true
				default:
				}
				return nil, false
			}
		case <-ctx.Done():
			return nil, false
		}
	}
}

func (f *Fleet) unwait(key string, w *findingsWaiter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ws := f.waiters[key]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(f.waiters, key)
	} else {
		f.waiters[key] = ws
	}
}

// wake hands findings of key gathered at version to the probes waiting
// for newer ones.
func (f *Fleet) wake(key string, version time.Time, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.waiters[key] {
		if version.After(w.after) {
			select {
			case w.ch <- data:
			default:
			}
		}
	}
}
