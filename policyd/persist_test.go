package policyd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/tlspolicyd/tlspolicyd/internal/monoclock"
	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

const (
	testProbeTTL = 6 * time.Hour
	testPinTTL   = 30 * 24 * time.Hour
	tls12        = 0x0303
)

// stuckStore is a state store whose writes wait until release is closed,
// as a disk that stalls; enter hears of each write begun.
type stuckStore struct {
	state.Store // nil: any other method is not expected
	enter       chan struct{}
	release     chan struct{}
}

func (s *stuckStore) Apply(state.Changes) error {
	s.enter <- struct{}{}
	<-s.release
	return nil
}
func (s *stuckStore) PruneProbes(time.Time) (int, error) { return 0, nil }

// verified is findings of a destination whose MX hosts verify, gathered at.
func verified(at time.Time) Findings {
	return Findings{Probe: tlsprobe.Report{Capability: tlsprobe.CapVerify, ProbedAt: at,
		Hosts: []tlsprobe.HostReport{{Host: "mx.example.org", Capability: tlsprobe.CapVerify}}}}
}

// nxdomain is findings of a destination that does not exist.
func nxdomain(at time.Time) Findings {
	return Findings{Probe: tlsprobe.Report{Cause: tlsprobe.CauseNXDomain, ProbedAt: at}}
}

// TestMissDoesNotWaitForTheStore: a lookup that waits for a probe gets its
// answer while the store's write of what the probe learnt (a pin and
// findings) is stuck, and so does the next miss.
func TestMissDoesNotWaitForTheStore(t *testing.T) {
	t.Parallel()
	store := &stuckStore{enter: make(chan struct{}, 10), release: make(chan struct{})}
	log := &testlog.Buffer{}
	reg := prometheus.NewRegistry()
	book := newPinBook(store, testPinTTL, monoclock.New(nil), log.Logger(), reg)
	w := newStoreWriter(store, book, testProbeTTL, time.Now, log.Logger(), reg)
	w.start()
	gather := func(_ context.Context, _ tlsprobe.Target, _ Findings) Findings { return verified(time.Now()) }
	c := tlsprobe.NewCache(gather, tlsprobe.CacheConfig{TTL: testProbeTTL, NegativeTTL: time.Minute, DueTick: -1},
		onFindings(book, w, tls12))
	defer func() {
		c.Close()
		close(store.release)
		w.close()
	}()
	lookup := func(name string) time.Duration {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		if f, ok := c.Lookup(ctx, tlsprobe.Target{Name: name}); !ok || f.Probe.Capability != tlsprobe.CapVerify {
			t.Fatalf("lookup of %s: %+v, %v", name, f, ok)
		}
		return time.Since(start)
	}
	lookup("first.test")
	select {
	case <-store.enter: // the writer is now stuck writing first.test's pin and findings
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not write what the first probe learnt")
	}
	if took := lookup("second.test"); took > 5*time.Second {
		t.Errorf("a miss while the store is stuck took %v", took)
	}
	for _, key := range []string{"first.test", "second.test"} {
		if p, ok := book.get(key); !ok || p.Level != "verify" {
			t.Errorf("pin of %s in memory: %+v, %v; want verify", key, p, ok)
		}
	}
}

// storeTest is a findings cache wired to a real store as the daemon wires
// them, with a clock the test moves and a gatherer that answers what the
// test sets.
type storeTest struct {
	clock  *fakeClock
	store  *state.Bolt
	book   *pinBook
	w      *storeWriter
	c      *tlsprobe.Cache[Findings]
	log    *testlog.Buffer
	reg    *prometheus.Registry
	mu     sync.Mutex
	answer map[string]func(time.Time) Findings
}

func newStoreTest(t *testing.T) *storeTest {
	t.Helper()
	st := &storeTest{clock: &fakeClock{now: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}, log: &testlog.Buffer{},
		reg: prometheus.NewRegistry(), answer: map[string]func(time.Time) Findings{}}
	var err error
	if st.store, err = state.OpenBolt(filepath.Join(t.TempDir(), "state.db"), time.Second); err != nil {
		t.Fatal(err)
	}
	st.book = newPinBook(st.store, testPinTTL, monoclock.New(st.clock.Now), st.log.Logger(), st.reg)
	st.w = newStoreWriter(st.store, st.book, testProbeTTL, st.clock.Now, st.log.Logger(), st.reg)
	gather := func(_ context.Context, t tlsprobe.Target, _ Findings) Findings {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.answer[t.Name](st.clock.Now())
	}
	st.c = tlsprobe.NewCache(gather, tlsprobe.CacheConfig{TTL: testProbeTTL, NegativeTTL: time.Minute, DueTick: -1, Clock: monoclock.New(st.clock.Now)},
		onFindings(st.book, st.w, tls12))
	t.Cleanup(func() {
		st.c.Close()
		st.w.close()
		st.store.Close()
	})
	return st
}

func (st *storeTest) set(name string, f func(time.Time) Findings) {
	st.mu.Lock()
	st.answer[name] = f
	st.mu.Unlock()
}

// lookup looks name up, waiting for its probe.
func (st *storeTest) lookup(t *testing.T, name string) Findings {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, ok := st.c.Lookup(ctx, tlsprobe.Target{Name: name})
	if !ok {
		t.Fatalf("no findings for %s", name)
	}
	return f
}

// stored lists the store's findings unexpired at the clock's now, as
// "key capability".
func (st *storeTest) stored(t *testing.T) []string {
	t.Helper()
	var out []string
	err := st.store.Probes(st.clock.Now(), 0, func(p state.Probe) error {
		var f Findings
		if err := f.UnmarshalBinary(p.Findings); err != nil {
			return err
		}
		out = append(out, p.Key+" "+f.Probe.Capability.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestStoreKeepsWhatIsWorthKeeping: good findings and the pins they give
// are stored; failed findings are not, and a failed refresh does not
// remove the good findings it did not replace; findings go probe.ttl after
// they were gathered and pins at their expiry.
func TestStoreKeepsWhatIsWorthKeeping(t *testing.T) {
	t.Parallel()
	st := newStoreTest(t)
	st.set("good.test", verified)
	st.set("nx.test", nxdomain)
	st.lookup(t, "good.test")
	st.lookup(t, "nx.test")
	st.w.drain()
	if got, want := st.stored(t), []string{"good.test verify"}; !slices.Equal(got, want) {
		t.Errorf("stored findings %q, want %q (no failed probe)", got, want)
	}

	// Three quarters into probe.ttl a lookup refreshes good.test, and the
	// refresh fails: the cache keeps the good findings, and so does the
	// store.
	refreshed := make(chan struct{})
	st.set("good.test", func(now time.Time) Findings {
		close(refreshed)
		return nxdomain(now)
	})
	st.clock.advance(testProbeTTL*3/4 + time.Minute)
	st.c.Get(tlsprobe.Target{Name: "good.test"})
	select {
	case <-refreshed:
	case <-time.After(10 * time.Second):
		t.Fatal("no refresh")
	}
	st.c.Close() // waits for the refresh to be stored
	st.w.drain()
	if f, ok := st.c.Peek(tlsprobe.Target{Name: "good.test"}); !ok || f.Probe.Capability != tlsprobe.CapVerify {
		t.Fatalf("the cache after the failed refresh: %+v, %v", f, ok)
	}
	if got, want := st.stored(t), []string{"good.test verify"}; !slices.Equal(got, want) {
		t.Errorf("stored findings after a failed refresh: %q, want %q", got, want)
	}

	// probe.ttl after good.test was gathered, its findings are pruned.
	st.clock.advance(testProbeTTL / 4)
	st.w.prune()
	if n := countProbes(t, st.store); n != 0 {
		t.Errorf("%d findings stored after they expired", n)
	}
	// The pin good.test's probe left goes at its expiry.
	if pins, _ := st.store.Pins(); len(pins) != 1 || pins[0].Key != "good.test" {
		t.Fatalf("stored pins %+v, want good.test's", pins)
	}
	st.clock.advance(testPinTTL)
	st.w.prune()
	st.w.drain()
	if pins, _ := st.store.Pins(); len(pins) != 0 {
		t.Errorf("stored pins after their expiry: %+v", pins)
	}
	if n := len(st.book.list()); n != 0 {
		t.Errorf("%d pins in memory after their expiry", n)
	}
	if !strings.Contains(st.log.String(), "expired_pins=1") {
		t.Errorf("the pruning is not logged:\n%s", st.log)
	}
}

// countProbes counts the findings the store holds, expired or not.
func countProbes(t *testing.T, s *state.Bolt) int {
	t.Helper()
	n := 0
	if err := s.Probes(time.Time{}, 0, func(state.Probe) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFindingsQueueFull: findings that do not fit in the writer's queue
// are dropped, counted, and warned about once per episode; pins are not.
func TestFindingsQueueFull(t *testing.T) {
	t.Parallel()
	st := newStoreTest(t) // the writer is not started: nothing empties the queue
	now := st.clock.Now()
	for i := range findingsQueueLen + 10 {
		st.w.offer(fmt.Sprintf("d%d.test", i), verified(now))
	}
	st.book.learn("pinned.test", verified(now).Probe, tls12)
	dropped := st.w.q.dropped
	if n := testutil.ToFloat64(dropped); n != 10 {
		t.Errorf("dropped %v, want 10", n)
	}
	if n := strings.Count(st.log.String(), "tlspolicyd_findings_dropped_total"); n != 1 {
		t.Errorf("%d warnings for 10 findings dropped, want 1:\n%s", n, st.log)
	}
	st.w.drain()
	if n := countProbes(t, st.store); n != findingsQueueLen {
		t.Errorf("%d findings stored, want the %d queued", n, findingsQueueLen)
	}
	if pins, _ := st.store.Pins(); len(pins) != 1 {
		t.Errorf("stored pins %+v, want pinned.test's", pins)
	}
	// Caught up: the next time the queue overflows, it says so again.
	for i := range findingsQueueLen + 1 {
		st.w.offer(fmt.Sprintf("again%d.test", i), verified(now))
	}
	if n := strings.Count(st.log.String(), "tlspolicyd_findings_dropped_total"); n != 2 {
		t.Errorf("%d warnings after a second overflow, want 2", n)
	}
}

// failingStore fails the first writes, then passes them to a real store.
type failingStore struct {
	*state.Bolt
	mu    sync.Mutex
	fails int
}

func (s *failingStore) Apply(c state.Changes) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fails > 0 {
		s.fails--
		return errors.New("disk full")
	}
	return s.Bolt.Apply(c)
}

// TestPinWriteRetried: a pin whose write fails is in force anyway, the
// administrator is told, and the next write stores it.
func TestPinWriteRetried(t *testing.T) {
	t.Parallel()
	bs, err := state.OpenBolt(filepath.Join(t.TempDir(), "state.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	store := &failingStore{Bolt: bs, fails: 1}
	b, _, _ := newTestPinBook(t, store)
	if _, _, err := b.add("partner.test", "verify", false); err == nil || !strings.Contains(err.Error(), "in force") {
		t.Errorf("add with the store failing: %v, want an error saying the pin is in force", err)
	}
	if _, ok := b.get("partner.test"); !ok {
		t.Error("the pin is not in force")
	}
	if !b.hasDirty() {
		t.Fatal("the pin is not waiting to be written again")
	}
	if err := b.flush(nil); err != nil {
		t.Fatal(err)
	}
	if pins, _ := bs.Pins(); len(pins) != 1 || pins[0].Key != "partner.test" {
		t.Errorf("stored pins %+v", pins)
	}
	if n := testutil.ToFloat64(b.metrics.storeErrors); n != 1 {
		t.Errorf("store errors %v, want 1", n)
	}
}

// TestRestoreFindings: at start the cache gets the stored findings that
// expire last, as many as it holds; one that does not decode is skipped.
func TestRestoreFindings(t *testing.T) {
	t.Parallel()
	st := newStoreTest(t)
	now := st.clock.Now()
	var probes []state.Probe
	for i := range 40 {
		f := verified(now.Add(-time.Duration(i) * time.Minute))
		b, _ := f.MarshalBinary()
		probes = append(probes, state.Probe{Key: fmt.Sprintf("d%02d.test", i), Expires: f.Gathered().Add(testProbeTTL), Findings: b})
	}
	probes = append(probes, state.Probe{Key: "bad.test", Expires: now.Add(7 * time.Hour), Findings: []byte{99}})
	if err := st.store.PutProbes(probes...); err != nil {
		t.Fatal(err)
	}
	c := tlsprobe.NewCache(func(context.Context, tlsprobe.Target, Findings) Findings { return Findings{} },
		tlsprobe.CacheConfig{Size: 16, TTL: testProbeTTL, NegativeTTL: time.Minute, DueTick: -1, Clock: monoclock.New(st.clock.Now)}, nil)
	defer c.Close()
	restored, skipped, err := restoreFindings(st.store, c, now)
	keys := c.Keys()
	if err != nil || skipped != 1 || restored != len(keys) || restored < 8 {
		t.Errorf("restoreFindings = %d, %d, %v with %d keys cached; want 1 skipped (bad.test), the rest restored as room allows",
			restored, skipped, err, len(keys))
	}
	// 16 records read: bad.test and the 15 that expire last. A shard that
	// fills keeps those that expire last.
	var newest []string
	for i := range 15 {
		newest = append(newest, fmt.Sprintf("d%02d.test", i))
	}
	for _, k := range keys {
		if !slices.Contains(newest, k) {
			t.Errorf("restored %s, which expires before those left out", k)
		}
	}
	if !slices.Contains(keys, "d00.test") {
		t.Errorf("the findings that expire last were not restored: %q", keys)
	}
}

// TestDaemonMigratesLegacyFindings: a store written by a release before
// the compact format (JSON findings of every probe, failed ones included)
// opens with the fresh good findings moved and the rest dropped.
func TestDaemonMigratesLegacyFindings(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	now := time.Now()
	good := verified(now.Add(-time.Hour))
	good.Probe.Capability, good.Probe.Cause = tlsprobe.CapEncrypt, tlsprobe.CauseUnknownAuthority
	legacy := map[string]Findings{
		"good.test":    good,
		"nx.test":      nxdomain(now),
		"expired.test": verified(now.Add(-7 * time.Hour)),
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("probes"))
		if err != nil {
			return err
		}
		for k, f := range legacy {
			v, _ := json.Marshal(f)
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return b.Put([]byte("garbage.test"), []byte("{not json"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	log := &testlog.Buffer{}
	p := mustLoad(t, "defaults: {level: may, upgrade: verify}\nprobe: {wait: 0s}\n")
	p.Settings.StatePath = path
	reg := prometheus.NewRegistry()
	d, err := NewDaemon(p, Options{Registerer: reg, Gatherer: reg, Logger: log.Logger(), Probe: ProbeDeps{Resolver: offlineResolver{}}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	for _, want := range []string{"kept=1 dropped=3", "probe_results=1"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the log does not say %q:\n%s", want, log)
		}
	}
	if got := d.Engine.LookupTable(context.Background(), "tlspolicy", []byte("good.test")); got.Text != "encrypt protocols=>=TLSv1.2" {
		t.Errorf("good.test = %q, want its migrated findings' encrypt", got.Text)
	}
}
