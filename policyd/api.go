package policyd

import (
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

// knownDestinations are the destinations the daemon has answered for or
// probed within state.history, sorted: those with findings in the cache,
// with a pin, or with decision history.
func (d *Daemon) knownDestinations() []string {
	d.sums.mu.Lock()
	defer d.sums.mu.Unlock()
	return d.knownLocked()
}

// knownLocked is knownDestinations with d.sums.mu held. Building the list
// reads every cache entry, pin and history destination, so it is reused
// for a while (see reuseFor).
func (d *Daemon) knownLocked() []string {
	now := d.now()
	if d.sums.names != nil && now.Before(d.sums.namesUntil) {
		return d.sums.names
	}
	defer func() { d.sums.namesUntil = now.Add(reuseFor(d.now().Sub(now))) }()
	set := make(map[string]struct{})
	for _, k := range d.cache.Keys() {
		set[k] = struct{}{}
	}
	for _, p := range d.pins.list() {
		set[p.Key] = struct{}{}
	}
	if d.history != nil {
		for _, k := range d.history.destinations() {
			set[k] = struct{}{}
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	d.sums.names = out
	return out
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

// filterDestinations keeps the names containing q (case-insensitive).
func filterDestinations(names []string, q string) []string {
	q = strings.ToLower(strings.TrimSpace(q))
	if q == "" {
		return names
	}
	out := names[:0:0]
	for _, n := range names {
		if strings.Contains(n, q) {
			out = append(out, n)
		}
	}
	return out
}

// page returns names[offset:offset+limit], clamped; limit <= 0 means all.
func page(names []string, offset, limit int) []string {
	offset = min(max(offset, 0), len(names))
	end := len(names)
	if limit > 0 {
		end = min(offset+limit, end)
	}
	return names[offset:end]
}

// apiDestinations answers GET /api/v1/destinations: every known
// destination, or with q, offset and limit a filtered page of them.
func (d *Daemon) apiDestinations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	offset, _ := strconv.Atoi(q.Get("offset"))
	limit, _ := strconv.Atoi(q.Get("limit"))
	names := page(filterDestinations(d.knownDestinations(), q.Get("q")), offset, limit)
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
