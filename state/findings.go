package state

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Findings are kept in two buckets:
//
//	findings:    expiry (8 bytes) | destination  ->  the daemon's encoding
//	findings-by: destination                    ->  expiry (8 bytes)
//
// The first sorts by expiry, so that pruning deletes from its start and
// the daemon's start reads from its end the findings that will last
// longest, touching no other page of a file that may hold far more than
// memory keeps; the second finds a destination's record to replace it.
// expiry is Unix nanoseconds with the sign bit flipped, so that it sorts
// as unsigned.
//
// Releases before these buckets kept findings as JSON in the "probes"
// bucket, keyed by destination, failed probes included, and never pruned
// them; MigrateProbes moves them.
var (
	bucketFindings   = []byte("findings")
	bucketFindingsBy = []byte("findings-by")
	bucketProbes     = []byte("probes") // the earlier format
)

// expiryLen is the length of the expiry at the start of a findings key.
const expiryLen = 8

// findingsFill is how full bbolt packs the findings bucket's pages: new
// records go at its end (they expire last), where a page split may leave
// the page before it this full, not half full as bbolt's default does
// for keys written in any order.
const findingsFill = 0.9

// migrateBatch is how many earlier-format records one MigrateProbes
// transaction moves.
const migrateBatch = 10000

func expiryBits(t time.Time) uint64 { return uint64(clampNanos(t)) ^ 1<<63 }

func expiryTime(bits uint64) time.Time { return time.Unix(0, int64(bits^1<<63)) }

// PutProbes implements Store.
func (s *Bolt) PutProbes(probes ...Probe) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putProbes(tx, probes) })
}

// putProbes writes findings, each replacing its destination's record.
// bbolt keeps the keys given to Put until the transaction ends: each is a
// slice of its own.
func putProbes(tx *bolt.Tx, probes []Probe) error {
	f, by := tx.Bucket(bucketFindings), tx.Bucket(bucketFindingsBy)
	f.FillPercent = findingsFill
	for _, p := range probes {
		if p.Key == "" {
			return fmt.Errorf("findings without a destination")
		}
		dest := []byte(p.Key)
		if old := by.Get(dest); len(old) == expiryLen {
			if err := f.Delete(append(bytes.Clone(old), dest...)); err != nil {
				return err
			}
		}
		exp := binary.BigEndian.AppendUint64(make([]byte, 0, expiryLen+len(dest)), expiryBits(p.Expires))
		if err := f.Put(append(exp, dest...), p.Findings); err != nil {
			return err
		}
		if err := by.Put(dest, exp[:expiryLen:expiryLen]); err != nil {
			return err
		}
	}
	return nil
}

// Probes implements Store.
func (s *Bolt) Probes(now time.Time, limit int, fn func(p Probe) error) (err error) {
	defer recoverCorrupt(s.path, &err, debug.SetPanicOnFault(true))
	cut := expiryBits(now)
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketFindings).Cursor()
		n := 0
		for k, v := c.Last(); k != nil && (limit <= 0 || n < limit); k, v = c.Prev() {
			if len(k) <= expiryLen {
				return corrupt(s.path, "is corrupt: findings key %q is malformed", k)
			}
			bits := binary.BigEndian.Uint64(k)
			if bits <= cut {
				return nil // this and all before it have expired
			}
			if err := fn(Probe{Key: string(k[expiryLen:]), Expires: expiryTime(bits), Findings: v}); err != nil {
				return err
			}
			n++
		}
		return nil
	})
}

// PruneProbes implements Store.
func (s *Bolt) PruneProbes(now time.Time) (removed int, err error) {
	cut := expiryBits(now)
	for {
		n := 0
		err := s.db.Update(func(tx *bolt.Tx) error {
			f, by := tx.Bucket(bucketFindings), tx.Bucket(bucketFindingsBy)
			var doomed [][]byte
			c := f.Cursor()
			for k, _ := c.First(); k != nil && len(doomed) < pruneBatch; k, _ = c.Next() {
				if len(k) <= expiryLen || binary.BigEndian.Uint64(k) > cut {
					break
				}
				doomed = append(doomed, bytes.Clone(k))
			}
			for _, k := range doomed {
				if err := f.Delete(k); err != nil {
					return err
				}
				// The index entry goes only if it is this record's.
				if dest := k[expiryLen:]; bytes.Equal(by.Get(dest), k[:expiryLen]) {
					if err := by.Delete(dest); err != nil {
						return err
					}
				}
			}
			n = len(doomed)
			return nil
		})
		removed += n
		if err != nil || n < pruneBatch {
			return removed, err
		}
	}
}

// HasLegacyProbes reports whether the store holds findings in the format
// of earlier releases, for MigrateProbes.
func (s *Bolt) HasLegacyProbes() bool {
	found := false
	s.db.View(func(tx *bolt.Tx) error {
		found = tx.Bucket(bucketProbes) != nil
		return nil
	})
	return found
}

// MigrateProbes moves findings stored by earlier releases (JSON, failed
// probes included, never pruned) to the current buckets: convert says
// what each record becomes, or that it is not worth keeping (a failed
// probe, findings no longer fresh). It then removes the earlier bucket and
// rewrites the file without the space that held it, which bbolt would
// otherwise keep for good: a store grown by a million failed probes
// shrinks to what it keeps. It reads in transactions of migrateBatch
// records and removes the earlier bucket whole at the end (deleting its
// records one by one would rewrite most of its pages); one that fails
// part-way leaves the bucket for a later call to migrate again, which
// changes nothing that was moved. convert's record is valid only during
// the call.
func (s *Bolt) MigrateProbes(convert func(key string, record []byte) (Probe, bool)) (kept, dropped int, err error) {
	defer recoverCorrupt(s.path, &err, debug.SetPanicOnFault(true))
	var after []byte // the last key read
	for done := false; !done; {
		var k, d int
		err = s.db.Update(func(tx *bolt.Tx) error {
			old := tx.Bucket(bucketProbes)
			if old == nil {
				done = true
				return nil
			}
			by := tx.Bucket(bucketFindingsBy)
			var probes []Probe
			c := old.Cursor()
			key, v := c.First()
			if after != nil {
				if key, v = c.Seek(after); bytes.Equal(key, after) {
					key, v = c.Next()
				}
			}
			n := 0
			for ; key != nil && n < migrateBatch; key, v = c.Next() {
				n++
				after = append(after[:0], key...)
				p, ok := convert(string(key), v)
				// Findings in the current format are newer, unless they
				// expire sooner (a release before them ran in between).
				if cur := by.Get(key); ok && (len(cur) != expiryLen || binary.BigEndian.Uint64(cur) < expiryBits(p.Expires)) {
					probes = append(probes, p)
				}
			}
			if n == 0 {
				done = true
				return tx.DeleteBucket(bucketProbes)
			}
			k, d = len(probes), n-len(probes)
			return putProbes(tx, probes)
		})
		if err != nil {
			return kept, dropped, err
		}
		kept, dropped = kept+k, dropped+d
	}
	if kept+dropped == 0 {
		return 0, 0, nil
	}
	return kept, dropped, s.compact()
}

// compact rewrites the store into a new file holding only what is in use,
// and puts it in place of the old one. The new file is locked (opened by
// bbolt) before it takes the old one's name, so no other process can open
// the store unlocked meanwhile. A failure leaves the old file as it was.
func (s *Bolt) compact() error {
	tmp := s.path + ".compact"
	os.Remove(tmp) // left by a compaction that crashed
	dst, err := bolt.Open(tmp, 0o600, boltOptions(time.Second))
	if err != nil {
		return fmt.Errorf("compacting the state store: %w", err)
	}
	dst.AllocSize = growStep
	if err := bolt.Compact(dst, s.db, 64<<20); err != nil {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("compacting the state store: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("compacting the state store: %w", err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		d.Sync() // the rename, durable
		d.Close()
	}
	s.db.Close()
	s.db = dst
	return nil
}

// clampNanos is t in Unix nanoseconds, clamped to the range that holds,
// for comparison with recorded times.
func clampNanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}
