package policyd

import (
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/tlspolicyd/tlspolicyd/fleet"
	"github.com/tlspolicyd/tlspolicyd/internal/buildinfo"
	"github.com/tlspolicyd/tlspolicyd/rules"
)

// The status page: server-rendered HTML that works without JavaScript
// (a little of it filters and sorts the table in place). Every page is one
// handler that gathers a plain struct and renders one template.

//go:embed web/*.html web/*.css web/*.js
var webFiles embed.FS

// pageSize is how many destinations one page of the list shows.
const pageSize = 100

// attentionRows bounds the certificates the status page lists as expiring
// (it says how many more there are; the report lists them all).
const attentionRows = 25

// reuseFor is how long a result that took cost to compute is reused:
// twenty times as long, at most 15 s, so that however often the status
// page or a scrape asks, summing up 100,000 destinations takes at most a
// twentieth of a CPU, while a small daemon's page is always current.
func reuseFor(cost time.Duration) time.Duration { return min(20*cost, 15*time.Second) }

// summary is what the status page and the expiry metric say about every
// known destination at once.
type summary struct {
	at         time.Time
	complete   bool // of every known destination (see knownDestinations)
	Known      int
	ByLevel    []levelCount
	Expiring   []expiringCert // of destinations that must be encrypted, within 30 days, soonest first
	Downgrades []downgrade    // pins that saw a possible downgrade within 30 days
	Probed     int            // destinations with a good probe result
	Failed     int            // destinations whose last probe found nothing
	MTASTS     map[string]int // policies by mode
	DANE       map[string]int // verdicts
}

type levelCount struct {
	Level string
	Count int
}

type expiringCert struct {
	Destination, Host string
	NotAfter          time.Time
	Days              int
}

type downgrade struct {
	Destination, Pinned, Reason string
	At                          time.Time
}

// summaryCache keeps the summary and the list of known destinations for
// reuseFor their cost.
type summaryCache struct {
	mu            sync.Mutex
	sum           *summary
	sumUntil      time.Time
	names         *knownList // known destinations; shared read-only
	namesComplete bool
	namesUntil    time.Time
}

func (d *Daemon) summary() *summary {
	d.sums.mu.Lock()
	defer d.sums.mu.Unlock()
	now := d.now()
	if s := d.sums.sum; s != nil && now.Before(d.sums.sumUntil) && s.complete == d.historyListed() {
		return s
	}
	defer func() { d.sums.sumUntil = now.Add(reuseFor(d.now().Sub(now))) }()
	names, complete := d.knownLocked()
	s := &summary{at: now, complete: complete, MTASTS: map[string]int{}, DANE: map[string]int{}}
	levels := map[string]int{}
	for name := range names.all() {
		dec := d.Engine.Peek(name)
		s.Known++
		levels[dec.Level.String()]++
		if t, ok := targetOf(dec.Key); ok {
			if f, ok := d.cache.Peek(t); ok {
				s.addFindings(dec.Key.String(), dec.Level, f, now)
			}
		}
	}
	for l := rules.LevelNone; l <= rules.LevelDaneOnly; l++ {
		if n := levels[l.String()]; n > 0 {
			s.ByLevel = append(s.ByLevel, levelCount{l.String(), n})
		}
	}
	sort.Slice(s.Expiring, func(i, j int) bool { return s.Expiring[i].NotAfter.Before(s.Expiring[j].NotAfter) })
	for _, p := range d.pins.list() {
		if !p.LastDowngrade.IsZero() && now.Sub(p.LastDowngrade) < 30*24*time.Hour {
			s.Downgrades = append(s.Downgrades, downgrade{p.Key, p.Level, p.DowngradeReason, p.LastDowngrade})
		}
	}
	d.sums.sum = s
	return s
}

// addFindings counts what the probe and the published policies showed
// for a destination answered at level.
func (s *summary) addFindings(destination string, level rules.Level, f Findings, now time.Time) {
	if f.Probe.Failed() {
		s.Failed++
	} else {
		s.Probed++
	}
	if f.STS != nil {
		s.MTASTS[f.STS.Mode.String()]++
	}
	s.DANE[f.DANE.String()]++
	if !level.Encrypted() {
		return
	}
	for _, h := range f.Probe.Hosts {
		if !h.NotAfter.IsZero() && h.NotAfter.Sub(now) < 30*24*time.Hour {
			s.Expiring = append(s.Expiring, expiringCert{destination, h.Host, h.NotAfter, int(h.NotAfter.Sub(now).Hours() / 24)})
		}
	}
}

// expiringWithin counts the certificates of required destinations that
// expire within days, for tlspolicyd_certificates_expiring.
func (s *summary) expiringWithin(days int) int {
	n := 0
	for _, e := range s.Expiring {
		if e.Days < days {
			n++
		}
	}
	return n
}

// statusPage is the data of GET /.
type statusPage struct {
	Build                buildinfo.Info
	Started, ConfigTime  time.Time
	Uptime               string
	ConfigFile           string
	Sum                  *summary
	Expiring             []expiringCert // the soonest of Sum.Expiring
	ExpiringMore         int            // how many more there are
	Unmatched            []*rules.Rule
	Partial              bool // the destinations with decision history are still being read
	List                 []DestinationView
	Query                string
	Page, Pages, Matches int
	Prev, Next           string
	Fleet                *fleetStatus // nil: a daemon alone
}

// fleetStatus is the fleet card of the status page.
type fleetStatus struct {
	fleet.Status
	Ago string // since the last reconciliation with Redis
}

// fleetCard is the fleet's health, or nil without one.
func (d *Daemon) fleetCard() *fleetStatus {
	if d.fleet == nil {
		return nil
	}
	st := d.fleet.Status()
	fs := &fleetStatus{Status: st, Ago: "never"}
	if !st.LastSync.IsZero() {
		fs.Ago = d.now().Sub(st.LastSync).Round(time.Second).String() + " ago"
	}
	return fs
}

func (d *Daemon) statusHandler(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	rs := d.Engine.Rules()
	q := r.URL.Query().Get("q")
	pageNo, _ := strconv.Atoi(r.URL.Query().Get("page"))
	known, complete := d.waitKnown(r.Context())
	pageNo = max(pageNo, 1)
	names, matches := known.page(q, (pageNo-1)*pageSize, pageSize)
	pages := max(1, (matches+pageSize-1)/pageSize)
	if pageNo > pages {
		pageNo = pages
		names, _ = known.page(q, (pageNo-1)*pageSize, pageSize)
	}
	p := statusPage{
		Build: buildinfo.Read(), Started: d.started, Uptime: d.now().Sub(d.started).Round(time.Second).String(),
		ConfigFile: rs.File, ConfigTime: d.loadedAt(), Sum: d.summary(),
		Query: q, Page: pageNo, Pages: pages, Matches: matches, Fleet: d.fleetCard(),
	}
	p.Partial = !complete || !p.Sum.complete
	p.Expiring = p.Sum.Expiring[:min(len(p.Sum.Expiring), attentionRows)]
	p.ExpiringMore = len(p.Sum.Expiring) - len(p.Expiring)
	for _, rule := range rs.Rules {
		if !rule.Matched() {
			p.Unmatched = append(p.Unmatched, rule)
		}
	}
	for _, n := range names {
		p.List = append(p.List, d.view(n, false))
	}
	link := func(n int) string {
		return "/?" + url.Values{"q": {q}, "page": {strconv.Itoa(n)}}.Encode()
	}
	if pageNo > 1 {
		p.Prev = link(pageNo - 1)
	}
	if pageNo < pages {
		p.Next = link(pageNo + 1)
	}
	d.render(w, "status.html", p)
}

// destinationPage is the data of GET /d/NAME.
type destinationPage struct {
	Build buildinfo.Info
	View  DestinationView
	Maps  []mapAnswer
}

// mapAnswer is the answer of one map (the default or a class map).
type mapAnswer struct{ Map, Answer, Why string }

func (d *Daemon) destinationHandler(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := Target(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	p := destinationPage{Build: buildinfo.Read(), View: d.view(name, true)}
	p.Maps = append(p.Maps, mapAnswer{rules.MapTLSPolicy, p.View.Answer, p.View.Why})
	for _, c := range d.Engine.Rules().Classes {
		dec := d.Engine.PeekClass(name, c)
		p.Maps = append(p.Maps, mapAnswer{c.Name, answerText(dec.Answer), dec.Explain()})
	}
	d.render(w, "destination.html", p)
}

// render writes a page from its template.
func (d *Daemon) render(w http.ResponseWriter, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'")
	if err := d.pages.ExecuteTemplate(w, name, data); err != nil {
		d.log.Error("rendering the status page", "page", name, "err", err)
	}
}

// parsePages parses the embedded templates once.
func parsePages() *template.Template {
	funcs := template.FuncMap{
		"rfc3339": func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format(time.RFC3339)
		},
		"day":  func(t time.Time) string { return t.UTC().Format(time.DateOnly) },
		"dest": func(name string) string { return "/d/" + url.PathEscape(name) },
	}
	return template.Must(template.New("").Funcs(funcs).ParseFS(webFiles, "web/*.html"))
}

// mustSub is fs.Sub of an embedded tree whose folder is known to exist.
func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err) // the folder is embedded at build time
	}
	return sub
}

// staticHandler serves the embedded CSS and JavaScript.
func staticHandler() http.Handler {
	return http.StripPrefix("/static/", http.FileServerFS(mustSub(webFiles, "web")))
}
