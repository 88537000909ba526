// Package state keeps what the daemon has learned across restarts: pins
// (a destination proved it can do encrypt or verify, so it must keep
// doing so until the pin expires, like HSTS for mail), the last probe
// result of each destination, and the history of its answers (each
// change of the answer for a destination and map, with what it rested on,
// for a postmaster or an auditor to look up later).
//
// The daemon reads pins and probe results once at start and answers from
// memory; the history is read only when someone asks for it. Writes
// happen in the background, after probes or in batches of decisions,
// each in a transaction.
// Store is an interface so that a store shared by a fleet of daemons can
// be added later; Bolt (go.etcd.io/bbolt) is the embedded one.
package state

import (
	"errors"
	"time"
)

// Pin records that a destination has shown a level.
type Pin struct {
	Key       string    `json:"destination"` // the probe target key, e.g. "example.org" or "[mx.example.org]:2525"
	Level     string    `json:"level"`       // "encrypt" or "verify"
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"` // last probe that confirmed the level
	Expires   time.Time `json:"expires"`   // LastSeen + state.pin_ttl
	Source    string    `json:"source"`    // "probe" or "admin"
	// The last probe that saw less than the pinned level: a possible
	// STARTTLS-stripping or downgrade attack.
	LastDowngrade   time.Time `json:"last_downgrade,omitzero"`
	DowngradeReason string    `json:"downgrade_reason,omitempty"`
}

// Valid reports whether the pin is in force at now.
func (p Pin) Valid(now time.Time) bool { return now.Before(p.Expires) }

// Probe is a destination's stored findings (its probe result and what it
// publishes): the target key and the findings as the daemon encoded them
// (JSON), so that this package need not know their shape.
type Probe struct {
	Key      string
	Findings []byte
}

// Store persists pins, probe results and the decision history.
type Store interface {
	// Load returns everything stored.
	Load() ([]Pin, []Probe, error)
	// PutPins writes pins (replacing those with the same keys) in one
	// transaction.
	PutPins(pins ...Pin) error
	// DeletePin removes a pin; it reports whether there was one.
	DeletePin(key string) (bool, error)
	// PutProbes writes probe results in one transaction.
	PutProbes(probes ...Probe) error
	// AppendDecisions records decisions in one transaction, so that a
	// recorder that batches them costs one disk sync per batch.
	AppendDecisions(ds ...Decision) error
	// Decisions returns the records of destination, newest first, at most
	// limit of them (limit <= 0: all).
	Decisions(destination string, limit int) ([]Decision, error)
	// LatestDecision returns the newest record of destination and mapName;
	// found is false if there is none. After a restart it tells the
	// recorder the answer a new one follows.
	LatestDecision(destination, mapName string) (d Decision, found bool, err error)
	// PruneDecisions removes the records older than olderThan (zero: none
	// by age) and, of each destination, all but its newest perDestination
	// records (perDestination <= 0: no count limit). It works in several
	// transactions, so that a large history does not hold the store for
	// long; removed counts what those that committed removed.
	PruneDecisions(olderThan time.Time, perDestination int) (removed int, err error)
	// DecisionDestinations returns, sorted, the destinations with a record
	// at or after since.
	DecisionDestinations(since time.Time) ([]string, error)
	// CountDecisions is the number of records, for metrics.
	CountDecisions() int
	// Size is the store's size in bytes, for metrics.
	Size() int64
	Close() error
}

// ErrLocked means another process (a running daemon) holds the store.
var ErrLocked = errors.New("the state store is in use by another process")

// ErrCorrupt means the store file cannot be read as a store.
var ErrCorrupt = errors.New("the state store is corrupt or not a state store")
