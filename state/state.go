// Package state keeps what the daemon has learned across restarts: pins
// (a destination proved it can do encrypt or verify, so it must keep
// doing so until the pin expires, like HSTS for mail) and the last probe
// result of each destination.
//
// The daemon reads everything once at start and answers from memory;
// writes happen in the background, after probes, each in a transaction.
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

// Store persists pins and probe results.
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
	// Size is the store's size in bytes, for metrics.
	Size() int64
	Close() error
}

// ErrLocked means another process (a running daemon) holds the store.
var ErrLocked = errors.New("the state store is in use by another process")

// ErrCorrupt means the store file cannot be read as a store.
var ErrCorrupt = errors.New("the state store is corrupt or not a state store")
