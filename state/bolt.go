package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	boltErrors "go.etcd.io/bbolt/errors"
)

var (
	bucketPins    = []byte("pins")
	bucketProbes  = []byte("probes")
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

// OpenBolt opens (or creates) the store at path. It waits at most
// lockWait for another process's lock and then returns ErrLocked. A file
// that is not a valid store gives ErrCorrupt: the daemon must not start
// without its pins as if it had none.
func OpenBolt(path string, lockWait time.Duration) (s *Bolt, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("state store %s: %w", path, err)
	}
	defer func() {
		// bbolt can panic on a damaged file instead of returning an error.
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockWait, FreelistType: bolt.FreelistMapType})
	switch {
	case errors.Is(err, boltErrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s", ErrLocked, path)
	case errors.Is(err, boltErrors.ErrInvalid), errors.Is(err, boltErrors.ErrChecksum),
		errors.Is(err, boltErrors.ErrVersionMismatch), errors.Is(err, boltErrors.ErrInvalidMapping):
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	case err != nil:
		return nil, fmt.Errorf("state store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyVersion); v != nil && string(v) != string(formatV1) {
			return fmt.Errorf("%w: format version %q, this tlspolicyd reads %q", ErrCorrupt, v, formatV1)
		}
		if err := meta.Put(keyVersion, formatV1); err != nil {
			return err
		}
		// A bucket added later (history) is created in a store of the
		// same format version: its absence means it is empty.
		for _, b := range [][]byte{bucketPins, bucketProbes, bucketHistory} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("state store %s: %w", path, err)
	}
	return &Bolt{db: db, path: path}, nil
}

// Load implements Store. A record that does not decode makes the whole
// load fail: silently dropping pins would weaken answers.
func (s *Bolt) Load() (pins []Pin, probes []Probe, err error) {
	defer s.recoverCorrupt(&err)
	err = s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketPins).ForEach(func(k, v []byte) error {
			var p Pin
			if err := json.Unmarshal(v, &p); err != nil || p.Key != string(k) {
				return fmt.Errorf("%w: %s: pin %q does not decode: %v", ErrCorrupt, s.path, k, err)
			}
			pins = append(pins, p)
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketProbes).ForEach(func(k, v []byte) error {
			probes = append(probes, Probe{Key: string(k), Findings: append([]byte(nil), v...)})
			return nil
		})
	})
	return pins, probes, err
}

// recoverCorrupt, deferred by a method that reads the file, turns the
// panic with which bbolt can meet a damaged page into ErrCorrupt.
func (s *Bolt) recoverCorrupt(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, r)
	}
}

// PutPins implements Store. Concurrent callers are coalesced into one
// transaction (bbolt's Batch), so a burst of probes costs one disk sync.
func (s *Bolt) PutPins(pins ...Pin) error {
	return s.db.Batch(func(tx *bolt.Tx) error {
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
	})
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

// PutProbes implements Store.
func (s *Bolt) PutProbes(probes ...Probe) error {
	return s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketProbes)
		for _, p := range probes {
			if err := b.Put([]byte(p.Key), p.Findings); err != nil {
				return err
			}
		}
		return nil
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
