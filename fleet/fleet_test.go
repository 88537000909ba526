package fleet

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tlspolicyd/tlspolicyd/internal/redistest"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

// fakeLocal is a daemon's memory as the fleet sees it.
type fakeLocal struct {
	mu        sync.Mutex
	pins      map[string]state.Pin
	findings  map[string]fakeFindings
	decisions []state.Decision
}

func (l *fakeLocal) AddDecisions(ds []state.Decision) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.decisions = append(l.decisions, ds...)
}

type fakeFindings struct {
	version time.Time
	data    []byte
}

func newFakeLocal() *fakeLocal {
	return &fakeLocal{pins: map[string]state.Pin{}, findings: map[string]fakeFindings{}}
}

func (l *fakeLocal) Pins() []state.Pin {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []state.Pin
	for _, p := range l.pins {
		out = append(out, p)
	}
	return out
}

func (l *fakeLocal) Pin(key string) (state.Pin, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.pins[key]
	return p, ok
}

func (l *fakeLocal) MergePin(p state.Pin) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.pins[p.Key]; !ok || Beats(p, old, time.Now()) {
		l.pins[p.Key] = p
	}
}

func (l *fakeLocal) RemovePin(key string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p, ok := l.pins[key]; ok && !p.LastSeen.After(at) {
		delete(l.pins, key)
	}
}

func (l *fakeLocal) Findings(want func(string, time.Time) bool, put func(string, time.Time, []byte)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, f := range l.findings {
		if want(k, f.version) {
			put(k, f.version, f.data)
		}
	}
}

func (l *fakeLocal) PutFindings(key string, version time.Time, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if version.After(l.findings[key].version) {
		l.findings[key] = fakeFindings{version, append([]byte(nil), data...)}
	}
}

func (l *fakeLocal) level(key string) string {
	p, ok := l.Pin(key)
	if !ok {
		return ""
	}
	return p.Level
}

// startFleet links a fake daemon to the Redis at addr.
func startFleet(t *testing.T, addr string) (*Fleet, *fakeLocal) {
	t.Helper()
	f := New(Config{
		Redis:  rules.RedisSettings{Addrs: []string{addr}, Password: redistest.Password, KeyPrefix: "tlspolicyd:"},
		PinTTL: 24 * time.Hour, FindingsTTL: time.Hour, Lease: 3 * time.Second, Interval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: NewMetrics(prometheus.NewRegistry()),
	})
	l := newFakeLocal()
	f.Start(l)
	t.Cleanup(func() { f.Close() })
	return f, l
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newPin(key, level string, at time.Time) state.Pin {
	return state.Pin{Key: key, Level: level, FirstSeen: at, LastSeen: at, Expires: at.Add(24 * time.Hour), Source: "admin"}
}

// TestFleetPins: a pin reaches the other daemon; a removal too, and a
// stale copy does not bring it back; after Redis restarts empty, what the
// daemons know is back in Redis and a newcomer gets it.
func TestFleetPins(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.Options{})
	a, la := startFleet(t, srv.Addr)
	b, lb := startFleet(t, srv.Addr)
	eventually(t, 5*time.Second, "both connected", func() bool { return a.Status().Connected && b.Status().Connected })

	p := newPin("partner.test", "verify", time.Now())
	la.MergePin(p)
	a.PinChanged(p)
	eventually(t, 2*time.Second, "the pin on b", func() bool { return lb.level("partner.test") == "verify" })

	// The history: a's records reach b, not a itself.
	a.PublishDecisions([]state.Decision{{Time: time.Now(), Destination: "partner.test", Map: "tlspolicy", Answer: "verify"}})
	eventually(t, 3*time.Second, "a's decision on b", func() bool {
		lb.mu.Lock()
		defer lb.mu.Unlock()
		return len(lb.decisions) == 1 && lb.decisions[0].Answer == "verify"
	})
	la.mu.Lock()
	if len(la.decisions) != 0 {
		t.Errorf("a got its own decisions back: %+v", la.decisions)
	}
	la.mu.Unlock()

	// A weaker pin published later does not lower it.
	weak := newPin("partner.test", "encrypt", time.Now())
	b.PinChanged(weak)
	time.Sleep(500 * time.Millisecond) // what it could change, it would have by now
	if la.level("partner.test") != "verify" || lb.level("partner.test") != "verify" {
		t.Fatalf("a weaker pin lowered: a %q, b %q", la.level("partner.test"), lb.level("partner.test"))
	}

	// Removal on a: gone on b, and b's stale copy (confirmed before the
	// removal) does not come back on a.
	la.RemovePin("partner.test", time.Now())
	a.PinRemoved("partner.test", time.Now())
	eventually(t, 2*time.Second, "the removal on b", func() bool { return lb.level("partner.test") == "" })
	b.PinChanged(p)
	time.Sleep(500 * time.Millisecond)
	if la.level("partner.test") != "" {
		t.Fatalf("a stale copy resurrected the removed pin on a")
	}

	// Redis restarts empty: a pin added meanwhile and the findings are
	// pushed back; a newcomer gets both.
	srv.Stop()
	q := newPin("other.test", "encrypt", time.Now())
	lb.MergePin(q)
	b.PinChanged(q)
	la.PutFindings("probed.test", time.Now(), []byte("findings"))
	eventually(t, 5*time.Second, "a sees Redis down", func() bool { return !a.Status().Connected })
	srv.Restart(t)
	start := time.Now()
	eventually(t, 10*time.Second, "a has b's pin", func() bool { return la.level("other.test") == "encrypt" })
	eventually(t, 10*time.Second, "b has a's findings", func() bool {
		lb.mu.Lock()
		defer lb.mu.Unlock()
		return string(lb.findings["probed.test"].data) == "findings"
	})
	t.Logf("caught up %v after Redis came back", time.Since(start))
	_, lc := startFleet(t, srv.Addr)
	eventually(t, 5*time.Second, "a newcomer has the pin", func() bool { return lc.level("other.test") == "encrypt" })
}

// TestFleetLease: one daemon holds a destination's lease; the other
// waits and gets its findings; with the lease gone and no findings, the
// waiter is told to probe.
func TestFleetLease(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.Options{})
	a, _ := startFleet(t, srv.Addr)
	b, lb := startFleet(t, srv.Addr)
	eventually(t, 5*time.Second, "both connected", func() bool { return a.Status().Connected && b.Status().Connected })
	ctx := context.Background()
	if held, err := a.Lease(ctx, "dest.test"); !held || err != nil {
		t.Fatalf("a.Lease = %v, %v; want held", held, err)
	}
	if held, err := b.Lease(ctx, "dest.test"); held || err != nil {
		t.Fatalf("b.Lease = %v, %v; want held by a", held, err)
	}
	got := make(chan []byte, 1)
	go func() {
		data, _ := b.WaitFindings(ctx, "dest.test", time.Time{})
		got <- data
	}()
	time.Sleep(50 * time.Millisecond)
	a.PublishFindings("dest.test", time.Now(), []byte("probed"), true)
	a.Release("dest.test")
	if data := <-got; string(data) != "probed" {
		t.Fatalf("b waited and got %q, want a's findings", data)
	}
	lb.mu.Lock()
	kept := string(lb.findings["dest.test"].data)
	lb.mu.Unlock()
	if kept != "probed" {
		t.Errorf("b did not keep a's findings")
	}
	// The lease is free again (a's release goes through its writer, so
	// b may see the findings a moment before); a holder that releases
	// without findings sends the waiter to probe.
	eventually(t, 5*time.Second, "the lease released", func() bool {
		held, _ := b.Lease(ctx, "dest.test")
		return held
	})
	go func() {
		data, ok := a.WaitFindings(ctx, "dest.test", time.Now())
		if ok {
			got <- data
		} else {
			got <- nil
		}
	}()
	b.Release("dest.test")
	if data := <-got; data != nil {
		t.Errorf("a got %q; want to be told to probe", data)
	}
	// Redis down: no lease, probe locally, at once.
	srv.Stop()
	eventually(t, 5*time.Second, "a sees Redis down", func() bool { return !a.Status().Connected })
	if _, err := a.Lease(ctx, "other.test"); err == nil {
		t.Error("Lease with Redis down: no error; want one (probe locally)")
	}
}

// stallAfterSeq is a hook on a daemon's Redis client: once a command or
// pipeline that takes sequence numbers (INCRBY) has been answered, it
// signals taken and holds the pipelines that write the pins' hash or
// index until release is closed: a write in flight, between its
// sequence numbers and the rest, as a slow or preempted writer leaves it.
type stallAfterSeq struct {
	prefix  string
	taken   chan struct{}
	release chan struct{}
	once    sync.Once
	seen    atomic.Bool
}

func (h *stallAfterSeq) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *stallAfterSeq) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() == "incrby" && err == nil {
			h.seen.Store(true)
			h.once.Do(func() { close(h.taken) })
		}
		return err
	}
}

func (h *stallAfterSeq) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		stall := false
		for _, c := range cmds {
			if len(c.Args()) > 1 {
				k, _ := c.Args()[1].(string)
				stall = stall || k == h.prefix+"pins" || k == h.prefix+"pins:seq"
			}
		}
		if stall && h.seen.Load() {
			select {
			case <-h.release:
			case <-ctx.Done():
			}
		}
		return next(ctx, cmds)
	}
}

// TestFleetFullSyncInFlight: a daemon that compares everything while
// another's write is in flight (its sequence number taken, its value not
// yet in Redis) still gets the value. The write here is b's write-back of
// a full comparison, which publishes nothing: a's pulls must find it.
func TestFleetFullSyncInFlight(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.Options{})
	b := New(Config{
		Redis:  rules.RedisSettings{Addrs: []string{srv.Addr}, Password: redistest.Password, KeyPrefix: "tlspolicyd:"},
		PinTTL: 24 * time.Hour, FindingsTTL: time.Hour, Lease: 3 * time.Second, Interval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: NewMetrics(prometheus.NewRegistry()),
	})
	h := &stallAfterSeq{prefix: "tlspolicyd:", taken: make(chan struct{}), release: make(chan struct{})}
	b.rdb.AddHook(h)
	lb := newFakeLocal()
	q := newPin("other.test", "encrypt", time.Now())
	lb.MergePin(q)
	b.Start(lb) // its first full comparison writes q back
	t.Cleanup(func() { b.Close() })
	defer func() {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
	}()
	select {
	case <-h.taken:
	case <-time.After(5 * time.Second):
		t.Fatal("b took no sequence number")
	}
	a, la := startFleet(t, srv.Addr)
	eventually(t, 5*time.Second, "a connected", func() bool { return a.Status().Connected })
	close(h.release)
	eventually(t, 3*time.Second, "a has b's pin", func() bool { return la.level("other.test") == "encrypt" })
}

// failIndexOnce is a hook on a daemon's Redis client that fails, without
// sending it, the first pipeline that writes the pins' index: a write cut
// off after its value and sequence number, before its index entry.
type failIndexOnce struct {
	key    string
	failed atomic.Bool
}

func (h *failIndexOnce) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *failIndexOnce) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h *failIndexOnce) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if c.Name() != "zadd" || len(c.Args()) < 2 {
				continue
			}
			if k, _ := c.Args()[1].(string); k == h.key && h.failed.CompareAndSwap(false, true) {
				return errors.New("connection lost (test)")
			}
		}
		return next(ctx, cmds)
	}
}

// TestFleetPartialWrite: a write-back whose value reached Redis but whose
// index entry did not is written again, so that a daemon that compared
// everything before it (and now only pulls) gets it.
func TestFleetPartialWrite(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.Options{})
	a, la := startFleet(t, srv.Addr)
	eventually(t, 5*time.Second, "a connected", func() bool { return a.Status().Connected })
	b := New(Config{
		Redis:  rules.RedisSettings{Addrs: []string{srv.Addr}, Password: redistest.Password, KeyPrefix: "tlspolicyd:"},
		PinTTL: 24 * time.Hour, FindingsTTL: time.Hour, Lease: 3 * time.Second, Interval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: NewMetrics(prometheus.NewRegistry()),
	})
	h := &failIndexOnce{key: "tlspolicyd:pins:seq"}
	b.rdb.AddHook(h)
	lb := newFakeLocal()
	lb.MergePin(newPin("other.test", "encrypt", time.Now()))
	b.Start(lb)
	t.Cleanup(func() { b.Close() })
	eventually(t, 5*time.Second, "b's write cut off", h.failed.Load)
	eventually(t, 3*time.Second, "a has b's pin", func() bool { return la.level("other.test") == "encrypt" })
}
