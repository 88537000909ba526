package policyd

import (
	"context"
	"slices"
	"time"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// StoredViews describes every destination the state file knows (answered
// for or probed within state.history), as the running daemon would show
// it, from the file alone: for `tlspolicyd report` while no daemon runs.
func StoredViews(rs *rules.Rules, store *state.Bolt, now time.Time) ([]DestinationView, error) {
	pins, err := store.Pins()
	if err != nil {
		return nil, err
	}
	since := now.Add(-rs.Settings.HistoryTTL)
	// The store keeps findings while they are fresh, as the daemon's
	// memory does; one that does not decode is left out, as the daemon
	// leaves it out of its memory.
	src := storedFindings{}
	intern := map[string]string{}
	err = store.Probes(now, 0, func(p state.Probe) error {
		var f Findings
		if decodeFindings(p.Findings, &f, intern) == nil {
			src[p.Key] = f
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	e := NewEngine(rs, src)
	e.UsePins(pins, rs.Settings.PinTTL)
	names, err := store.DecisionDestinations(since)
	if err != nil {
		return nil, err
	}
	names = append(names, src.Keys()...)
	for _, p := range pins {
		names = append(names, p.Key)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	views := make([]DestinationView, 0, len(names))
	for _, n := range names {
		v := e.View(n)
		hist, err := store.Decisions(v.Destination, historyShown)
		if err != nil {
			return nil, err
		}
		v.Downgrades30d = downgradesSince(hist, now.Add(-30*24*time.Hour))
		views = append(views, v)
	}
	return views, nil
}

// FindingsView describes what a probe gathered for destination as the
// rules would answer with it (for `tlspolicyd probe -json`).
func FindingsView(rs *rules.Rules, destination string, t tlsprobe.Target, f Findings) DestinationView {
	return NewEngine(rs, storedFindings{t.Key(): f}).View(destination)
}

// storedFindings is a FindingsSource of findings read from the store.
type storedFindings map[string]Findings

func (s storedFindings) Get(t tlsprobe.Target) (Findings, bool) {
	f, ok := s[t.Key()]
	return f, ok
}
func (s storedFindings) Lookup(_ context.Context, t tlsprobe.Target) (Findings, bool) {
	return s.Get(t)
}
func (s storedFindings) Peek(t tlsprobe.Target) (Findings, bool) { return s.Get(t) }
func (storedFindings) Prefetch(tlsprobe.Target)                  {}
func (s storedFindings) Keys() []string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	return keys
}
