package policyd

import (
	"context"
	"crypto/subtle"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tlspolicyd/tlspolicyd/state"
)

// The JSON API and the catalogue of known destinations behind it and the
// status page.

// historyShown bounds the history records a destination's API answer and
// page carry, and those its downgrades of the last 30 days are counted
// from (downgrades are rare; a destination with more than this many
// records in 30 days has answered far more often than it was attacked).
// The history command asks for all of them.
const historyShown = 200

// knownWait is how long a request for the list of known destinations
// waits, after a start, for the destinations with decision history to be
// read (a million take well under a second from a warm disk). After it,
// the status page shows the destinations known so far and says that more
// are being read; the API answers 503 with Retry-After, since a script
// would take a partial list for the whole.
const knownWait = 3 * time.Second

// knownDestinations are the destinations the daemon has answered for or
// probed within state.history, sorted: those with findings in the cache,
// with a pin, or with decision history. complete is false while the
// destinations with history are being read at start: the list then lacks
// those known only from the history.
func (d *Daemon) knownDestinations() (names *knownList, complete bool) {
	d.sums.mu.Lock()
	defer d.sums.mu.Unlock()
	return d.knownLocked()
}

// waitKnown is knownDestinations after waiting (knownWait at most, or
// until ctx ends) for the destinations with history to be read.
func (d *Daemon) waitKnown(ctx context.Context) (names *knownList, complete bool) {
	if d.history != nil {
		d.history.waitList(ctx, knownWait)
	}
	return d.knownDestinations()
}

// historyListed reports whether the destinations with history are all in
// memory.
func (d *Daemon) historyListed() bool { return d.history == nil || d.history.listComplete() }

// knownLocked is knownDestinations with d.sums.mu held. Building the list
// reads every cache entry, pin and history destination, so it is reused
// for a while (see reuseFor), unless it was built while the destinations
// with history were being read and they now are.
func (d *Daemon) knownLocked() (*knownList, bool) {
	now := d.now()
	complete := d.historyListed()
	if d.sums.names != nil && now.Before(d.sums.namesUntil) && d.sums.namesComplete == complete {
		return d.sums.names, complete
	}
	defer func() { d.sums.namesUntil = now.Add(reuseFor(d.now().Sub(now))) }()
	// The history's destinations are most of a large list, and come
	// sorted and compact: the few others are sorted and merged in.
	others := d.cache.Keys()
	// Only the keys: pinBook.list copies every pin.
	d.pins.pins.Range(func(k string, _ *heldPin) bool {
		others = append(others, k)
		return true
	})
	slices.Sort(others)
	others = slices.Compact(others)
	list := &knownList{rest: others}
	if d.history != nil {
		list = d.history.destinations(others)
	}
	d.sums.names, d.sums.namesComplete = list, complete
	return list, complete
}

// view is a destination's view with its downgrades of the last 30 days
// and, when full, its history.
func (d *Daemon) view(name string, full bool) DestinationView {
	v := d.Engine.View(name)
	if d.store == nil {
		return v
	}
	hist, err := d.store.Decisions(v.Destination, historyShown)
	if err != nil {
		d.log.Error("cannot read the decision history", "destination", v.Destination, "err", err)
	}
	v.Downgrades30d = downgradesSince(hist, d.now().Add(-30*24*time.Hour))
	if full {
		v.History = hist
	}
	return v
}

// downgradesSince counts the downgrade detections recorded since t.
func downgradesSince(hist []state.Decision, t time.Time) int {
	n := 0
	for _, h := range hist {
		if h.Map == MapDowngrade && !h.Time.Before(t) {
			n++
		}
	}
	return n
}

// apiDestinations answers GET /api/v1/destinations: every known
// destination, or with q, offset and limit a filtered page of them.
// While the destinations with history are still being read after a start
// (see knownWait), it answers 503 with Retry-After.
func (d *Daemon) apiDestinations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	offset, _ := strconv.Atoi(q.Get("offset"))
	limit, _ := strconv.Atoi(q.Get("limit"))
	known, complete := d.waitKnown(r.Context())
	if !complete {
		w.Header().Set("Retry-After", "5")
		http.Error(w, "the daemon has just started and is still reading the destinations of its decision history; try again shortly",
			http.StatusServiceUnavailable)
		return
	}
	names, _ := known.page(q.Get("q"), offset, limit)
	out := struct {
		Destinations []DestinationView `json:"destinations"`
	}{make([]DestinationView, 0, len(names))}
	for _, n := range names {
		out.Destinations = append(out.Destinations, d.view(n, false))
	}
	writeJSON(w, http.StatusOK, out)
}

// apiDestination answers GET /api/v1/destinations/NAME, with history.
func (d *Daemon) apiDestination(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := Target(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	v := d.view(name, true)
	if v.History == nil {
		v.History = []state.Decision{}
	}
	writeJSON(w, http.StatusOK, v)
}

// requireToken refuses requests without http.auth_file's token, when one
// is configured. The token comes as "Authorization: Bearer TOKEN", or as
// the password of HTTP basic authentication, which a browser asks for
// (any user name). The compare takes constant time.
func (d *Daemon) requireToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := d.Engine.Rules().Settings.HTTPToken
		if token == "" || tokenMatches(r, token) {
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="tlspolicyd"`)
		http.Error(w, "unauthorized: send the token of http.auth_file (Authorization: Bearer TOKEN)", http.StatusUnauthorized)
	})
}

func tokenMatches(r *http.Request, token string) bool {
	given := ""
	if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		given = strings.TrimSpace(b)
	} else if _, pw, ok := r.BasicAuth(); ok {
		given = pw
	}
	return subtle.ConstantTimeCompare([]byte(given), []byte(token)) == 1
}
