package state

import (
	"bytes"
	"encoding/binary"
	"math"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The history index holds one entry per destination with decision
// history:
//
//	history-index: destination  ->  newest (8 bytes) | oldest (8 bytes) | count (uvarint)
//
// newest and oldest are the times of the destination's newest and oldest
// records, Unix nanoseconds with the sign bit flipped (as expiryBits), and
// count is how many records it has. It is what a daemon reads to list the
// destinations it knows (a million of them make 50 to 100 megabytes of
// index, where their records make hundreds), and what tells
// pruning which destinations have records to remove without reading the
// records of those that have none.
//
// AppendDecisions keeps the index up to date in the transaction that adds
// the records, and pruning in the one that removes them. The meta key
// history-index holds the history bucket's sequence (bumped by every
// record appended) as of the index's last update: the index is whole only
// while the two agree. A file written before the index existed, or to
// which a release that does not know it appended records, fails that test,
// and IndexHistory builds the index again from the records. (Such a
// release pruning records leaves entries that promise more than is left;
// pruning corrects those when it reaches them.)
var (
	bucketHistoryIndex = []byte("history-index")
	keyHistoryIndexed  = []byte("history-index")
)

// indexFill is how full bbolt packs the index's pages as IndexHistory
// writes it, in order: near full, so that the index a start reads is
// small. Entries added later in any order split those pages as needed.
const indexFill = 0.9

// indexBatch bounds the destinations one IndexHistory transaction adds,
// and scanBatch the index entries one read transaction of pruning looks
// at, so that neither holds the store (or its old pages) for long.
const (
	indexBatch = 50000
	scanBatch  = 65536
)

// indexEntry is a destination's entry in the history index.
type indexEntry struct {
	newest, oldest int64 // Unix nanoseconds
	count          uint64
}

func (e indexEntry) encode() []byte {
	v := make([]byte, 16, 16+binary.MaxVarintLen64)
	binary.BigEndian.PutUint64(v, uint64(e.newest)^1<<63)
	binary.BigEndian.PutUint64(v[8:], uint64(e.oldest)^1<<63)
	return binary.AppendUvarint(v, e.count)
}

// decodeEntry decodes an index value; ok is false for one that is not.
func decodeEntry(v []byte) (e indexEntry, ok bool) {
	if len(v) < 17 {
		return e, false
	}
	n, w := binary.Uvarint(v[16:])
	if w <= 0 || 16+w != len(v) {
		return e, false
	}
	return indexEntry{int64(binary.BigEndian.Uint64(v) ^ 1<<63), int64(binary.BigEndian.Uint64(v[8:]) ^ 1<<63), n}, true
}

// historyIndex returns the index bucket if it is whole (see the package's
// index comment), or nil.
func historyIndex(tx *bolt.Tx) *bolt.Bucket {
	idx, meta, hist := tx.Bucket(bucketHistoryIndex), tx.Bucket(bucketMeta), tx.Bucket(bucketHistory)
	if idx == nil || meta == nil || hist == nil {
		return nil
	}
	v := meta.Get(keyHistoryIndexed)
	if len(v) != 8 || binary.BigEndian.Uint64(v) != hist.Sequence() {
		return nil
	}
	return idx
}

// markIndexed records that the index is whole as of the history bucket's
// sequence now.
func markIndexed(tx *bolt.Tx) error {
	seq := binary.BigEndian.AppendUint64(nil, tx.Bucket(bucketHistory).Sequence())
	return tx.Bucket(bucketMeta).Put(keyHistoryIndexed, seq)
}

// prepareIndex creates the index bucket if the file lacks it. An empty
// history is indexed by an empty index at once; any other needs
// IndexHistory. It runs in prepare's transaction, after the other buckets
// exist.
func prepareIndex(tx *bolt.Tx) error {
	if tx.Bucket(bucketHistoryIndex) == nil {
		// The mark cannot describe an index that is not there.
		if err := tx.Bucket(bucketMeta).Delete(keyHistoryIndexed); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketHistoryIndex); err != nil {
			return err
		}
	}
	if historyIndex(tx) != nil {
		return nil
	}
	if k, _ := tx.Bucket(bucketHistory).Cursor().First(); k != nil {
		return nil
	}
	// Entries left of records that are gone go with them.
	if err := tx.DeleteBucket(bucketHistoryIndex); err != nil {
		return err
	}
	if _, err := tx.CreateBucket(bucketHistoryIndex); err != nil {
		return err
	}
	return markIndexed(tx)
}

// indexAppended updates idx for a record of destination at nanos, which
// the transaction has just added. An entry that does not decode is
// replaced: pruning puts its count and oldest time right when it reads the
// destination's records.
func indexAppended(idx *bolt.Bucket, destination string, nanos int64) error {
	k := []byte(destination)
	e, ok := decodeEntry(idx.Get(k))
	if !ok {
		e = indexEntry{newest: nanos, oldest: nanos}
	}
	e.newest, e.oldest, e.count = max(e.newest, nanos), min(e.oldest, nanos), e.count+1
	return idx.Put(k, e.encode())
}

// HistoryIndexed reports whether the history index is whole. A daemon
// calls IndexHistory at start when it is not, so that it can say it is
// doing so; the methods that need the index build it themselves.
func (s *Bolt) HistoryIndexed() bool {
	indexed := false
	s.db.View(func(tx *bolt.Tx) error {
		indexed = historyIndex(tx) != nil
		return nil
	})
	return indexed
}

// ensureIndexed builds the history index if it is not whole.
func (s *Bolt) ensureIndexed() error {
	if s.HistoryIndexed() {
		return nil
	}
	_, err := s.IndexHistory()
	return err
}

// IndexHistory builds the history index from the records and says how
// many destinations it holds. It reads every record's key once, in
// transactions of indexBatch destinations; one that fails part-way leaves
// the index marked as not whole, for a later call to start again.
func (s *Bolt) IndexHistory() (destinations int, err error) { return s.indexHistory(indexBatch) }

// indexHistory is IndexHistory with the destinations of one transaction
// as a parameter, so that tests can cross transactions with few records.
func (s *Bolt) indexHistory(batch int) (destinations int, err error) {
	defer recoverCorrupt(s.path, &err, debug.SetPanicOnFault(true))
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketMeta).Delete(keyHistoryIndexed); err != nil {
			return err
		}
		// Start from nothing: entries left by an interrupted build, or
		// kept while a release without the index wrote records, are not
		// trusted.
		if tx.Bucket(bucketHistoryIndex) != nil {
			if err := tx.DeleteBucket(bucketHistoryIndex); err != nil {
				return err
			}
		}
		_, err := tx.CreateBucket(bucketHistoryIndex)
		return err
	})
	if err != nil {
		return 0, err
	}
	var seq uint64    // the history's sequence when the build began
	var resume []byte // the destination prefix the next transaction starts at
	for done := false; !done; {
		n := 0
		err = s.db.Update(func(tx *bolt.Tx) error {
			hist := tx.Bucket(bucketHistory)
			idx := tx.Bucket(bucketHistoryIndex)
			idx.FillPercent = indexFill
			c := hist.Cursor()
			k, _ := c.First()
			if resume == nil {
				seq = hist.Sequence()
			} else {
				k, _ = c.Seek(resume)
			}
			for k != nil {
				p, nanos, _, ok := splitKey(k)
				if !ok {
					return s.malformed(k)
				}
				if n == batch {
					resume = bytes.Clone(p)
					return nil
				}
				e := indexEntry{newest: nanos, oldest: nanos, count: 1}
				for k, _ = c.Next(); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
					if len(k) < len(p)+8 {
						return s.malformed(k)
					}
					e.oldest, e.count = keyNanos(k[len(p):]), e.count+1
				}
				if err := idx.Put(bytes.Clone(p[:len(p)-1]), e.encode()); err != nil {
					return err
				}
				n++
			}
			done = true
			if hist.Sequence() != seq {
				return nil // records were added meanwhile: the index stays unmarked
			}
			return markIndexed(tx)
		})
		if err != nil {
			return destinations, err
		}
		destinations += n
	}
	return destinations, nil
}

// WalkDecisionDestinations implements Store. It reads the history index
// only.
func (s *Bolt) WalkDecisionDestinations(since time.Time, fn func(destination []byte, newest time.Time) error) (err error) {
	if err := s.ensureIndexed(); err != nil {
		return err
	}
	defer recoverCorrupt(s.path, &err, debug.SetPanicOnFault(true))
	from := clampNanos(since)
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHistoryIndex).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			e, ok := decodeEntry(v)
			if !ok {
				return corrupt(s.path, "is corrupt: the history index entry of %q is malformed", k)
			}
			if e.newest < from {
				continue
			}
			if err := fn(k, time.Unix(0, e.newest)); err != nil {
				return err
			}
		}
		return nil
	})
}

// DecisionDestinationsSize implements Store. It reads bbolt's statistics
// of the index, which come from its pages' headers, and counts every
// value as its shortest, so that nameBytes is not less than the names
// take; 0, 0 if the index is not whole.
func (s *Bolt) DecisionDestinationsSize() (destinations, nameBytes int) {
	defer func() {
		if recover() != nil {
			destinations, nameBytes = 0, 0
		}
	}()
	s.db.View(func(tx *bolt.Tx) error {
		if idx := historyIndex(tx); idx != nil {
			st := idx.Stats()
			const pageHeader, elementHeader, shortestValue = 16, 16, 17
			destinations = st.KeyN
			nameBytes = max(0, st.LeafInuse-st.LeafPageN*pageHeader-st.KeyN*(elementHeader+shortestValue))
		}
		return nil
	})
	return destinations, nameBytes
}

// pruneDecisions is PruneDecisions with the cut-off in Unix nanoseconds
// and the deletions of one transaction bounded by batch, so that tests
// can cross transactions with few records. It finds the destinations that
// have records to remove in the index, in read transactions, and removes
// their records, the oldest first, in write transactions of at most batch
// deletions, updating their entries.
func (s *Bolt) pruneDecisions(cut int64, keep, batch int) (removed int, err error) {
	if cut == math.MinInt64 && keep <= 0 {
		return 0, nil // no limits: nothing goes
	}
	if err := s.ensureIndexed(); err != nil {
		return 0, err
	}
	defer recoverCorrupt(s.path, &err, debug.SetPanicOnFault(true))
	var from []byte // the index key the next scan starts at
	for {
		todo, next, err := s.pruneCandidates(from, cut, keep, batch)
		if err != nil {
			return removed, err
		}
		for len(todo) > 0 {
			var n int
			err = s.db.Update(func(tx *bolt.Tx) error {
				var err error
				n, todo, err = s.pruneSome(tx, todo, cut, keep, batch)
				return err
			})
			if err != nil {
				return removed, err
			}
			removed += n
		}
		if next == nil {
			return removed, nil
		}
		from = next
	}
}

// pruneCandidates returns, from the index key from on, at most limit
// destinations whose entries say they have records older than cut or more
// than keep (keep <= 0: no count limit), looking at scanBatch entries at
// most; next is where to look on, nil at the end. An entry that does not
// decode is a candidate: pruning rewrites it from the records.
func (s *Bolt) pruneCandidates(from []byte, cut int64, keep, limit int) (todo [][]byte, next []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHistoryIndex).Cursor()
		k, v := c.First()
		if from != nil {
			k, v = c.Seek(from)
		}
		for seen := 0; k != nil; k, v = c.Next() {
			if len(todo) == limit || seen == scanBatch {
				next = bytes.Clone(k)
				return nil
			}
			seen++
			e, ok := decodeEntry(v)
			if !ok || e.oldest < cut || keep > 0 && e.count > uint64(keep) {
				todo = append(todo, bytes.Clone(k))
			}
		}
		return nil
	})
	return todo, next, err
}

// pruneSome removes, in tx, records of the destinations in todo, in order,
// at most budget of them, and updates their index entries. It returns how
// many it removed and the destinations still to do: the first of them may
// be one it did in part.
func (s *Bolt) pruneSome(tx *bolt.Tx, todo [][]byte, cut int64, keep, budget int) (removed int, rest [][]byte, err error) {
	hist, idx := tx.Bucket(bucketHistory), tx.Bucket(bucketHistoryIndex)
	for i, dest := range todo {
		if budget == 0 {
			return removed, todo[i:], nil
		}
		p := destPrefix(string(dest))
		c := hist.Cursor()
		// The records run newest first, and what either limit removes
		// is their tail: count them, and those kept before it.
		var n, kept int
		var newest int64
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			if len(k) < len(p)+8 {
				return removed, nil, s.malformed(k)
			}
			nanos := keyNanos(k[len(p):])
			if n == 0 {
				newest = nanos
			}
			if kept == n && nanos >= cut && (keep <= 0 || n < keep) {
				kept++
			}
			n++
		}
		// Remove from the end of the range, the oldest first, so that
		// what a transaction leaves is still a newest-first run whose
		// entry is its first and last record.
		del := min(n-kept, budget)
		var doomed [][]byte
		for k := lastRecord(c, dest); len(doomed) < del; k, _ = c.Prev() {
			doomed = append(doomed, bytes.Clone(k))
		}
		if err := deleteKeys(hist, doomed); err != nil {
			return removed, nil, err
		}
		removed += del
		budget -= del
		if left := n - del; left == 0 {
			err = idx.Delete(dest)
		} else {
			e := indexEntry{newest: newest, oldest: keyNanos(lastRecord(c, dest)[len(p):]), count: uint64(left)}
			err = idx.Put(dest, e.encode())
		}
		if err != nil {
			return removed, nil, err
		}
		if del < n-kept {
			return removed, todo[i:], nil // budget spent within this destination
		}
	}
	return removed, nil, nil
}

// lastRecord moves c to the last (oldest) record of destination and
// returns its key; the caller knows there is one.
func lastRecord(c *bolt.Cursor, destination []byte) []byte {
	// destination followed by 0x01 sorts after all its keys and before
	// the next destination's, since destinations hold no NUL.
	k, _ := c.Seek(append(bytes.Clone(destination), 1))
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	return k
}
