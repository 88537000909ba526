// Package state keeps what the daemon has learned across restarts: pins
// (a destination proved it can do encrypt or verify, so it must keep
// doing so until the pin expires, like HSTS for mail), the last probe
// result of each destination, and the history of its answers (each
// change of the answer for a destination and map, with what it rested on,
// for a postmaster or an auditor to look up later).
//
// The daemon reads pins and the newest probe results once at start and
// answers from memory; of the history it reads, in the background, one
// index entry per destination (for the list of known destinations), and
// the records only when someone asks for them.
// Writes happen in the background, in batches, each batch one transaction.
// What expires is pruned: pins at their expiry, probe results when they
// are no longer fresh, history after state.history. Failed probes are
// never stored (the daemon keeps them in memory only).
// Store is an interface so that a store shared by a fleet of daemons can
// be added later; Bolt (go.etcd.io/bbolt) is the embedded one.
package state

import (
	"errors"
	"fmt"
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
// publishes): the target key, when they stop being fresh, and the findings
// as the daemon encoded them, so that this package need not know their
// shape.
type Probe struct {
	Key      string
	Expires  time.Time // PruneProbes removes the findings then
	Findings []byte
}

// Changes are writes made together, in one transaction: one disk sync for
// a batch of pins learnt, pins removed and findings.
type Changes struct {
	Pins       []Pin    // written, replacing those with the same keys
	DeletePins []string // removed, if present
	Probes     []Probe  // written, replacing each destination's earlier findings
}

// Store persists pins, probe results and the decision history.
type Store interface {
	// Pins returns every stored pin.
	Pins() ([]Pin, error)
	// PutPins writes pins (replacing those with the same keys) in one
	// transaction.
	PutPins(pins ...Pin) error
	// DeletePin removes a pin; it reports whether there was one.
	DeletePin(key string) (bool, error)
	// PutProbes writes findings in one transaction; each replaces the
	// findings stored for its destination.
	PutProbes(probes ...Probe) error
	// Apply makes changes in one transaction.
	Apply(c Changes) error
	// Probes calls fn with the findings that have not expired at now,
	// those that expire last first, at most limit of them (limit <= 0:
	// all). p.Findings is valid only during the call. An error from fn
	// ends the walk and is returned.
	Probes(now time.Time, limit int, fn func(p Probe) error) error
	// PruneProbes removes the findings that have expired at now and says
	// how many. It works in several transactions, like PruneDecisions.
	PruneProbes(now time.Time) (removed int, err error)
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
	// WalkDecisionDestinations calls fn, in order, with each destination
	// that has a record at or after since and the time of its newest
	// record, reading only one entry per destination; destination is
	// valid only during the call. An error from fn ends the walk and is
	// returned.
	WalkDecisionDestinations(since time.Time, fn func(destination []byte, newest time.Time) error) error
	// DecisionDestinationsSize says, for a caller that sizes its memory
	// before WalkDecisionDestinations, how many destinations have records
	// and how many bytes their names take, at most; 0, 0 if it cannot
	// say cheaply.
	DecisionDestinationsSize() (destinations, nameBytes int)
	// CountDecisions is the number of records, for metrics.
	CountDecisions() int
	// Size is the store's size in bytes, for metrics.
	Size() int64
	Close() error
}

// ErrLocked means another process (a running daemon) holds the store.
var ErrLocked = errors.New("the state store is in use by another process")

// ErrCorrupt means the store file cannot be read as a store: it is empty,
// truncated, damaged, or not a store at all. The errors that match it are
// CorruptErrors, which say which file, what is wrong and what to do.
var ErrCorrupt = errors.New("the state store is corrupt or not a state store")

// CorruptError is a store file that cannot be used. Its message names the
// file and says what to do, since a daemon that refuses to start over it
// holds up mail until someone acts.
type CorruptError struct {
	Path    string
	Problem string // e.g. "is empty or truncated", "is corrupt: pin \"x\" does not decode"
}

func (e *CorruptError) Error() string {
	return "state file " + e.Path + " " + e.Problem + ": move it aside to start with no pins (pins learnt from probes " +
		"will be learnt again, pins added by hand must be added again), or restore it from backup"
}

// Is makes errors.Is(err, ErrCorrupt) hold.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// corrupt is a CorruptError with a formatted problem.
func corrupt(path, format string, args ...any) error {
	return &CorruptError{Path: path, Problem: fmt.Sprintf(format, args...)}
}
