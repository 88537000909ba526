package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// allProbes lists the findings unexpired at now as "key=findings", those
// that expire last first.
func allProbes(t *testing.T, s *Bolt, now time.Time) []string {
	t.Helper()
	return someProbes(t, s, now, 0)
}

func someProbes(t *testing.T, s *Bolt, now time.Time, limit int) []string {
	t.Helper()
	var out []string
	if err := s.Probes(now, limit, func(p Probe) error {
		out = append(out, p.Key+"="+string(p.Findings))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// bucketLen counts a bucket's keys.
func bucketLen(t *testing.T, s *Bolt, name []byte) int {
	t.Helper()
	n := 0
	s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(name); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	return n
}

func TestProbesLastToExpireFirst(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	now := minute(0)
	put := func(key string, hours int, findings string) {
		t.Helper()
		if err := s.PutProbes(Probe{Key: key, Expires: now.Add(time.Duration(hours) * time.Hour), Findings: []byte(findings)}); err != nil {
			t.Fatal(err)
		}
	}
	put("a.test", 1, "a1")
	put("b.test", 3, "b")
	put("c.test", 2, "c")
	put("a.test", 4, "a2") // replaces a1
	if got, want := allProbes(t, s, now), []string{"a.test=a2", "b.test=b", "c.test=c"}; !equal(got, want) {
		t.Errorf("Probes = %q, want %q", got, want)
	}
	if got, want := someProbes(t, s, now, 2), []string{"a.test=a2", "b.test=b"}; !equal(got, want) {
		t.Errorf("Probes with limit 2 = %q, want %q", got, want)
	}
	// c.test expires at 2h: not at now+2h.
	if got, want := allProbes(t, s, now.Add(2*time.Hour)), []string{"a.test=a2", "b.test=b"}; !equal(got, want) {
		t.Errorf("Probes at +2h = %q, want %q", got, want)
	}
	// Findings gathered again with the same expiry (published records
	// read again, the probe kept) replace the record in place.
	put("b.test", 3, "b2")
	if n := bucketLen(t, s, bucketFindings); n != 3 {
		t.Errorf("%d findings records, want 3 (one per destination)", n)
	}
	if n := bucketLen(t, s, bucketFindingsBy); n != 3 {
		t.Errorf("%d index records, want 3", n)
	}
	stop := errors.New("stop")
	if err := s.Probes(now, 0, func(Probe) error { return stop }); err != stop {
		t.Errorf("Probes returned %v, want fn's error", err)
	}
}

func TestPruneProbes(t *testing.T) {
	t.Parallel()
	s := openTestBolt(t)
	now := minute(0)
	// More expired records than one transaction deletes.
	var probes []Probe
	for i := range pruneBatch + 10 {
		probes = append(probes, Probe{Key: fmt.Sprintf("old%d.test", i), Expires: now.Add(-time.Duration(i) * time.Second), Findings: []byte("x")})
	}
	probes = append(probes, Probe{Key: "now.test", Expires: now, Findings: []byte("x")},
		Probe{Key: "fresh.test", Expires: now.Add(time.Nanosecond), Findings: []byte("fresh")})
	if err := s.PutProbes(probes...); err != nil {
		t.Fatal(err)
	}
	n, err := s.PruneProbes(now)
	if err != nil || n != pruneBatch+11 {
		t.Errorf("PruneProbes = %d, %v; want %d (expired at now included)", n, err, pruneBatch+11)
	}
	if got := allProbes(t, s, now); !equal(got, []string{"fresh.test=fresh"}) {
		t.Errorf("after pruning: %q", got)
	}
	if n := bucketLen(t, s, bucketFindingsBy); n != 1 {
		t.Errorf("%d index records after pruning, want 1", n)
	}
	if n, err := s.PruneProbes(now); n != 0 || err != nil {
		t.Errorf("pruning again = %d, %v", n, err)
	}
}

// TestMigrateProbes: findings of earlier releases (JSON by destination, in
// the "probes" bucket) are moved as convert says, the bucket goes, and the
// file shrinks to what is kept; the new file is the locked store.
func TestMigrateProbes(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	now := minute(0)
	if err := s.PutPins(Pin{Key: "pinned.test", Level: "verify", Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendDecisions(dec("pinned.test", "tlspolicy", "verify", 0)); err != nil {
		t.Fatal(err)
	}
	// newer.test has findings in the current format that expire later
	// than its old record.
	if err := s.PutProbes(Probe{Key: "newer.test", Expires: now.Add(5 * time.Hour), Findings: []byte("current")}); err != nil {
		t.Fatal(err)
	}
	// Old records: "keep N" are kept for N hours; the rest (failed probes,
	// a kilobyte each) are dropped. More than one transaction's worth.
	const failed = migrateBatch + 500
	junk := bytes.Repeat([]byte("f"), 1000)
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketProbes)
		if err != nil {
			return err
		}
		for i := range failed {
			if err := b.Put(fmt.Appendf(nil, "nx%d.test", i), junk); err != nil {
				return err
			}
		}
		for k, v := range map[string]string{"good.test": "keep 2", "newer.test": "keep 1", "older.test": "keep 6"} {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutProbes(Probe{Key: "older.test", Expires: now.Add(time.Hour), Findings: []byte("current")}); err != nil {
		t.Fatal(err)
	}
	before := s.Size()
	if !s.HasLegacyProbes() {
		t.Fatal("HasLegacyProbes = false with the old bucket there")
	}
	kept, dropped, err := s.MigrateProbes(func(key string, rec []byte) (Probe, bool) {
		h, ok := strings.CutPrefix(string(rec), "keep ")
		if !ok {
			return Probe{}, false
		}
		n, _ := strconv.Atoi(h)
		return Probe{Key: key, Expires: now.Add(time.Duration(n) * time.Hour), Findings: []byte("migrated")}, true
	})
	if err != nil || kept != 2 || dropped != failed+1 {
		t.Errorf("MigrateProbes = %d kept, %d dropped, %v; want 2, %d", kept, dropped, err, failed+1)
	}
	want := []string{"older.test=migrated", "newer.test=current", "good.test=migrated"}
	if got := allProbes(t, s, now); !equal(got, want) {
		t.Errorf("after migrating: %q, want %q", got, want)
	}
	if s.HasLegacyProbes() {
		t.Error("the old bucket is still there")
	}
	after := s.Size()
	t.Logf("file %d bytes before, %d after", before, after)
	if after >= before/4 {
		t.Errorf("the file went from %d to %d bytes; the dropped records' space is still in it", before, after)
	}
	if _, err := OpenBolt(path, 50*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Errorf("opening the compacted store while it is open: %v, want ErrLocked", err)
	}
	if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the compaction's file is left: %v", err)
	}
	s.Close()

	s, err = OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := allProbes(t, s, now); !equal(got, want) {
		t.Errorf("after reopening: %q, want %q", got, want)
	}
	if pins, err := s.Pins(); err != nil || len(pins) != 1 {
		t.Errorf("pins after reopening: %+v, %v", pins, err)
	}
	if ds := mustDecisions(t, s, "pinned.test", 0); len(ds) != 1 {
		t.Errorf("history after reopening: %+v", ds)
	}
	if k, d, err := s.MigrateProbes(nil); k != 0 || d != 0 || err != nil {
		t.Errorf("migrating again = %d, %d, %v", k, d, err)
	}
}

// TestOpenRefusesDamagedFiles: an empty, cut short or garbled file is
// refused with an error that names it and says what to do, and is left as
// it was; a missing one is created.
func TestOpenRefusesDamagedFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A store of a few hundred kilobytes to cut.
	whole := filepath.Join(dir, "whole.db")
	s, err := OpenBolt(whole, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var pins []Pin
	for i := range 2000 {
		pins = append(pins, Pin{Key: fmt.Sprintf("p%d.test", i), Level: "verify", Source: strings.Repeat("x", 100)})
	}
	if err := s.PutPins(pins...); err != nil {
		t.Fatal(err)
	}
	var used int64 // bbolt grows the file ahead of the pages in use
	s.db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	s.Close()
	image, err := os.ReadFile(whole)
	if err != nil {
		t.Fatal(err)
	}
	page := os.Getpagesize()
	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(i*7 + 3)
	}
	for _, tt := range []struct {
		name    string
		content []byte
		problem string
	}{
		{"empty", nil, "is empty or truncated"},
		{"one byte", image[:1], "is truncated"},
		{"one page", image[:page], "is truncated"},
		{"the meta pages only", image[:2*page], "truncated"},
		{"half", image[:len(image)/2], "truncated"},
		{"all but the last byte in use", image[:used-1], "is truncated"},
		{"garbage", garbage, "is corrupt"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".db")
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenBolt(path, time.Second)
			if err == nil {
				_, err = s.Pins()
				s.Close()
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("opening: %v, want a CorruptError", err)
			}
			msg := err.Error()
			t.Log(msg)
			for _, want := range []string{"state file " + path + " ", tt.problem, "move it aside", "restore it from backup"} {
				if !strings.Contains(msg, want) {
					t.Errorf("the error does not say %q:\n%s", want, msg)
				}
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, tt.content) {
				t.Errorf("the file was changed: %d bytes, was %d", len(got), len(tt.content))
			}
		})
	}

	missing := filepath.Join(dir, "new", "state.db")
	s, err = OpenBolt(missing, time.Second)
	if err != nil {
		t.Fatalf("a missing file: %v, want a new store", err)
	}
	s.Close()
	if fi, err := os.Stat(missing); err != nil || fi.Size() == 0 {
		t.Errorf("the new store: %v, %v", fi, err)
	}
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }
