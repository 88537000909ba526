// Package ratelog limits how often the daemon's log repeats itself. A client
// that floods a listener with bad requests, or with connections past the
// cap, makes the daemon log the same warning for each; unlimited, that
// fills the disk (tens of megabytes a minute) and buries everything else.
//
// Handler wraps a log/slog handler. Records at slog.LevelWarn and above are
// counted per kind, a kind being the level and the message (the messages
// of this code base are constant strings; the details are attributes). Of
// each kind, the first Burst records of an interval are written; the rest
// are counted, and when the interval ends one summary record at the kind's
// level says how many were suppressed:
//
//	level=WARN msg="suppressed repeated log records" suppressed=1234 kind="bad socketmap request; closing connection" interval=1m0s
//
// What is limited, and why:
//   - Debug and Info records are never limited. At Info the daemon logs
//     what the operator asked for (log.decisions: the record of every
//     changed answer, or of every lookup) and events that are each worth
//     keeping (a pin added, a recipient refused); their volume follows the
//     mail traffic, not a misbehaving client.
//   - Warn and Error records are limited per kind. A warning or error that
//     is rare is never lost: each kind has its own budget, so the first
//     records of every kind in every interval are written, whatever floods
//     the log at the same time. Only the repeats beyond the budget are
//     dropped, and the summary keeps their count.
//   - A record logged with a context from Unlimited is written whatever the
//     budget: for records that share one message but each say something
//     different, and whose number no client controls (the warnings of a
//     configuration file, one downgrade detection per destination).
//
// The number of kinds tracked is bounded (MaxKinds): should messages ever
// carry variable text, the kinds beyond the bound share one budget per
// level, summarised as kind "(other messages)", rather than growing memory
// or escaping the limit.
package ratelog

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Defaults of Options.
const (
	DefaultBurst    = 10
	DefaultInterval = time.Minute
	DefaultMaxKinds = 100
)

// SummaryMessage is the message of the record that reports suppressed
// records; its attributes are suppressed (the count), kind (the message of
// the records suppressed) and interval.
const SummaryMessage = "suppressed repeated log records"

// OtherKinds is the kind the summary names for records whose own kind was
// not tracked because MaxKinds were already.
const OtherKinds = "(other messages)"

// Options tune a Handler. Zero values take the defaults.
type Options struct {
	Burst    int           // records of one kind written per interval
	Interval time.Duration // how long a kind's budget lasts, from its first record
	MaxKinds int           // kinds tracked at once

	// The clock, which tests replace: Now tells the time, and AfterFunc
	// calls f in its own goroutine once d has passed (time.AfterFunc by
	// default). It must not call f before it returns.
	Now       func() time.Time
	AfterFunc func(d time.Duration, f func())
}

// Handler is a slog.Handler that limits repeated warnings and errors
// before passing records on. Handlers derived from it with WithAttrs and
// WithGroup share its budgets, so that a kind is counted across all the
// loggers (one per connection, say) that log it. It is safe for concurrent
// use.
type Handler struct {
	next slog.Handler
	l    *limiter
}

// limiter is the state every Handler derived from one New shares.
type limiter struct {
	root      slog.Handler // the handler given to New: summaries carry none of the derived attributes
	burst     int
	interval  time.Duration
	maxKinds  int
	now       func() time.Time
	afterFunc func(time.Duration, func())

	mu        sync.Mutex
	windows   map[kind]*window
	nextSweep time.Time // before then, no window can have ended (see track)
}

// kind is what records are counted by.
type kind struct {
	level slog.Level
	msg   string
	other bool // the shared budget of untracked kinds (msg is empty)
}

func (k kind) name() string {
	if k.other {
		return OtherKinds
	}
	return k.msg
}

// window is one kind's current interval.
type window struct {
	start      time.Time
	written    int
	suppressed int
}

// New returns a Handler that passes records on to next, limiting repeated
// warnings and errors as the package documentation says.
func New(next slog.Handler, opts Options) *Handler {
	l := &limiter{
		root:      next,
		burst:     cmp.Or(opts.Burst, DefaultBurst),
		interval:  cmp.Or(opts.Interval, DefaultInterval),
		maxKinds:  cmp.Or(opts.MaxKinds, DefaultMaxKinds),
		now:       opts.Now,
		afterFunc: opts.AfterFunc,
		windows:   make(map[kind]*window),
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.afterFunc == nil {
		l.afterFunc = func(d time.Duration, f func()) { time.AfterFunc(d, f) }
	}
	return &Handler{next: next, l: l}
}

// unlimitedKey marks a context whose records are never limited.
type unlimitedKey struct{}

// Unlimited returns a context with which records are written whatever
// their kind's budget (and are not counted in it).
func Unlimited(ctx context.Context) context.Context {
	return context.WithValue(ctx, unlimitedKey{}, true)
}

// Enabled reports whether the wrapped handler handles records at level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle passes r on unless its kind has used up its budget.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn || ctx != nil && ctx.Value(unlimitedKey{}) != nil {
		return h.next.Handle(ctx, r)
	}
	if !h.l.admit(r.Level, r.Message) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs returns a Handler whose records carry attrs, sharing h's budgets.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &Handler{next: h.next.WithAttrs(attrs), l: h.l}
}

// WithGroup returns a Handler that qualifies keys with name, sharing h's
// budgets.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), l: h.l}
}

// Flush writes the summary of every interval that has suppressed records
// now, without waiting for it to end, and starts those kinds afresh. The
// daemon calls it before it exits, so that no count is lost with it.
func (h *Handler) Flush() {
	l := h.l
	type pending struct {
		k kind
		n int
	}
	var out []pending
	l.mu.Lock()
	for k, w := range l.windows {
		if w.suppressed > 0 {
			out = append(out, pending{k, w.suppressed})
			delete(l.windows, k) // its timer finds it gone and does nothing
		}
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b pending) int {
		return cmp.Or(cmp.Compare(a.k.level, b.k.level), cmp.Compare(a.k.name(), b.k.name()))
	})
	now := l.now()
	for _, p := range out {
		l.summarize(p.k, p.n, now)
	}
}

// admit counts a record of the given level and message and reports whether
// it is to be written.
func (l *limiter) admit(level slog.Level, msg string) bool {
	now := l.now()
	l.mu.Lock()
	k := l.track(kind{level: level, msg: msg}, now)
	w := l.windows[k]
	ended := 0 // suppressed in the kind's previous interval, not yet reported
	if w != nil && now.Sub(w.start) >= l.interval {
		ended = w.suppressed
		w = nil // its timer, if any, finds it replaced and does nothing
	}
	if w == nil {
		w = &window{start: now}
		l.windows[k] = w
	}
	write := w.written < l.burst
	if write {
		w.written++
	} else if w.suppressed++; w.suppressed == 1 {
		// The summary must come when the interval ends, even if no
		// record of the kind follows to notice it.
		l.afterFunc(w.start.Add(l.interval).Sub(now), func() { l.expire(k, w) })
	}
	l.mu.Unlock()
	if ended > 0 {
		l.summarize(k, ended, now)
	}
	return write
}

// track returns k, or the shared kind of its level if k is not tracked
// and MaxKinds are. l.mu is held.
func (l *limiter) track(k kind, now time.Time) kind {
	if _, ok := l.windows[k]; ok || len(l.windows) < l.maxKinds {
		return k
	}
	if !now.Before(l.nextSweep) {
		l.sweep(now)
		if len(l.windows) < l.maxKinds {
			return k
		}
	}
	return kind{level: k.level, other: true}
}

// sweep forgets the windows that have ended with nothing suppressed (those
// that suppressed records go when their timer reports them), and notes
// when the next of the others ends, so that a full table is not swept
// again on every record before then. l.mu is held.
func (l *limiter) sweep(now time.Time) {
	l.nextSweep = now.Add(l.interval)
	for k, w := range l.windows {
		end := w.start.Add(l.interval)
		switch {
		case !now.Before(end) && w.suppressed == 0:
			delete(l.windows, k)
		case end.Before(l.nextSweep):
			l.nextSweep = end
		}
	}
}

// expire ends w, the window of k, when its interval is over, and reports
// what it suppressed; unless a record or Flush got there first.
func (l *limiter) expire(k kind, w *window) {
	l.mu.Lock()
	if l.windows[k] != w {
		l.mu.Unlock()
		return
	}
	delete(l.windows, k)
	n := w.suppressed
	l.mu.Unlock()
	l.summarize(k, n, l.now())
}

// summarize writes the summary of n suppressed records of kind k, at the
// kind's level, to the handler given to New.
func (l *limiter) summarize(k kind, n int, now time.Time) {
	ctx := context.Background()
	if !l.root.Enabled(ctx, k.level) {
		return
	}
	r := slog.NewRecord(now, k.level, SummaryMessage, 0)
	r.AddAttrs(slog.Int("suppressed", n), slog.String("kind", k.name()), slog.Duration("interval", l.interval))
	_ = l.root.Handle(ctx, r) // a handler that cannot write has nowhere to say so either
}
