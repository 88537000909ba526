package policyd

import (
	"errors"
	"iter"
	"math"
	"slices"
	"sort"
	"strings"
)

// The known destinations (those the status page and the API list) number
// a million on a large relay, nearly all of them known from the decision
// history. They are kept compact: the names one after another in one
// string and where each ends, about 22 bytes a destination of 18
// characters where a string in a map or a slice costs 40 to 170, and the
// lists that the pages read share that string rather than copy it.

// compactNames is a sorted list of names held as one string. Its fields
// are never changed, only replaced, so that copies of it share them.
type compactNames struct {
	names string   // one after another
	ends  []uint32 // name i is names[ends[i-1]:ends[i]] (ends[-1] = 0)
}

// errKnownFull means the names no longer fit compactNames's offsets (4
// GiB of them: some hundred million destinations).
var errKnownFull = errors.New("too many destinations with decision history to list")

func (c *compactNames) count() int { return len(c.ends) }

// name is name i: a substring, not a copy.
func (c *compactNames) name(i int) string {
	var from uint32
	if i > 0 {
		from = c.ends[i-1]
	}
	return c.names[from:c.ends[i]]
}

// find returns the index of name, or where it would be.
func (c *compactNames) find(name string) (int, bool) {
	i := sort.Search(len(c.ends), func(i int) bool { return c.name(i) >= name })
	return i, i < len(c.ends) && c.name(i) == name
}

// knownSet is the set of destinations with decision history, each with
// the time of its newest record (Unix nanoseconds). Most of it is read
// once, in order, from the state store's history index into its compact
// part; destinations recorded since go to a map, which is merged into the
// compact part once it grows past an eighth of it, and at each prune.
type knownSet struct {
	compactNames
	newest []int64 // newest record of name i of the compact part
	added  map[string]int64
}

// addedShare bounds the map beside a large compact part (one entry per
// this many of its names) before the two are merged; addedMin lets a small
// set grow by a few thousand before its first merge.
const (
	addedShare = 8
	addedMin   = 4096
)

// minTime is a cut-off that keeps everything.
const minTime = math.MinInt64

// knownBuilder builds a knownSet's compact part from destinations given
// in order.
type knownBuilder struct {
	names  strings.Builder
	ends   []uint32
	newest []int64
}

// add adds a destination, which must sort after those added before.
func (b *knownBuilder) add(destination []byte, newest int64) error {
	if b.names.Len()+len(destination) > math.MaxUint32 {
		return errKnownFull
	}
	b.names.Write(destination)
	b.end(newest)
	return nil
}

// addString is add for a destination held as a string.
func (b *knownBuilder) addString(destination string, newest int64) error {
	if b.names.Len()+len(destination) > math.MaxUint32 {
		return errKnownFull
	}
	b.names.WriteString(destination)
	b.end(newest)
	return nil
}

func (b *knownBuilder) end(newest int64) {
	b.ends = append(b.ends, uint32(b.names.Len()))
	b.newest = append(b.newest, newest)
}

func (b *knownBuilder) set() *knownSet {
	return &knownSet{compactNames: compactNames{names: b.names.String(), ends: b.ends}, newest: b.newest}
}

func (s *knownSet) len() int { return s.count() + len(s.added) }

// touch records a record of destination at newest.
func (s *knownSet) touch(destination string, newest int64) {
	if i, ok := s.find(destination); ok {
		s.newest[i] = max(s.newest[i], newest)
		return
	}
	if s.added == nil {
		s.added = make(map[string]int64)
	}
	if t, ok := s.added[destination]; !ok || newest > t {
		s.added[destination] = newest
	}
	if len(s.added) > max(addedMin, s.count()/addedShare) {
		s.compact(minTime)
	}
}

// sortedAdded is the map's destinations, sorted.
func (s *knownSet) sortedAdded() []string {
	added := make([]string, 0, len(s.added))
	for d := range s.added {
		added = append(added, d)
	}
	slices.Sort(added)
	return added
}

// compact merges the map into the compact part, leaving out the
// destinations whose newest record is older than cutoff.
func (s *knownSet) compact(cutoff int64) {
	added := s.sortedAdded()
	var b knownBuilder
	b.names.Grow(len(s.names) + len(added)*24)
	n := s.count() + len(added)
	b.ends, b.newest = make([]uint32, 0, n), make([]int64, 0, n)
	i, j := 0, 0
	for i < s.count() || j < len(added) {
		// A name is in one part or the other, never both (touch).
		var name string
		var t int64
		if j == len(added) || i < s.count() && s.name(i) < added[j] {
			name, t = s.name(i), s.newest[i]
			i++
		} else {
			name, t = added[j], s.added[added[j]]
			j++
		}
		if t < cutoff {
			continue
		}
		if b.addString(name, t) != nil {
			break // the rest would not fit: it stays out of the list
		}
	}
	*s = *b.set()
}

// absorb adds every destination of o, as touch would.
func (s *knownSet) absorb(o *knownSet) {
	for i := range o.count() {
		s.touch(o.name(i), o.newest[i])
	}
	for d, t := range o.added {
		s.touch(d, t)
	}
}

// list returns the set's destinations and others (sorted, without
// duplicates) as one list. It shares the compact part.
func (s *knownSet) list(others []string) *knownList {
	rest := mergeSorted(s.sortedAdded(), others)
	// Leave out of the rest what the compact part holds, in one pass
	// over both.
	kept, i := rest[:0], 0
	for _, r := range rest {
		for i < s.count() && s.name(i) < r {
			i++
		}
		if i == s.count() || s.name(i) != r {
			kept = append(kept, r)
		}
	}
	return &knownList{compactNames: s.compactNames, rest: kept}
}

// knownList is a sorted list of destinations without duplicates: a
// compact part, shared with the set it came from, and the rest, none of
// which is in the compact part.
type knownList struct {
	compactNames
	rest []string // sorted
}

func (l *knownList) len() int { return l.count() + len(l.rest) }

// all yields the destinations in order.
func (l *knownList) all() iter.Seq[string] {
	return func(yield func(string) bool) {
		i, j := 0, 0
		for i < l.count() || j < len(l.rest) {
			var name string
			if j == len(l.rest) || i < l.count() && l.name(i) < l.rest[j] {
				name = l.name(i)
				i++
			} else {
				name = l.rest[j]
				j++
			}
			if !yield(name) {
				return
			}
		}
	}
}

// page returns how many destinations contain q (case-insensitive; every
// one if q is empty) and those of them from offset on, at most limit
// (limit <= 0: all).
func (l *knownList) page(q string, offset, limit int) (names []string, matches int) {
	q = strings.ToLower(strings.TrimSpace(q))
	if q == "" {
		// No need to look at the names before offset.
		matches = l.len()
		offset = min(max(offset, 0), matches)
		end := matches
		if limit > 0 {
			end = min(offset+limit, end)
		}
		names = make([]string, 0, end-offset)
		i := 0
		for name := range l.all() {
			if i >= end {
				break
			}
			if i >= offset {
				names = append(names, name)
			}
			i++
		}
		return names, matches
	}
	names = []string{}
	for name := range l.all() {
		if !strings.Contains(name, q) {
			continue
		}
		if matches >= offset && (limit <= 0 || len(names) < limit) {
			names = append(names, name)
		}
		matches++
	}
	return names, matches
}

// mergeSorted merges two sorted lists without duplicates into one.
func mergeSorted(a, b []string) []string {
	out := make([]string, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || i < len(a) && a[i] < b[j]:
			out = append(out, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	return out
}
