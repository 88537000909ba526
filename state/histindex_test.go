package state

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// indexOf reads the history index as it is.
func indexOf(t *testing.T, s *Bolt) map[string]indexEntry {
	t.Helper()
	got := map[string]indexEntry{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHistoryIndex).ForEach(func(k, v []byte) error {
			e, ok := decodeEntry(v)
			if !ok {
				return fmt.Errorf("entry of %q does not decode: %x", k, v)
			}
			got[string(k)] = e
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// recordsIndex is what the index should hold, from the records themselves.
func recordsIndex(t *testing.T, s *Bolt) map[string]indexEntry {
	t.Helper()
	want := map[string]indexEntry{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHistory).ForEach(func(k, _ []byte) error {
			p, nanos, _, ok := splitKey(k)
			if !ok {
				return fmt.Errorf("malformed key %q", k)
			}
			dest := string(p[:len(p)-1])
			e, seen := want[dest]
			if !seen {
				e = indexEntry{newest: nanos, oldest: nanos}
			}
			e.newest, e.oldest, e.count = max(e.newest, nanos), min(e.oldest, nanos), e.count+1
			want[dest] = e
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// checkIndex fails the test unless the index is whole and says what the
// records say.
func checkIndex(t *testing.T, s *Bolt) {
	t.Helper()
	if !s.HistoryIndexed() {
		t.Error("the history index is not marked whole")
	}
	if got, want := indexOf(t, s), recordsIndex(t, s); !maps.Equal(got, want) {
		t.Errorf("history index\n%+v\nwant, from the records,\n%+v", got, want)
	}
}

// walked lists what WalkDecisionDestinations gives, as "name@minute".
func walked(t *testing.T, s *Bolt, since time.Time) []string {
	t.Helper()
	var out []string
	err := s.WalkDecisionDestinations(since, func(d []byte, newest time.Time) error {
		out = append(out, fmt.Sprintf("%s@%d", d, int(newest.Sub(minute(0)).Minutes())))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestHistoryIndexKeptUpToDate(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	checkIndex(t, s) // a new store's empty history is indexed
	// Records of one destination in one batch, out of order, and in
	// later batches, older and newer than those before.
	batches := [][]Decision{
		{dec("b.test", "tlspolicy", "", 5), dec("a.test", "tlspolicy", "", 3), dec("b.test", "rcpt", "", 2), dec("b.test", "tlspolicy", "", 7)},
		{dec("a.test", "tlspolicy", "", 1), dec("[mx.c.test]:25", "tlspolicy", "", 4)},
		{dec("a.test", "phi", "", 9)},
	}
	for _, b := range batches {
		if err := s.AppendDecisions(b...); err != nil {
			t.Fatal(err)
		}
		checkIndex(t, s)
	}
	want := map[string]indexEntry{
		"a.test":         {minute(9).UnixNano(), minute(1).UnixNano(), 3},
		"b.test":         {minute(7).UnixNano(), minute(2).UnixNano(), 3},
		"[mx.c.test]:25": {minute(4).UnixNano(), minute(4).UnixNano(), 1},
	}
	if got := indexOf(t, s); !maps.Equal(got, want) {
		t.Errorf("index %+v, want %+v", got, want)
	}
	if got, want := walked(t, s, minute(5)), []string{"a.test@9", "b.test@7"}; !slices.Equal(got, want) {
		t.Errorf("WalkDecisionDestinations(minute 5) = %q, want %q", got, want)
	}
	// A failed batch changes neither the records nor the index.
	if err := s.AppendDecisions(dec("d.test", "tlspolicy", "", 1), Decision{Destination: "e.test"}); err == nil {
		t.Fatal("an invalid batch was written")
	}
	checkIndex(t, s)

	// The index is what a build from the records gives.
	before := indexOf(t, s)
	if n, err := s.IndexHistory(); n != 3 || err != nil {
		t.Fatalf("IndexHistory = %d, %v", n, err)
	}
	if got := indexOf(t, s); !maps.Equal(got, before) {
		t.Errorf("rebuilt index %+v, the kept one %+v", got, before)
	}
}

func TestHistoryIndexPruned(t *testing.T) {
	t.Parallel()
	// Minutes of the records of each destination; the cut-off is minute 10.
	records := map[string][]int{
		"old.test":    {1, 2, 3},              // all go by age: the entry goes
		"mixed.test":  {5, 9, 10, 11, 12, 13}, // some go
		"young.test":  {20, 21},               // untouched
		"[mx.test]:2": {9, 30},
	}
	for _, keep := range []int{0, 1, 3} {
		for _, batch := range []int{1, 2, 4, pruneBatch} {
			t.Run(fmt.Sprintf("keep %d/batch %d", keep, batch), func(t *testing.T) {
				t.Parallel()
				s := openTestBolt(t)
				for dest, minutes := range records {
					for _, m := range minutes {
						if err := s.AppendDecisions(dec(dest, "tlspolicy", "", m)); err != nil {
							t.Fatal(err)
						}
					}
				}
				if _, err := s.pruneDecisions(minute(10).UnixNano(), keep, batch); err != nil {
					t.Fatal(err)
				}
				checkIndex(t, s)
				if _, ok := indexOf(t, s)["old.test"]; ok {
					t.Error("a destination whose records all went keeps its entry")
				}
				if got := walked(t, s, time.Time{}); !slices.Contains(got, "young.test@21") || slices.ContainsFunc(got, func(d string) bool { return d[:3] == "old" }) {
					t.Errorf("listed after pruning: %q", got)
				}
			})
		}
	}
}

// TestHistoryIndexPrunesOnlyWhatItNames: pruning reads the records of the
// destinations whose entries say they have some to remove, and no other.
func TestHistoryIndexPrunesOnlyWhatItNames(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	if err := s.AppendDecisions(dec("old.test", "tlspolicy", "", 1), dec("new.test", "tlspolicy", "", 20)); err != nil {
		t.Fatal(err)
	}
	// A key cut short among new.test's records: reading them would fail.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHistory).Put(append(destPrefix("new.test"), 1), []byte{historyV2})
	}); err != nil {
		t.Fatal(err)
	}
	if removed, err := s.PruneDecisions(minute(10), 5); removed != 1 || err != nil {
		t.Errorf("PruneDecisions = %d, %v; want old.test's record removed, new.test's not read", removed, err)
	}
}

// TestHistoryIndexCorrectsStaleEntries: a release that does not know the
// index prunes records without changing it; pruning puts right the
// entries that then claim records that are gone.
func TestHistoryIndexCorrectsStaleEntries(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	if err := s.AppendDecisions(dec("gone.test", "tlspolicy", "", 1), dec("some.test", "tlspolicy", "", 2),
		dec("some.test", "tlspolicy", "", 3), dec("some.test", "tlspolicy", "", 30)); err != nil {
		t.Fatal(err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		var doomed [][]byte
		tx.Bucket(bucketHistory).ForEach(func(k, _ []byte) error {
			if _, nanos, _, _ := splitKey(k); nanos < minute(10).UnixNano() {
				doomed = append(doomed, bytes.Clone(k))
			}
			return nil
		})
		return deleteKeys(tx.Bucket(bucketHistory), doomed)
	})
	if err != nil {
		t.Fatal(err)
	}
	if removed, err := s.PruneDecisions(minute(10), 0); removed != 0 || err != nil {
		t.Errorf("PruneDecisions = %d, %v; want nothing left to remove", removed, err)
	}
	checkIndex(t, s)
}

// olderRelease makes s's file what a release before the index leaves:
// the same records, no index bucket, no mark.
func olderRelease(t *testing.T, s *Bolt) {
	t.Helper()
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketHistoryIndex); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Delete(keyHistoryIndexed)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestHistoryIndexMigrated(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ds []Decision
	for i := range 25 {
		for m := range i%4 + 1 {
			ds = append(ds, dec(fmt.Sprintf("d%02d.test", i), "tlspolicy", "", i+m))
		}
	}
	if err := s.AppendDecisions(ds...); err != nil {
		t.Fatal(err)
	}
	want := indexOf(t, s)
	olderRelease(t, s)
	s.Close()

	s, err = OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.HistoryIndexed() {
		t.Fatal("a file without the index is taken as indexed")
	}
	// Records written before the index is built are not indexed twice.
	if err := s.AppendDecisions(dec("d00.test", "tlspolicy", "", 40)); err != nil {
		t.Fatal(err)
	}
	e := want["d00.test"]
	e.newest, e.count = minute(40).UnixNano(), e.count+1
	want["d00.test"] = e
	// In transactions of 7 destinations: the last one is partly full.
	if n, err := s.indexHistory(7); n != 25 || err != nil {
		t.Fatalf("indexHistory = %d, %v; want 25 destinations", n, err)
	}
	checkIndex(t, s)
	if got := indexOf(t, s); !maps.Equal(got, want) {
		t.Errorf("migrated index %+v, want %+v", got, want)
	}

	// What lists destinations or prunes builds the index itself.
	olderRelease(t, s)
	s.Close()
	if s, err = OpenBolt(path, time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := s.DecisionDestinations(minute(24)); err != nil || !slices.Equal(got, []string{"d00.test", "d22.test", "d23.test", "d24.test"}) {
		t.Errorf("DecisionDestinations on a file without the index = %q, %v", got, err)
	}
	checkIndex(t, s)
	olderRelease(t, s)
	if _, err := s.PruneDecisions(minute(3), 0); err != nil {
		t.Fatal(err)
	}
	checkIndex(t, s)
}

// TestHistoryIndexAfterRecordsItMissed: records that a release without the
// index appended (the history's sequence moves on, the mark does not), and
// an index whose build was cut short, are not taken as whole.
func TestHistoryIndexAfterRecordsItMissed(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	if err := s.AppendDecisions(dec("a.test", "tlspolicy", "", 1)); err != nil {
		t.Fatal(err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketHistory)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		k := destPrefix("b.test")
		k = binary.BigEndian.AppendUint64(k, timeBits(minute(2).UnixNano()))
		k = binary.BigEndian.AppendUint64(k, ^seq)
		return b.Put(append(k, "tlspolicy"...), encodeDecision(dec("b.test", "tlspolicy", "", 2)))
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.HistoryIndexed() {
		t.Fatal("records appended without the index are not noticed")
	}
	if got := walked(t, s, time.Time{}); !slices.Equal(got, []string{"a.test@1", "b.test@2"}) {
		t.Errorf("listed %q, want both destinations", got)
	}
	checkIndex(t, s)

	// A build cut short: entries without the mark.
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(keyHistoryIndexed) }); err != nil {
		t.Fatal(err)
	}
	if s.HistoryIndexed() {
		t.Fatal("an index without its mark is taken as whole")
	}
	if _, err := s.PruneDecisions(time.Time{}, 1); err != nil {
		t.Fatal(err)
	}
	checkIndex(t, s)
}

// TestHistoryIndexOfEmptyHistory: a file whose history a release without
// the index wrote and then pruned to nothing opens indexed, without the
// entries of the records that are gone.
func TestHistoryIndexOfEmptyHistory(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AppendDecisions(dec("a.test", "tlspolicy", "", 1)); err != nil {
		t.Fatal(err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketHistory)
		if _, err := b.NextSequence(); err != nil { // a record appended...
			return err
		}
		var all [][]byte
		b.ForEach(func(k, _ []byte) error { all = append(all, bytes.Clone(k)); return nil })
		return deleteKeys(b, all) // ...and every record pruned
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = OpenBolt(path, time.Second); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkIndex(t, s)
	if got := indexOf(t, s); len(got) != 0 {
		t.Errorf("index of an empty history: %+v", got)
	}
}

func TestIndexEntryRoundTrip(t *testing.T) {
	t.Parallel()
	for _, e := range []indexEntry{{0, 0, 0}, {math.MaxInt64, math.MinInt64, math.MaxUint64}, {-1, 1, 300}} {
		if got, ok := decodeEntry(e.encode()); !ok || got != e {
			t.Errorf("%+v decodes as %+v, %v", e, got, ok)
		}
	}
	for _, v := range [][]byte{nil, make([]byte, 16), append(make([]byte, 16), 0x80), append(make([]byte, 16), 1, 1)} {
		if e, ok := decodeEntry(v); ok {
			t.Errorf("%x decodes as %+v", v, e)
		}
	}
}

// BenchmarkWalkDecisionDestinations lists 100,000 destinations from the
// index, as a daemon's start does.
func BenchmarkWalkDecisionDestinations(b *testing.B) {
	const dests = 100_000
	s := openTestBolt(b)
	var batch []Decision
	for i := range dests {
		batch = append(batch, dec(fmt.Sprintf("d%06d.example.org", i), "tlspolicy", "verify", i%60))
		if len(batch) == 50_000 {
			if err := s.AppendDecisions(batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	for b.Loop() {
		n := 0
		if err := s.WalkDecisionDestinations(time.Time{}, func([]byte, time.Time) error { n++; return nil }); err != nil || n != dests {
			b.Fatalf("%d destinations, %v", n, err)
		}
	}
}
