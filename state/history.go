package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Decision is one recorded answer of the daemon for a destination.
type Decision struct {
	Time        time.Time `json:"time"`
	Destination string    `json:"destination"` // normalised key as Postfix sends it: "example.org", "[mx.example.org]:25"
	Map         string    `json:"map"`         // "tlspolicy", a class name, "transport", or "rcpt" for RCPT-time actions
	Answer      string    `json:"answer"`      // the policy text ("verify protocols=>=TLSv1.2"), a route, "NOTFOUND", or an access(5) action at RCPT
	Previous    string    `json:"previous"`    // the answer before this one; "" for the first
	Rule        string    `json:"rule"`        // deciding rule as "FILE:LINE", or ""
	Evidence    Evidence  `json:"evidence"`
}

// Evidence is what the answer rested on besides the rule.
type Evidence struct {
	Probe  string `json:"probe,omitempty"`   // probe outcome, e.g. "verify", "encrypt (self-signed certificate at mx.example.org)", "failed: dns_failure"
	Pin    string `json:"pin,omitempty"`     // pinned level, e.g. "verify"
	MTASTS string `json:"mta_sts,omitempty"` // MTA-STS policy id and mode, e.g. "enforce id 2024a"
	DANE   string `json:"dane,omitempty"`    // DANE verdict, e.g. "dane_only"
	Sender string `json:"sender,omitempty"`  // RCPT-time only: the envelope sender
}

// ErrInvalidDecision means a decision cannot be stored: it has no
// destination or map, its destination contains a NUL byte, or its time is
// outside what Unix nanoseconds hold (years 1678 to 2262).
var ErrInvalidDecision = errors.New("decision cannot be recorded")

// A history key is
//
//	destination | 0x00 | ^time (8 bytes) | ^sequence (8 bytes) | map
//
// so that a destination's records are one contiguous range, newest first:
// reading a destination's history or its latest answer is a seek and a
// forward walk, and the records that pruning removes (the oldest) are the
// tail of each range. (Which destinations have records, and which have
// some to prune, the history index says: see bucketHistoryIndex.) time is
// Unix nanoseconds with the sign bit flipped, so that it sorts as unsigned,
// then inverted; sequence is the bucket's counter, inverted likewise, so
// that records of one destination in the same nanosecond keep their order
// of appending and never overwrite one another. The map comes last and
// needs no terminator; the destination must not contain a NUL byte.
//
// The value holds the rest of the Decision: historyV2, then Answer,
// Previous, Rule and the Evidence's fields in their order, each a string
// with its length (a uvarint) first. Releases before it stored the whole
// Decision as JSON, which still reads; those records, at about twice the
// size, go as they are pruned. (Those releases cannot read the new
// records: their history shows an error for them, and their daemon takes
// such a record for none.)
const historyFixed = 1 + 8 + 8 // bytes between the destination and the map

// historyV2 starts a history value in the current format; a JSON value
// starts with '{'.
const historyV2 = 2

// pruneBatch bounds the deletions in one PruneDecisions transaction, so
// that pruning a large history does not hold the write lock (and the old
// pages) for one long transaction.
const pruneBatch = 4096

// timeBits encodes Unix nanoseconds for a history key (see historyFixed).
func timeBits(nanos int64) uint64 { return ^(uint64(nanos) ^ 1<<63) }

// keyNanos decodes the time of a history key at the position after the
// destination's NUL.
func keyNanos(b []byte) int64 { return int64(^binary.BigEndian.Uint64(b) ^ 1<<63) }

// destPrefix is the start of every history key of destination.
func destPrefix(destination string) []byte {
	return append([]byte(destination), 0)
}

// splitKey returns a history key's destination prefix (with its NUL),
// time and map; ok is false for a key that is not a history key.
func splitKey(k []byte) (prefix []byte, nanos int64, mapName []byte, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i < 1 || len(k) < i+historyFixed {
		return nil, 0, nil, false
	}
	return k[:i+1], keyNanos(k[i+1:]), k[i+historyFixed:], true
}

// checkDecision reports whether d can be keyed (see historyFixed).
func checkDecision(d Decision) error {
	switch {
	case d.Destination == "" || d.Map == "":
		return fmt.Errorf("%w: destination %q, map %q", ErrInvalidDecision, d.Destination, d.Map)
	case strings.Contains(d.Destination, "\x00"):
		return fmt.Errorf("%w: destination %q contains NUL", ErrInvalidDecision, d.Destination)
	case d.Time.IsZero() || !time.Unix(0, d.Time.UnixNano()).Equal(d.Time):
		return fmt.Errorf("%w: time %v of %s", ErrInvalidDecision, d.Time, d.Destination)
	}
	return nil
}

// AppendDecisions implements Store. The batch is one transaction and one
// disk sync; an invalid decision fails the whole batch before it starts.
func (s *Bolt) AppendDecisions(ds ...Decision) error {
	for _, d := range ds {
		if err := checkDecision(d); err != nil {
			return err
		}
	}
	if len(ds) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketHistory)
		// An index that is not whole is left as it is, to be built
		// again (IndexHistory); one that is stays whole.
		idx := historyIndex(tx)
		for _, d := range ds {
			v := encodeDecision(d)
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			nanos := d.Time.UnixNano()
			k := destPrefix(d.Destination)
			k = binary.BigEndian.AppendUint64(k, timeBits(nanos))
			k = binary.BigEndian.AppendUint64(k, ^seq)
			k = append(k, d.Map...)
			if err := b.Put(k, v); err != nil {
				return err
			}
			if idx != nil {
				if err := indexAppended(idx, d.Destination, nanos); err != nil {
					return err
				}
			}
		}
		if idx == nil {
			return nil
		}
		return markIndexed(tx)
	})
}

// malformed is the error for a key in the history bucket that is not a
// history key.
func (s *Bolt) malformed(k []byte) error {
	return corrupt(s.path, "is corrupt: history key %q is malformed", k)
}

// decodeDecision decodes the record under k and checks that it is the
// record its key says.
func (s *Bolt) decodeDecision(k, v []byte) (Decision, error) {
	prefix, nanos, mapName, ok := splitKey(k)
	if !ok {
		return Decision{}, s.malformed(k)
	}
	if len(v) > 0 && v[0] == '{' {
		var d Decision
		if err := json.Unmarshal(v, &d); err != nil {
			return Decision{}, corrupt(s.path, "is corrupt: history record %q does not decode (%v)", k, err)
		}
		if d.Destination+"\x00" != string(prefix) || d.Map != string(mapName) || d.Time.UnixNano() != nanos {
			return Decision{}, corrupt(s.path, "is corrupt: history record %q is not the record its key names", k)
		}
		return d, nil
	}
	d := Decision{Time: time.Unix(0, nanos).UTC(), Destination: string(prefix[:len(prefix)-1]), Map: string(mapName)}
	fields := []*string{&d.Answer, &d.Previous, &d.Rule, &d.Evidence.Probe, &d.Evidence.Pin, &d.Evidence.MTASTS,
		&d.Evidence.DANE, &d.Evidence.Sender}
	if len(v) == 0 || v[0] != historyV2 {
		return Decision{}, corrupt(s.path, "is corrupt: history record %q is of no known format", k)
	}
	v = v[1:]
	for _, f := range fields {
		n, w := binary.Uvarint(v)
		if w <= 0 || n > uint64(len(v)-w) {
			return Decision{}, corrupt(s.path, "is corrupt: history record %q is cut short", k)
		}
		*f, v = string(v[w:w+int(n)]), v[w+int(n):]
	}
	if len(v) != 0 {
		return Decision{}, corrupt(s.path, "is corrupt: history record %q is longer than its fields", k)
	}
	return d, nil
}

// encodeDecision is the value of a history record (see historyFixed).
func encodeDecision(d Decision) []byte {
	e := d.Evidence
	fields := []string{d.Answer, d.Previous, d.Rule, e.Probe, e.Pin, e.MTASTS, e.DANE, e.Sender}
	n := 1
	for _, f := range fields {
		n += binary.MaxVarintLen64 + len(f)
	}
	v := append(make([]byte, 0, n), historyV2)
	for _, f := range fields {
		v = binary.AppendUvarint(v, uint64(len(f)))
		v = append(v, f...)
	}
	return v
}

// Decisions implements Store.
func (s *Bolt) Decisions(destination string, limit int) (ds []Decision, err error) {
	defer recoverCorrupt(s.path, &err, debug.SetPanicOnFault(true))
	p := destPrefix(destination)
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHistory).Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			if limit > 0 && len(ds) == limit {
				break
			}
			d, err := s.decodeDecision(k, v)
			if err != nil {
				return err
			}
			ds = append(ds, d)
		}
		return nil
	})
	return ds, err
}

// LatestDecision implements Store. It walks the destination's records
// newest first, reading only keys until one is of mapName, so its cost
// grows with the records of the destination's other maps that are newer.
func (s *Bolt) LatestDecision(destination, mapName string) (d Decision, found bool, err error) {
	defer recoverCorrupt(s.path, &err, debug.SetPanicOnFault(true))
	p := destPrefix(destination)
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHistory).Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			mapAt := len(p) - 1 + historyFixed
			if len(k) < mapAt {
				return s.malformed(k)
			}
			if string(k[mapAt:]) != mapName {
				continue
			}
			d, err = s.decodeDecision(k, v)
			found = err == nil
			return err
		}
		return nil
	})
	return d, found, err
}

// PruneDecisions implements Store. It reads the index entry of every
// destination and the records of those with some to remove only, and
// works in transactions of at most pruneBatch deletions; records appended
// meanwhile are pruned or not depending on whether the walk has passed
// their destination.
func (s *Bolt) PruneDecisions(olderThan time.Time, perDestination int) (removed int, err error) {
	return s.pruneDecisions(clampNanos(olderThan), perDestination, pruneBatch)
}

func deleteKeys(b *bolt.Bucket, keys [][]byte) error {
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// DecisionDestinations implements Store. It reads the history index
// only (WalkDecisionDestinations).
func (s *Bolt) DecisionDestinations(since time.Time) (dests []string, err error) {
	err = s.WalkDecisionDestinations(since, func(d []byte, _ time.Time) error {
		dests = append(dests, string(d))
		return nil
	})
	return dests, err
}

// CountDecisions implements Store. It counts the entries of the bucket's
// pages (bbolt's bucket statistics) without reading records; 0 if the
// store cannot say.
func (s *Bolt) CountDecisions() (n int) {
	defer func() {
		if recover() != nil {
			n = 0
		}
	}()
	s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketHistory).Stats().KeyN
		return nil
	})
	return n
}
