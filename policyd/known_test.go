package policyd

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/tlspolicyd/tlspolicyd/internal/testlog"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
)

// knownNames lists a set's destinations in order.
func knownNames(s *knownSet) []string { return slices.Collect(s.list(nil).all()) }

// loadedSet is a set whose compact part holds names, each with newest t.
func loadedSet(t *testing.T, t0 int64, names ...string) *knownSet {
	t.Helper()
	var b knownBuilder
	for _, n := range names {
		if err := b.add([]byte(n), t0); err != nil {
			t.Fatal(err)
		}
	}
	return b.set()
}

func TestKnownSet(t *testing.T) {
	t.Parallel()
	s := loadedSet(t, 10, "b.test", "d.test", "f.test")
	s.touch("a.test", 5)
	s.touch("d.test", 20) // newer: kept
	s.touch("d.test", 1)  // older: ignored
	s.touch("e.test", 30)
	s.touch("e.test", 3)
	if got, want := knownNames(s), []string{"a.test", "b.test", "d.test", "e.test", "f.test"}; !slices.Equal(got, want) {
		t.Fatalf("destinations %q, want %q", got, want)
	}
	if s.len() != 5 || len(s.added) != 2 {
		t.Errorf("len %d with %d added, want 5 with 2", s.len(), len(s.added))
	}
	// At the prune: what is older than the cut-off goes, the rest is
	// compact.
	s.compact(10)
	if got, want := knownNames(s), []string{"b.test", "d.test", "e.test", "f.test"}; !slices.Equal(got, want) {
		t.Errorf("after compact(10): %q, want %q", got, want)
	}
	if len(s.added) != 0 || s.count() != 4 {
		t.Errorf("after compact: %d compact, %d added", s.count(), len(s.added))
	}
	if i, ok := s.find("e.test"); !ok || s.newest[i] != 30 {
		t.Errorf("e.test's newest record: %v, %v", ok, s.newest)
	}
	s.compact(21)
	if got := knownNames(s); !slices.Equal(got, []string{"e.test"}) {
		t.Errorf("after compact(21): %q", got)
	}

	// The map is merged into the compact part once it grows past its
	// share.
	s = loadedSet(t, 1)
	for i := range addedMin + 1 {
		s.touch(fmt.Sprintf("n%05d.test", addedMin-i), 1)
	}
	if len(s.added) != 0 || s.count() != addedMin+1 {
		t.Errorf("after %d destinations: %d compact, %d added", addedMin+1, s.count(), len(s.added))
	}
	if names := knownNames(s); !slices.IsSorted(names) || len(names) != addedMin+1 {
		t.Errorf("%d destinations, sorted %v", len(names), slices.IsSorted(names))
	}
}

func TestKnownListMergesAndPages(t *testing.T) {
	t.Parallel()
	s := loadedSet(t, 1, "b.test", "d.test", "f.test")
	s.touch("c.test", 2)
	// Others (findings in the cache, pins) overlap the history's.
	l := s.list([]string{"a.test", "c.test", "d.test", "g.test"})
	want := []string{"a.test", "b.test", "c.test", "d.test", "f.test", "g.test"}
	if got := slices.Collect(l.all()); !slices.Equal(got, want) || l.len() != len(want) {
		t.Fatalf("list %q (len %d), want %q", got, l.len(), want)
	}
	for _, tc := range []struct {
		q             string
		offset, limit int
		want          []string
		matches       int
	}{
		{"", 0, 0, want, 6},
		{"", 1, 2, []string{"b.test", "c.test"}, 6},
		{"", -5, 1, []string{"a.test"}, 6},
		{"", 5, 10, []string{"g.test"}, 6},
		{"", 9, 10, []string{}, 6},
		{" D.TEST ", 0, 0, []string{"d.test"}, 1},
		{"test", 4, 0, []string{"f.test", "g.test"}, 6},
		{"test", 1, 1, []string{"b.test"}, 6},
		{"nothing", 0, 10, []string{}, 0},
	} {
		got, matches := l.page(tc.q, tc.offset, tc.limit)
		if !slices.Equal(got, tc.want) || matches != tc.matches || got == nil {
			t.Errorf("page(%q, %d, %d) = %q, %d; want %q, %d", tc.q, tc.offset, tc.limit, got, matches, tc.want, tc.matches)
		}
	}
	// A list shares the set's compact part, which a later merge replaces
	// rather than changes.
	s.compact(minTime)
	if got := slices.Collect(l.all()); !slices.Equal(got, want) {
		t.Errorf("after the set changed, the list says %q", got)
	}
}

// slowHistory is a history store whose listing of destinations waits
// until release is closed, as a large one on a slow disk.
type slowHistory struct {
	HistoryStore
	release chan struct{}
}

func (s *slowHistory) WalkDecisionDestinations(since time.Time, fn func([]byte, time.Time) error) error {
	<-s.release
	return s.HistoryStore.WalkDecisionDestinations(since, fn)
}

// TestRecorderReadsDestinationsInTheBackground: the recorder starts
// without waiting for the destinations with history, records meanwhile,
// and then knows both those it read and those it recorded.
func TestRecorderReadsDestinationsInTheBackground(t *testing.T) {
	t.Parallel()
	store, err := state.OpenBolt(filepath.Join(t.TempDir(), "state.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	now := time.Now()
	if err := store.AppendDecisions(
		state.Decision{Time: now.Add(-time.Hour), Destination: "old.test", Map: "tlspolicy", Answer: "may"},
		state.Decision{Time: now.Add(-48 * time.Hour), Destination: "gone.test", Map: "tlspolicy", Answer: "may"}, // beyond state.history
	); err != nil {
		t.Fatal(err)
	}
	slow := &slowHistory{HistoryStore: store, release: make(chan struct{})}
	log := &testlog.Buffer{}
	h := newRecorder(slow, func() time.Duration { return 24 * time.Hour }, func() rules.DecisionLog { return rules.DecisionsNone },
		time.Now, log.Logger(), prometheus.NewRegistry())
	h.start()
	defer h.close()
	if h.listComplete() {
		t.Fatal("the list is complete before the history was read")
	}
	h.offer(state.Decision{Time: now, Destination: "new.test", Map: "tlspolicy", Answer: "verify"})
	eventually(t, func() bool { return slices.Contains(slices.Collect(h.destinations(nil).all()), "new.test") })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if h.waitList(ctx, time.Minute) {
		t.Error("waitList reports a list that is still being read")
	}
	close(slow.release)
	if !h.waitList(context.Background(), time.Minute) || !h.listComplete() {
		t.Fatal("the list is not complete after the history was read")
	}
	if got, want := slices.Collect(h.destinations([]string{"cache.test"}).all()), []string{"cache.test", "new.test", "old.test"}; !slices.Equal(got, want) {
		t.Errorf("destinations %q, want %q", got, want)
	}
	if !strings.Contains(log.String(), `msg="destinations of the decision history read" destinations=1`) {
		t.Errorf("the read is not logged:\n%s", log)
	}
}

// eventually waits for cond, for a few seconds at most.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("condition not met within 10s")
		}
	}
}

// getCtx is get with the request's context.
func getCtx(tb testing.TB, ctx context.Context, h http.Handler, path string) (*httptest.ResponseRecorder, string) {
	tb.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil).WithContext(ctx))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec, string(body)
}

// TestPagesWhileDestinationsAreRead: right after a start, while the
// destinations with history are still being read, the status page shows
// those known from memory and says the list is incomplete, and the API's
// list answers 503 with Retry-After; then both show every destination.
func TestPagesWhileDestinationsAreRead(t *testing.T) {
	t.Parallel()
	d := knownWorld(t, 1) // d000000.test, with findings in the cache
	if err := d.store.AppendDecisions(state.Decision{Time: time.Now(), Destination: "hist.test", Map: "tlspolicy", Answer: "may"}); err != nil {
		t.Fatal(err)
	}
	slow := &slowHistory{HistoryStore: d.history.store, release: make(chan struct{})}
	d.history.store = slow
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			close(slow.release)
			released = true
		}
	}
	t.Cleanup(release) // before knownWorld's shutdown, which waits for the read
	h := d.httpHandler()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	rec, body := getCtx(t, ctx, h, "/api/v1/destinations")
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || !strings.Contains(body, "still reading") {
		t.Errorf("GET /api/v1/destinations while reading: %d, Retry-After %q, %q", rec.Code, rec.Header().Get("Retry-After"), body)
	}
	rec, body = getCtx(t, ctx, h, "/")
	list := destinationsTable(body)
	if rec.Code != http.StatusOK || !strings.Contains(body, `id="partial"`) || !strings.Contains(list, "d000000.test") || strings.Contains(list, "hist.test") {
		t.Errorf("GET / while reading: %d, partial notice %v, list:\n%s", rec.Code, strings.Contains(body, `id="partial"`), list)
	}
	if !strings.Contains(body, `<p class="big">1</p>`) {
		t.Error("the count of destinations while reading is not the one known from memory")
	}
	// A destination page needs no list.
	if rec, _ := getCtx(t, ctx, h, "/api/v1/destinations/hist.test"); rec.Code != http.StatusOK {
		t.Errorf("GET /api/v1/destinations/hist.test while reading: %d", rec.Code)
	}

	// A request that arrives while the list is read waits for it.
	done := make(chan string)
	go func() {
		_, body := getCtx(t, context.Background(), h, "/api/v1/destinations")
		done <- body
	}()
	time.Sleep(20 * time.Millisecond)
	release()
	if body := <-done; !strings.Contains(body, `"destination":"d000000.test"`) || !strings.Contains(body, `"destination":"hist.test"`) {
		t.Errorf("GET /api/v1/destinations after reading: %s", body)
	}
	// The page and the summary built while reading are not reused.
	rec, body = getCtx(t, context.Background(), h, "/")
	if strings.Contains(body, `id="partial"`) || !strings.Contains(destinationsTable(body), "hist.test") || !strings.Contains(body, `<p class="big">2</p>`) {
		t.Errorf("GET / after reading: %d\n%s", rec.Code, body)
	}
}

// TestDaemonIndexesHistoryOfEarlierFile: a state file whose history was
// written by a release before the index is indexed once, at start, with a
// log line, and its destinations are listed.
func TestDaemonIndexesHistoryOfEarlierFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AppendDecisions(state.Decision{Time: time.Now(), Destination: "hist.test", Map: "tlspolicy", Answer: "may"},
		state.Decision{Time: time.Now(), Destination: "other.test", Map: "tlspolicy", Answer: "may"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// What an earlier release leaves: no index, no mark.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket([]byte("history-index")); err != nil {
			return err
		}
		return tx.Bucket([]byte("meta")).Delete([]byte("history-index"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	start := func() (*Daemon, *testlog.Buffer) {
		log := &testlog.Buffer{}
		p := mustLoad(t, "")
		p.Settings.StatePath = path
		reg := prometheus.NewRegistry()
		d, err := NewDaemon(p, Options{Registerer: reg, Gatherer: reg, Logger: log.Logger(), Probe: ProbeDeps{Resolver: offlineResolver{}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		return d, log
	}
	d, log := start()
	for _, want := range []string{`msg="indexing the decision history by destination, for a quick start; this happens once"`,
		`msg="decision history indexed" path=` + path + ` destinations=2`} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the log does not say %s:\n%s", want, log)
		}
	}
	names, complete := d.waitKnown(context.Background())
	if got := slices.Collect(names.all()); !complete || !slices.Equal(got, []string{"hist.test", "other.test"}) {
		t.Errorf("known destinations %q (complete %v)", got, complete)
	}
	d.Shutdown(context.Background())

	d, log = start()
	defer d.Shutdown(context.Background())
	if strings.Contains(log.String(), "indexing") {
		t.Errorf("the history is indexed again at the second start:\n%s", log)
	}
}
