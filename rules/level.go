package rules

import (
	"fmt"
	"strings"
)

// Level is a Postfix TLS security level.
//
// Levels have one order, weakest first: none, may, encrypt, verify,
// secure, dane, dane-only (Postfix's own, from the configuration reference).
// Floors, upgrade caps and evidence are compared in it, always through
// AtLeast, Higher and Lower, never with the operators on the underlying
// number. That order answers "is this level at or above that one"; it does
// not answer "does this level meet that requirement", because Postfix's
// "dane" is opportunistic: without usable TLSA records it falls back to
// "may". Combining two requirements is therefore Both, and Meets asks
// whether a level satisfies a requirement.
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
	for l := LevelNone; l <= LevelDaneOnly; l++ {
		if levelNames[l] == s { // as written by String, as pins keep it
			return l, nil
		}
	}
	w := strings.ToLower(strings.TrimSpace(s))
	for l := LevelNone; l <= LevelDaneOnly; l++ {
		if levelNames[l] == w {
			return l, nil
		}
	}
	return LevelUnset, fmt.Errorf("unknown TLS level %q (write one of: %s)", s, levelWords)
}

// AtLeast reports whether l is m or above it in the order of levels.
func (l Level) AtLeast(m Level) bool { return l >= m }

// Higher returns the higher of two levels in the order of levels.
func Higher(a, b Level) Level {
	if a.AtLeast(b) {
		return a
	}
	return b
}

// Lower returns the lower of two levels in the order of levels.
func Lower(a, b Level) Level {
	if a.AtLeast(b) {
		return b
	}
	return a
}

// Encrypted reports whether the level forbids plaintext delivery.
// LevelDane is opportunistic in Postfix (it falls back to "may" when the
// destination publishes no usable TLSA records), so it does not count.
func (l Level) Encrypted() bool {
	return l.AtLeast(LevelEncrypt) && l != LevelDane
}

// Both returns the level that meets both requirements a and b. It is the
// higher of the two, except for Postfix's opportunistic "dane": against a
// level that forbids plaintext it is the weaker requirement, because
// combining verify with dane by the order alone would let mail go out in
// plaintext when the destination publishes no TLSA records.
func Both(a, b Level) Level {
	switch {
	case a == LevelDane && b.Encrypted():
		return b
	case b == LevelDane && a.Encrypted():
		return a
	}
	return Higher(a, b)
}

// Meets reports whether level l satisfies the requirement m: delivering
// at l protects at least as well as m asks.
func (l Level) Meets(m Level) bool { return Both(l, m) == l }
