package policyd

import (
	"fmt"
	"strings"
)

// Level is a Postfix TLS security level. Levels are ordered from weakest to
// strongest, so that "at least" and "the stronger of" are plain comparisons.
// The order is the one fixed in the interface contract (SPEC.md).
type Level uint8

// The levels, weakest first. LevelUnset is the zero value: a rule that sets
// no level inherits the default floor.
const (
	LevelUnset Level = iota
	LevelNone
	LevelMay
	LevelEncrypt
	LevelVerify
	LevelSecure
	LevelDane
	LevelDaneOnly
)

var levelNames = [...]string{
	LevelUnset:    "",
	LevelNone:     "none",
	LevelMay:      "may",
	LevelEncrypt:  "encrypt",
	LevelVerify:   "verify",
	LevelSecure:   "secure",
	LevelDane:     "dane",
	LevelDaneOnly: "dane-only",
}

// levelWords lists the valid level words, for error messages.
const levelWords = "none, may, encrypt, verify, secure, dane, dane-only"

// String returns the Postfix policy word for the level.
func (l Level) String() string {
	if int(l) < len(levelNames) {
		return levelNames[l]
	}
	return fmt.Sprintf("Level(%d)", uint8(l))
}

// ParseLevel parses a Postfix policy word, case-insensitively.
func ParseLevel(s string) (Level, error) {
	w := strings.ToLower(strings.TrimSpace(s))
	for l := LevelNone; l <= LevelDaneOnly; l++ {
		if levelNames[l] == w {
			return l, nil
		}
	}
	return LevelUnset, fmt.Errorf("unknown TLS level %q (write one of: %s)", s, levelWords)
}

// Encrypted reports whether the level forbids plaintext delivery.
// LevelDane is opportunistic in Postfix (it falls back to "may" when the
// destination publishes no usable TLSA records), so it does not count.
func (l Level) Encrypted() bool {
	return l >= LevelEncrypt && l != LevelDane
}

// Stronger returns the level that protects at least as well as both. It
// is Max, except for Postfix's opportunistic "dane": without usable TLSA
// records it falls back to "may", so against a level that forbids
// plaintext it is the weaker one. (SPEC.md orders dane above secure; that
// order holds for floors, but combining verify with dane by it alone would
// let mail go out in plaintext.)
func Stronger(a, b Level) Level {
	switch {
	case a == LevelDane && b.Encrypted():
		return b
	case b == LevelDane && a.Encrypted():
		return a
	}
	return Max(a, b)
}

// Max returns the higher of two levels in SPEC.md's order.
func Max(a, b Level) Level {
	if a > b {
		return a
	}
	return b
}
