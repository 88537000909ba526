package ratelog

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
)

// fakeClock is a clock whose time moves only when the test says, and
// whose timers fire then.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	f  func()
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timers = append(c.timers, fakeTimer{c.now.Add(d), f})
}

// Advance moves the time on by d and runs the timers that are then due,
// one after the other.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []func()
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			due = append(due, t.f)
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
}

// pending is the number of timers not yet fired.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// newTest returns a Handler over a JSON handler at level, with the fake
// clock and opts, and the buffer it writes to.
func newTest(level slog.Leveler, opts Options) (*Handler, *fakeClock, *testlog.Buffer) {
	clock := newFakeClock()
	opts.Now, opts.AfterFunc = clock.Now, clock.AfterFunc
	buf := &testlog.Buffer{}
	return New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: level}), opts), clock, buf
}

// record is one line of the log.
type record map[string]any

// records parses buf, checking that no line repeats an attribute.
func records(t *testing.T, buf *testlog.Buffer) []record {
	t.Helper()
	var out []record
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		if dups := testlog.DuplicateKeys(line); dups != nil {
			t.Errorf("log line repeats %q: %s", dups, line)
		}
		var r record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		out = append(out, r)
	}
	return out
}

// count returns how many records have msg, and the summaries by kind.
func count(recs []record, msg string) (n int, summaries []record) {
	for _, r := range recs {
		switch r["msg"] {
		case msg:
			n++
		case SummaryMessage:
			summaries = append(summaries, r)
		}
	}
	return n, summaries
}

func TestBurstThenSummary(t *testing.T) {
	t.Parallel()
	h, clock, buf := newTest(slog.LevelInfo, Options{Burst: 3, Interval: time.Minute})
	log := slog.New(h)
	for i := range 10 {
		log.Warn("bad request", "i", i)
	}
	recs := records(t, buf)
	if n, sums := count(recs, "bad request"); n != 3 || len(sums) != 0 {
		t.Fatalf("10 warnings within the interval: %d written and %d summaries, want 3 and none (the interval is not over)\n%s", n, len(sums), buf)
	}
	if got := recs[2]["i"]; got != 2.0 {
		t.Errorf("third record has i=%v, want the first three written", got)
	}

	clock.Advance(59 * time.Second)
	if _, sums := count(records(t, buf), "bad request"); len(sums) != 0 {
		t.Fatalf("summary before the interval ended:\n%s", buf)
	}
	clock.Advance(time.Second)
	_, sums := count(records(t, buf), "bad request")
	want := record{"level": "WARN", "suppressed": 7.0, "kind": "bad request", "interval": float64(time.Minute)}
	if len(sums) != 1 || !hasFields(sums[0], want) {
		t.Fatalf("at the end of the interval: summaries %v, want one with %v", sums, want)
	}
	if got := sums[0]["time"]; got != clock.Now().Format(time.RFC3339) {
		t.Errorf("summary time %v, want the clock's %v", got, clock.Now())
	}

	// A new interval has a new budget.
	for range 5 {
		log.Warn("bad request")
	}
	if n, _ := count(records(t, buf), "bad request"); n != 6 {
		t.Errorf("after the interval: %d written in all, want 3 + 3", n)
	}
}

// A record that arrives after the interval ended, before its timer fires,
// reports the summary itself; the timer then writes nothing more.
func TestSummaryByNextRecord(t *testing.T) {
	t.Parallel()
	h, clock, buf := newTest(slog.LevelInfo, Options{Burst: 1, Interval: time.Minute})
	log := slog.New(h)
	log.Error("store failed")
	log.Error("store failed")
	log.Error("store failed")

	clock.mu.Lock()
	clock.now = clock.now.Add(2 * time.Minute) // without firing the timer
	clock.mu.Unlock()
	log.Error("store failed", "after", true)
	recs := records(t, buf)
	if len(recs) != 3 || recs[1]["msg"] != SummaryMessage || recs[1]["suppressed"] != 2.0 || recs[1]["level"] != "ERROR" || recs[2]["after"] != true {
		t.Fatalf("want the first record, the summary of 2 at ERROR, then the new record:\n%s", buf)
	}
	clock.Advance(0) // the old timer
	if got := len(records(t, buf)); got != 3 {
		t.Errorf("the old interval's timer wrote again:\n%s", buf)
	}
}

func TestKindsApart(t *testing.T) {
	t.Parallel()
	h, clock, buf := newTest(slog.LevelDebug, Options{Burst: 2})
	log := slog.New(h)
	for range 5 {
		log.Warn("a")
		log.Warn("b")
		log.Error("a") // the same message at another level is another kind
		log.Info("c")  // never limited
		log.Debug("d") // never limited
	}
	recs := records(t, buf)
	for _, tc := range []struct {
		msg, level string
		want       int
	}{{"a", "WARN", 2}, {"b", "WARN", 2}, {"a", "ERROR", 2}, {"c", "INFO", 5}, {"d", "DEBUG", 5}} {
		n := 0
		for _, r := range recs {
			if r["msg"] == tc.msg && r["level"] == tc.level {
				n++
			}
		}
		if n != tc.want {
			t.Errorf("%s %q: %d written, want %d", tc.level, tc.msg, n, tc.want)
		}
	}
	clock.Advance(DefaultInterval)
	var got []string
	for _, r := range records(t, buf) {
		if r["msg"] == SummaryMessage {
			got = append(got, fmt.Sprintf("%v %v %v", r["level"], r["kind"], r["suppressed"]))
		}
	}
	if want := []string{"WARN a 3", "WARN b 3", "ERROR a 3"}; !sameSet(got, want) {
		t.Errorf("summaries %q, want %q", got, want)
	}
}

func TestUnlimited(t *testing.T) {
	t.Parallel()
	h, clock, buf := newTest(slog.LevelInfo, Options{Burst: 1})
	log := slog.New(h)
	ctx := Unlimited(context.Background())
	for i := range 5 {
		log.WarnContext(ctx, "configuration", "warning", i)
	}
	log.Warn("configuration") // the budget is untouched
	clock.Advance(DefaultInterval)
	if n, sums := count(records(t, buf), "configuration"); n != 6 || len(sums) != 0 {
		t.Errorf("%d written, %d summaries; want all 6 and none:\n%s", n, len(sums), buf)
	}
}

// Derived loggers (With, WithGroup) keep their attributes and share the
// budget; the summary carries none of their attributes.
func TestDerivedShareBudget(t *testing.T) {
	t.Parallel()
	h, clock, buf := newTest(slog.LevelInfo, Options{Burst: 2})
	base := slog.New(h)
	for i := range 4 {
		base.With("protocol", "socketmap", "remote", fmt.Sprint("127.0.0.1:", i)).WithGroup("g").Warn("bad request", "err", "x")
	}
	clock.Advance(DefaultInterval)
	recs := records(t, buf)
	if len(recs) != 3 {
		t.Fatalf("want 2 records and a summary:\n%s", buf)
	}
	if recs[0]["protocol"] != "socketmap" || recs[1]["remote"] != "127.0.0.1:1" || recs[1]["g"].(map[string]any)["err"] != "x" {
		t.Errorf("the written records lost attributes:\n%s", buf)
	}
	if s := recs[2]; s["msg"] != SummaryMessage || s["suppressed"] != 2.0 || s["protocol"] != nil {
		t.Errorf("summary %v, want suppressed=2 and no connection attributes", s)
	}
}

// Records the wrapped handler does not log (below log.level) are not
// counted, and their summaries are not written.
func TestLevelFilter(t *testing.T) {
	t.Parallel()
	var level slog.LevelVar
	level.Set(slog.LevelError)
	h, clock, buf := newTest(&level, Options{Burst: 1})
	log := slog.New(h)
	for range 3 {
		log.Warn("w")
	}
	level.Set(slog.LevelInfo) // a reload lowers it
	log.Warn("w")
	clock.Advance(DefaultInterval)
	if n, sums := count(records(t, buf), "w"); n != 1 || len(sums) != 0 {
		t.Errorf("%d written, %d summaries; want the one warning logged at level warn, nothing suppressed:\n%s", n, len(sums), buf)
	}
}

func TestMaxKinds(t *testing.T) {
	t.Parallel()
	h, clock, buf := newTest(slog.LevelInfo, Options{Burst: 2, MaxKinds: 3})
	log := slog.New(h)
	for i := range 10 {
		for range 3 {
			log.Warn(fmt.Sprint("message ", i))
		}
	}
	h.l.mu.Lock()
	tracked := len(h.l.windows)
	h.l.mu.Unlock()
	if tracked > 4 {
		t.Errorf("%d kinds tracked, want at most 3 and the shared one", tracked)
	}
	clock.Advance(DefaultInterval)
	recs := records(t, buf)
	written := 0
	suppressed := map[string]float64{}
	for _, r := range recs {
		if r["msg"] == SummaryMessage {
			suppressed[r["kind"].(string)] = r["suppressed"].(float64)
		} else {
			written++
		}
	}
	// Messages 0-2 are tracked: 2 each written, 1 each suppressed. The 7
	// others share one budget: 2 of their 21 written, 19 suppressed.
	want := map[string]float64{"message 0": 1, "message 1": 1, "message 2": 1, OtherKinds: 19}
	if written != 8 || fmt.Sprint(suppressed) != fmt.Sprint(want) {
		t.Errorf("%d written, suppressed %v; want 8 and %v\n%s", written, suppressed, want, buf)
	}

	// Once their intervals are over, windows that suppressed nothing (and
	// so have no timer to remove them) make room for new kinds.
	for i := range 3 {
		log.Warn(fmt.Sprint("quiet ", i))
	}
	log.Warn("early") // the table is full, and no window has ended
	clock.Advance(DefaultInterval)
	log.Warn("late")
	h.l.mu.Lock()
	_, early := h.l.windows[kind{level: slog.LevelWarn, msg: "early"}]
	_, late := h.l.windows[kind{level: slog.LevelWarn, msg: "late"}]
	h.l.mu.Unlock()
	if early || !late {
		t.Errorf("tracked on its own: %q %v, %q %v; want only the one after the intervals ended", "early", early, "late", late)
	}
}

func TestFlush(t *testing.T) {
	t.Parallel()
	h, clock, buf := newTest(slog.LevelInfo, Options{Burst: 1})
	log := slog.New(h)
	for range 4 {
		log.Warn("b")
		log.Error("a")
		log.Warn("a")
	}
	log.Warn("once")
	h.Flush()
	var got []string
	for _, r := range records(t, buf) {
		if r["msg"] == SummaryMessage {
			got = append(got, fmt.Sprintf("%v %v %v", r["level"], r["kind"], r["suppressed"]))
		}
	}
	if want := []string{"WARN a 3", "WARN b 3", "ERROR a 3"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Flush wrote %q, want %q in order of level and kind", got, want)
	}
	before := buf.String()
	clock.Advance(DefaultInterval) // the timers find their windows gone
	h.Flush()
	if buf.String() != before {
		t.Errorf("after Flush, the timers or a second Flush wrote:\n%s", strings.TrimPrefix(buf.String(), before))
	}
	if clock.pending() != 0 {
		t.Errorf("%d timers left", clock.pending())
	}
}

// TestTextFormat: the summary reads as the package documentation shows.
func TestTextFormat(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	buf := &testlog.Buffer{}
	h := New(slog.NewTextHandler(buf, nil), Options{Burst: 1, Now: clock.Now, AfterFunc: clock.AfterFunc})
	log := slog.New(h).With("protocol", "socketmap")
	log.Warn("bad socketmap request; closing connection")
	log.Warn("bad socketmap request; closing connection")
	clock.Advance(DefaultInterval)
	want := `level=WARN msg="suppressed repeated log records" suppressed=1 kind="bad socketmap request; closing connection" interval=1m0s`
	if !strings.Contains(buf.String(), want) {
		t.Errorf("log:\n%s\nwant a line with %s", buf, want)
	}
}

// TestConcurrent: under -race, many goroutines logging at once; every
// record is either written or counted in a summary.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	h, _, buf := newTest(slog.LevelInfo, Options{Burst: 5})
	const goroutines, each = 8, 200
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := slog.New(h).With("g", g)
			for i := range each {
				log.Warn(fmt.Sprint("kind ", i%3))
				log.Info("info")
			}
		}()
	}
	wg.Wait()
	h.Flush()
	recs := records(t, buf)
	total := 0
	for _, r := range recs {
		switch r["msg"] {
		case SummaryMessage:
			total += int(r["suppressed"].(float64))
		case "info":
		default:
			total++
		}
	}
	if n, _ := count(recs, "info"); n != goroutines*each {
		t.Errorf("%d info records, want all %d", n, goroutines*each)
	}
	if total != goroutines*each {
		t.Errorf("written + suppressed = %d, want %d", total, goroutines*each)
	}
}

// BenchmarkWarn is the cost the limiter adds to a warning that is
// suppressed, and to an info record, which passes untouched.
func BenchmarkWarn(b *testing.B) {
	h := New(slog.NewTextHandler(io.Discard, nil), Options{})
	log := slog.New(h)
	b.Run("suppressed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			log.Warn("bad request")
		}
	})
	b.Run("info", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			log.Info("decision")
		}
	})
}

func hasFields(r, want record) bool {
	for k, v := range want {
		if r[k] != v {
			return false
		}
	}
	return true
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		if seen[s]--; seen[s] < 0 {
			return false
		}
	}
	return true
}
