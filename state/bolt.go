package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	boltErrors "go.etcd.io/bbolt/errors"
)

var (
	bucketPins    = []byte("pins")
	bucketMeta    = []byte("meta")
	bucketHistory = []byte("history") // keys: see historyFixed
	keyVersion    = []byte("version")
	formatV1      = []byte("1")
)

// Bolt is the embedded store: one bbolt file. Every write is a
// transaction that bbolt syncs to disk before it returns, so a pin written
// survives a crash (kill -9, power loss) right after.
type Bolt struct {
	db   *bolt.DB
	path string
}

// growStep is how far ahead of its use the file grows. bbolt's default
// grows a small file to the next power of two (a 4.1 MiB store takes
// 8 MiB) and a large one in steps of 16 MiB; a step of 1 MiB keeps the
// file's size, which the metrics show, close to what the store holds, at
// the cost of a file extension (and sync) per MiB of growth.
const growStep = 1 << 20

// boltOptions are the options every store file is opened with.
func boltOptions(lockWait time.Duration) *bolt.Options {
	return &bolt.Options{Timeout: lockWait, FreelistType: bolt.FreelistMapType}
}

// OpenBolt opens (or creates) the store at path. It waits at most
// lockWait for another process's lock and then returns ErrLocked. A file
// that is not a whole, valid store (empty, truncated, damaged) gives a
// CorruptError: the daemon must not start without its pins as if it had
// none, and bbolt would take an empty file for a new store.
func OpenBolt(path string, lockWait time.Duration) (s *Bolt, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("state store %s: %w", path, err)
	}
	if empty, err := emptyFile(path); err != nil {
		return nil, fmt.Errorf("state store %s: %w", path, err)
	} else if empty {
		return nil, corrupt(path, "is empty or truncated")
	}
	// bbolt can panic on a damaged file, or fault reading a page past the
	// end of a truncated one, instead of returning an error.
	defer recoverCorrupt(path, &err, debug.SetPanicOnFault(true))
	db, err := bolt.Open(path, 0o600, boltOptions(lockWait))
	if errors.Is(err, boltErrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", ErrLocked, path)
	}
	if err != nil {
		return nil, openError(path, err)
	}
	db.AllocSize = growStep
	if err := prepare(db, path); err != nil {
		db.Close()
		return nil, err
	}
	return &Bolt{db: db, path: path}, nil
}

// prepare checks an open store file and creates what a new one lacks.
func prepare(db *bolt.DB, path string) (err error) {
	defer recoverCorrupt(path, &err, debug.SetPanicOnFault(true))
	if err := checkLength(db, path); err != nil {
		return err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyVersion); v != nil && string(v) != string(formatV1) {
			return corrupt(path, "has format version %q; this tlspolicyd reads %q", v, formatV1)
		}
		if err := meta.Put(keyVersion, formatV1); err != nil {
			return err
		}
		// A bucket added later (history, findings) is created in a store
		// of the same format version: its absence means it is empty.
		// Releases that do not know a bucket leave it alone.
		for _, b := range [][]byte{bucketPins, bucketHistory, bucketFindings, bucketFindingsBy} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return prepareIndex(tx)
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("state store %s: %w", path, err)
	}
	return err
}

// openError says why bbolt could not open the file at path.
func openError(path string, err error) error {
	if fi, serr := os.Stat(path); serr == nil && fi.Size() < 2*int64(os.Getpagesize()) {
		return corrupt(path, "is truncated (%d bytes, shorter than a store's first two pages)", fi.Size())
	}
	if errors.Is(err, boltErrors.ErrInvalid) || errors.Is(err, boltErrors.ErrChecksum) ||
		errors.Is(err, boltErrors.ErrVersionMismatch) || errors.Is(err, boltErrors.ErrInvalidMapping) {
		return corrupt(path, "is corrupt or not a state file (%v)", err)
	}
	return fmt.Errorf("state store %s: %w", path, err)
}

// checkLength refuses a file cut short: bbolt records how many pages the
// store has, and reading one past the end of the file would fault.
func checkLength(db *bolt.DB, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("state store %s: %w", path, err)
	}
	return db.View(func(tx *bolt.Tx) error {
		if tx.Size() > fi.Size() {
			return corrupt(path, "is truncated (%d bytes of %d)", fi.Size(), tx.Size())
		}
		return nil
	})
}

// Pins implements Store. A record that does not decode makes it fail:
// silently dropping pins would weaken answers.
func (s *Bolt) Pins() (pins []Pin, err error) {
	defer recoverCorrupt(s.path, &err, debug.SetPanicOnFault(true))
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		pins = make([]Pin, 0, b.Stats().KeyN)
		return b.ForEach(func(k, v []byte) error {
			var p Pin
			if err := json.Unmarshal(v, &p); err != nil || p.Key != string(k) {
				return corrupt(s.path, "is corrupt: pin %q does not decode (%v)", k, err)
			}
			pins = append(pins, p)
			return nil
		})
	})
	return pins, err
}

// recoverCorrupt, deferred by a function that reads the file, turns the
// panic with which bbolt can meet a damaged page, or the fault of reading
// past the end of a truncated file, into a CorruptError. It also restores
// the goroutine's panic-on-fault setting to old; defer it as
//
//	defer recoverCorrupt(path, &err, debug.SetPanicOnFault(true))
func recoverCorrupt(path string, err *error, old bool) {
	debug.SetPanicOnFault(old)
	if r := recover(); r != nil {
		*err = corrupt(path, "is corrupt or truncated (%v)", r)
	}
}

// PutPins implements Store. Concurrent callers are coalesced into one
// transaction (bbolt's Batch), so a burst of writes costs one disk sync.
func (s *Bolt) PutPins(pins ...Pin) error {
	return s.db.Batch(func(tx *bolt.Tx) error { return putPins(tx, pins) })
}

func putPins(tx *bolt.Tx, pins []Pin) error {
	b := tx.Bucket(bucketPins)
	for _, p := range pins {
		v, err := json.Marshal(p)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(p.Key), v); err != nil {
			return err
		}
	}
	return nil
}

// DeletePin implements Store.
func (s *Bolt) DeletePin(key string) (found bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		found = b.Get([]byte(key)) != nil
		return b.Delete([]byte(key))
	})
	return found, err
}

// Apply implements Store.
func (s *Bolt) Apply(c Changes) error {
	if len(c.Pins)+len(c.DeletePins)+len(c.Probes) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := putPins(tx, c.Pins); err != nil {
			return err
		}
		b := tx.Bucket(bucketPins)
		for _, k := range c.DeletePins {
			if err := b.Delete([]byte(k)); err != nil {
				return err
			}
		}
		return putProbes(tx, c.Probes)
	})
}

// Size implements Store.
func (s *Bolt) Size() int64 {
	fi, err := os.Stat(s.path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Close implements Store.
func (s *Bolt) Close() error { return s.db.Close() }
