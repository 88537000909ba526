package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// minute is a fixed time plus m minutes.
func minute(m int) time.Time { return time.Date(2026, 11, 29, 12, m, 0, 0, time.UTC) }

func openTestBolt(tb testing.TB) *Bolt {
	tb.Helper()
	s, err := OpenBolt(filepath.Join(tb.TempDir(), "state.db"), time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// dec is a decision at minute(m).
func dec(dest, mapName, answer string, m int) Decision {
	return Decision{Time: minute(m), Destination: dest, Map: mapName, Answer: answer}
}

// answers lists the answers of ds, in order.
func answers(ds []Decision) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Answer)
	}
	return out
}

func mustDecisions(t *testing.T, s *Bolt, dest string, limit int) []Decision {
	t.Helper()
	ds, err := s.Decisions(dest, limit)
	if err != nil {
		t.Fatalf("Decisions(%q, %d): %v", dest, limit, err)
	}
	return ds
}

func TestDecisionRoundTrip(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	want := Decision{
		Time:        minute(0).Add(123456789),
		Destination: "[mx.example.org]:25",
		Map:         "tlspolicy",
		Answer:      "verify protocols=>=TLSv1.2",
		Previous:    "encrypt",
		Rule:        "rules.yaml:42",
		Evidence: Evidence{
			Probe:  "verify",
			Pin:    "verify",
			MTASTS: "enforce id 2024a",
			DANE:   "dane_only",
			Sender: "alice@example.net",
		},
	}
	if err := s.AppendDecisions(want); err != nil {
		t.Fatal(err)
	}
	got := mustDecisions(t, s, want.Destination, 0)
	if len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("Decisions = %+v, want [%+v]", got, want)
	}

	// The record is also the API's JSON: these names are a contract.
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	const wantJSON = `{"time":"2026-11-29T12:00:00.123456789Z","destination":"[mx.example.org]:25","map":"tlspolicy",` +
		`"answer":"verify protocols=>=TLSv1.2","previous":"encrypt","rule":"rules.yaml:42",` +
		`"evidence":{"probe":"verify","pin":"verify","mta_sts":"enforce id 2024a","dane":"dane_only","sender":"alice@example.net"}}`
	sameJSON(t, b, wantJSON)
	b, err = json.Marshal(Decision{Time: minute(0), Destination: "example.org", Map: "rcpt", Answer: "DUNNO"})
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, b, `{"time":"2026-11-29T12:00:00Z","destination":"example.org","map":"rcpt","answer":"DUNNO","previous":"","rule":"","evidence":{}}`)
}

// sameJSON compares JSON texts as values (json.Marshal escapes ">").
func sameJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("JSON:\n got %s\nwant %s", got, want)
	}
}

func TestDecisionsNewestFirst(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	// Appended out of order, and next to destinations that share a
	// prefix with example.org.
	if err := s.AppendDecisions(
		dec("example.org", "tlspolicy", "b", 2),
		dec("example.organic.test", "tlspolicy", "other", 3),
		dec("example.org", "tlspolicy", "a", 1),
		dec("example.or", "tlspolicy", "other", 3),
	); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendDecisions(dec("example.org", "rcpt", "d", 4), dec("example.org", "tlspolicy", "c", 3)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		limit int
		want  []string
	}{
		{0, []string{"d", "c", "b", "a"}},
		{-1, []string{"d", "c", "b", "a"}},
		{2, []string{"d", "c"}},
		{4, []string{"d", "c", "b", "a"}},
		{10, []string{"d", "c", "b", "a"}},
	} {
		if got := answers(mustDecisions(t, s, "example.org", tc.limit)); !slices.Equal(got, tc.want) {
			t.Errorf("limit %d: %q, want %q", tc.limit, got, tc.want)
		}
	}
	if got := mustDecisions(t, s, "nothing.test", 0); len(got) != 0 {
		t.Errorf("unknown destination: %+v", got)
	}
	if n := s.CountDecisions(); n != 6 {
		t.Errorf("CountDecisions = %d, want 6", n)
	}
}

func TestDecisionsSameNanosecond(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	// Same destination, map and time: within one batch and across two.
	if err := s.AppendDecisions(dec("example.org", "tlspolicy", "first", 0), dec("example.org", "tlspolicy", "second", 0)); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendDecisions(dec("example.org", "tlspolicy", "third", 0)); err != nil {
		t.Fatal(err)
	}
	if got, want := answers(mustDecisions(t, s, "example.org", 0)), []string{"third", "second", "first"}; !slices.Equal(got, want) {
		t.Errorf("same nanosecond: %q, want %q (all kept, the last appended first)", got, want)
	}
	if d, ok, err := s.LatestDecision("example.org", "tlspolicy"); err != nil || !ok || d.Answer != "third" {
		t.Errorf("LatestDecision = %+v, %v, %v, want third", d, ok, err)
	}
}

func TestLatestDecision(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	if err := s.AppendDecisions(
		dec("example.org", "tlspolicy", "encrypt", 1),
		dec("example.org", "transport", "smtp:[relay.example.net]", 2),
		dec("example.org", "tlspolicy", "verify", 3),
		dec("example.org", "rcpt", "DUNNO", 4),
		dec("example.org", "rcpt", "REJECT 5.7.10 no TLS", 5),
		dec("example.org", "trans", "a class", 6), // a prefix of another map's name
	); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dest, mapName string
		want          string
		found         bool
	}{
		{"example.org", "tlspolicy", "verify", true},
		{"example.org", "transport", "smtp:[relay.example.net]", true},
		{"example.org", "rcpt", "REJECT 5.7.10 no TLS", true},
		{"example.org", "trans", "a class", true},
		{"example.org", "strict", "", false},
		{"example.net", "tlspolicy", "", false},
	} {
		d, found, err := s.LatestDecision(tc.dest, tc.mapName)
		if err != nil || found != tc.found || d.Answer != tc.want {
			t.Errorf("LatestDecision(%q, %q) = %q, %v, %v; want %q, %v", tc.dest, tc.mapName, d.Answer, found, err, tc.want, tc.found)
		}
	}
}

func TestPruneDecisions(t *testing.T) {
	t.Parallel()
	// Minutes of the records of each destination; the cut-off is minute 10.
	records := map[string][]int{
		"old.test":    {1, 2, 3},                      // all older: all go by age
		"mixed.test":  {5, 9, 10, 11, 12, 13, 14, 15}, // 10 stays (not older); the count keeps 3 of the rest
		"young.test":  {20, 21},                       // untouched
		"[mx.test]:2": {9, 30},                        // 9 goes by age
	}
	for _, tc := range []struct {
		name      string
		cut       int64 // math.MinInt64: no age limit
		keep      int
		wantLeft  map[string][]int // newest first
		wantCount int
	}{
		{"age", minute(10).UnixNano(), 0, map[string][]int{
			"mixed.test": {15, 14, 13, 12, 11, 10}, "young.test": {21, 20}, "[mx.test]:2": {30},
		}, 9},
		{"count", math.MinInt64, 3, map[string][]int{
			"old.test": {3, 2, 1}, "mixed.test": {15, 14, 13}, "young.test": {21, 20}, "[mx.test]:2": {30, 9},
		}, 10},
		{"both", minute(10).UnixNano(), 3, map[string][]int{
			"mixed.test": {15, 14, 13}, "young.test": {21, 20}, "[mx.test]:2": {30},
		}, 6},
		{"keep 1", math.MinInt64, 1, map[string][]int{
			"old.test": {3}, "mixed.test": {15}, "young.test": {21}, "[mx.test]:2": {30},
		}, 4},
	} {
		// Every batch size gives the same result, including those that
		// end a transaction in the middle of a destination.
		for _, batch := range []int{1, 2, 3, 5, pruneBatch} {
			t.Run(fmt.Sprintf("%s/batch %d", tc.name, batch), func(t *testing.T) {
				t.Parallel()
				s := openTestBolt(t)
				total := 0
				for dest, minutes := range records {
					for _, m := range minutes {
						if err := s.AppendDecisions(dec(dest, "tlspolicy", fmt.Sprint(m), m)); err != nil {
							t.Fatal(err)
						}
						total++
					}
				}
				removed, err := s.pruneDecisions(tc.cut, tc.keep, batch)
				if err != nil {
					t.Fatal(err)
				}
				if removed != total-tc.wantCount {
					t.Errorf("removed %d, want %d", removed, total-tc.wantCount)
				}
				for dest := range records {
					var want []string
					for _, m := range tc.wantLeft[dest] {
						want = append(want, fmt.Sprint(m))
					}
					if got := answers(mustDecisions(t, s, dest, 0)); !slices.Equal(got, want) {
						t.Errorf("%s: left %q, want %q", dest, got, want)
					}
				}
				if n := s.CountDecisions(); n != tc.wantCount {
					t.Errorf("CountDecisions = %d, want %d", n, tc.wantCount)
				}
				checkIndex(t, s)
				// A second pass finds nothing more.
				if removed, err := s.pruneDecisions(tc.cut, tc.keep, batch); removed != 0 || err != nil {
					t.Errorf("second prune: %d, %v", removed, err)
				}
			})
		}
	}
}

func TestPruneDecisionsExported(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	if err := s.AppendDecisions(dec("a.test", "tlspolicy", "1", 1), dec("a.test", "tlspolicy", "2", 2), dec("b.test", "rcpt", "3", 3)); err != nil {
		t.Fatal(err)
	}
	// No limits, and limits that nothing exceeds, remove nothing.
	for _, tc := range []struct {
		olderThan time.Time
		keep      int
	}{{time.Time{}, 0}, {time.Time{}, -1}, {minute(0), 0}, {time.Time{}, 2}, {time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC), 0}} {
		if removed, err := s.PruneDecisions(tc.olderThan, tc.keep); removed != 0 || err != nil {
			t.Errorf("PruneDecisions(%v, %d) = %d, %v; want nothing removed", tc.olderThan, tc.keep, removed, err)
		}
	}
	// A record exactly at olderThan is not older.
	if removed, err := s.PruneDecisions(minute(2), 0); removed != 1 || err != nil {
		t.Errorf("PruneDecisions by age = %d, %v; want 1", removed, err)
	}
	if got := answers(mustDecisions(t, s, "a.test", 0)); !slices.Equal(got, []string{"2"}) {
		t.Errorf("a.test after pruning: %q", got)
	}
	// A cut-off past what Unix nanoseconds hold removes everything.
	if removed, err := s.PruneDecisions(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), 0); removed != 2 || err != nil {
		t.Errorf("PruneDecisions(year 3000) = %d, %v; want 2", removed, err)
	}
}

func TestDecisionDestinations(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	if got, err := s.DecisionDestinations(time.Time{}); len(got) != 0 || err != nil {
		t.Errorf("empty history: %q, %v", got, err)
	}
	if err := s.AppendDecisions(
		dec("old.test", "tlspolicy", "", 1),
		dec("renewed.test", "tlspolicy", "", 1),
		dec("renewed.test", "rcpt", "", 12), // an old record, and one after since
		dec("edge.test", "tlspolicy", "", 10),
		dec("[mx.example.org]:25", "tlspolicy", "", 11),
		dec("example.org", "tlspolicy", "", 11),
		dec("example.org", "tlspolicy", "", 2),
		dec("example.or", "tlspolicy", "", 3),
	); err != nil {
		t.Fatal(err)
	}
	// A destination of many records is listed once.
	for m := range 11 {
		if err := s.AppendDecisions(dec("busy.test", "tlspolicy", "", 12-m)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		since time.Time
		want  []string
	}{
		{time.Time{}, []string{"[mx.example.org]:25", "busy.test", "edge.test", "example.or", "example.org", "old.test", "renewed.test"}},
		{minute(10), []string{"[mx.example.org]:25", "busy.test", "edge.test", "example.org", "renewed.test"}},
		{minute(10).Add(1), []string{"[mx.example.org]:25", "busy.test", "example.org", "renewed.test"}},
		{minute(12).Add(1), nil},
		{minute(60), nil},
	} {
		got, err := s.DecisionDestinations(tc.since)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("DecisionDestinations(%v) = %q, %v; want %q", tc.since, got, err, tc.want)
		}
	}
}

func TestDecisionsInvalid(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	for _, d := range []Decision{
		{Time: minute(0), Map: "tlspolicy"},
		{Time: minute(0), Destination: "example.org"},
		{Time: minute(0), Destination: "example.org\x00evil", Map: "tlspolicy"},
		{Destination: "example.org", Map: "tlspolicy"},
		{Time: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), Destination: "example.org", Map: "tlspolicy"},
	} {
		// The valid decision in the batch is not written either.
		if err := s.AppendDecisions(dec("ok.test", "tlspolicy", "", 0), d); !errors.Is(err, ErrInvalidDecision) {
			t.Errorf("AppendDecisions(%+v) = %v, want ErrInvalidDecision", d, err)
		}
	}
	if n := s.CountDecisions(); n != 0 {
		t.Errorf("%d records written by failed batches", n)
	}
	if err := s.AppendDecisions(); err != nil {
		t.Errorf("empty batch: %v", err)
	}
}

// TestDecisionsEarlierFormat: records written by releases that stored the
// whole Decision as JSON still read, beside records in the current format.
func TestDecisionsEarlierFormat(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	old := Decision{Time: minute(1), Destination: "example.org", Map: "tlspolicy", Answer: "encrypt", Rule: "rules.yaml:3",
		Evidence: Evidence{Probe: "encrypt"}}
	v, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	k := destPrefix(old.Destination)
	k = binary.BigEndian.AppendUint64(k, timeBits(old.Time.UnixNano()))
	k = binary.BigEndian.AppendUint64(k, ^uint64(1000))
	k = append(k, old.Map...)
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketHistory).Put(k, v) }); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendDecisions(dec("example.org", "tlspolicy", "verify", 2)); err != nil {
		t.Fatal(err)
	}
	if got := answers(mustDecisions(t, s, "example.org", 0)); !slices.Equal(got, []string{"verify", "encrypt"}) {
		t.Errorf("answers %q, want the current record and the earlier one", got)
	}
	if d, found, err := s.LatestDecision("example.org", "tlspolicy"); err != nil || !found || d.Answer != "verify" {
		t.Errorf("LatestDecision = %+v, %v, %v", d, found, err)
	}
	ds := mustDecisions(t, s, "example.org", 0)
	if got := ds[1]; !reflect.DeepEqual(got, old) {
		t.Errorf("the earlier record reads as %+v, want %+v", got, old)
	}
}

func TestDecisionsCorrupt(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	if err := s.AppendDecisions(dec("ok.test", "tlspolicy", "verify", 1)); err != nil {
		t.Fatal(err)
	}
	put := func(k, v []byte) {
		t.Helper()
		if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketHistory).Put(k, v) }); err != nil {
			t.Fatal(err)
		}
	}
	key := func(dest string, minutes int, mapName string) []byte {
		k := destPrefix(dest)
		k = binary.BigEndian.AppendUint64(k, timeBits(minute(minutes).UnixNano()))
		k = binary.BigEndian.AppendUint64(k, ^uint64(1000))
		return append(k, mapName...)
	}
	good, err := json.Marshal(dec("other.test", "tlspolicy", "", 2))
	if err != nil {
		t.Fatal(err)
	}
	put(key("bad.test", 2, "tlspolicy"), []byte("{not json"))
	put(key("moved.test", 2, "tlspolicy"), good)                      // decodes, but is another destination's record
	put(key("short.test", 2, "tlspolicy"), []byte{historyV2, 5, 'a'}) // cut short
	put(key("long.test", 2, "tlspolicy"), append(encodeDecision(dec("long.test", "tlspolicy", "", 2)), 0))
	put(key("unknown.test", 2, "tlspolicy"), []byte{9})

	for _, dest := range []string{"bad.test", "moved.test", "short.test", "long.test", "unknown.test"} {
		if _, err := s.Decisions(dest, 0); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Decisions(%s) = %v, want ErrCorrupt", dest, err)
		}
		if _, _, err := s.LatestDecision(dest, "tlspolicy"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("LatestDecision(%s) = %v, want ErrCorrupt", dest, err)
		}
	}
	if got := answers(mustDecisions(t, s, "ok.test", 0)); !slices.Equal(got, []string{"verify"}) {
		t.Errorf("a sound destination next to corrupt ones: %q", got)
	}

	// Listing and pruning read the index, not every key: a key cut short
	// in the range of a destination that has records to prune, or an
	// index entry that does not decode, is corrupt.
	put(append(destPrefix("ok.test"), 1, 2), good)
	if err := s.AppendDecisions(dec("ok.test", "tlspolicy", "newer", 3)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PruneDecisions(time.Time{}, 1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("PruneDecisions = %v, want ErrCorrupt", err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketHistoryIndex).Put([]byte("ok.test"), []byte{1}) }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DecisionDestinations(time.Time{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("DecisionDestinations = %v, want ErrCorrupt", err)
	}

	// A key that is no history key at all stops the building of the
	// index, which reads every key.
	put([]byte("garbage"), good)
	if _, err := s.IndexHistory(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("IndexHistory = %v, want ErrCorrupt", err)
	}
	if s.HistoryIndexed() {
		t.Error("an index that could not be built is taken as whole")
	}
}

func TestDecisionsSurviveReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AppendDecisions(dec("example.org", "tlspolicy", "encrypt", 0), dec("example.org", "tlspolicy", "verify", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d, ok, err := s.LatestDecision("example.org", "tlspolicy"); err != nil || !ok || d.Answer != "verify" {
		t.Fatalf("after reopening: %+v, %v, %v", d, ok, err)
	}
	// The tie-breaker survives too: a record in the same nanosecond as
	// one written before the restart does not overwrite it.
	if err := s.AppendDecisions(dec("example.org", "tlspolicy", "verify again", 1)); err != nil {
		t.Fatal(err)
	}
	if got, want := answers(mustDecisions(t, s, "example.org", 0)), []string{"verify again", "verify", "encrypt"}; !slices.Equal(got, want) {
		t.Errorf("after reopening: %q, want %q", got, want)
	}
}

func TestHistoryBucketAddedToOlderStore(t *testing.T) {
	t.Parallel()
	// A store written before the history existed (format version 1
	// without the bucket) opens, and its history starts empty.
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutPins(Pin{Key: "example.org", Level: "verify"}); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketHistory) }); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if pins, err := s.Pins(); err != nil || len(pins) != 1 {
		t.Fatalf("pins after reopening: %+v, %v", pins, err)
	}
	if err := s.AppendDecisions(dec("example.org", "tlspolicy", "verify", 0)); err != nil {
		t.Fatal(err)
	}
	if n := s.CountDecisions(); n != 1 {
		t.Errorf("CountDecisions = %d, want 1", n)
	}
}

// BenchmarkAppendDecisions appends batches of 100 decisions, each batch
// one transaction and one disk sync, as the recorder does.
func BenchmarkAppendDecisions(b *testing.B) {
	s := openTestBolt(b)
	batch := make([]Decision, 100)
	i := 0
	for b.Loop() {
		for j := range batch {
			d := dec(fmt.Sprintf("mx%d.example.org", i%5000), "tlspolicy", "verify protocols=>=TLSv1.2", 0)
			d.Time = d.Time.Add(time.Duration(i) * time.Millisecond)
			d.Previous, d.Rule, d.Evidence = "encrypt", "rules.yaml:42", Evidence{Probe: "verify", Pin: "verify"}
			batch[j] = d
			i++
		}
		if err := s.AppendDecisions(batch...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkDecisionDestinations lists 50,000 of 100,000 destinations with
// three records each.
func BenchmarkDecisionDestinations(b *testing.B) {
	const dests = 100_000
	s := openTestBolt(b)
	var batch []Decision
	for i := range dests {
		for m := range 3 {
			// Odd destinations have their newest record after since.
			batch = append(batch, dec(fmt.Sprintf("d%06d.example.org", i), "tlspolicy", "verify", m+10*(i%2)))
		}
		if len(batch) >= 30_000 || i == dests-1 {
			if err := s.AppendDecisions(batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	since := minute(5)
	for b.Loop() {
		got, err := s.DecisionDestinations(since)
		if err != nil || len(got) != dests/2 {
			b.Fatalf("%d destinations, %v", len(got), err)
		}
	}
}
