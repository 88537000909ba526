package policyd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/tlspolicyd/tlspolicyd/fleet"
	"github.com/tlspolicyd/tlspolicyd/internal/monoclock"
	"github.com/tlspolicyd/tlspolicyd/internal/ratelog"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/state"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

// Daemon runs every configured listener over one engine. main builds it
// with the registry it owns; tests build it the same way in-process.
type Daemon struct {
	Engine  *Engine
	cache   *tlsprobe.Cache[Findings]
	store   state.Store
	pins    *pinBook
	metrics *Metrics
	wire    *wire.Metrics
	log     *slog.Logger
	gather  prometheus.Gatherer
	now     func() time.Time
	history *recorder
	writer  *storeWriter
	fleet   *fleet.Fleet // nil: a daemon alone
	local   fleetLocal   // what the fleet sees of the daemon
	pages   *template.Template
	sums    summaryCache
	started time.Time
	// settings are those the daemon started with: what it built its
	// listeners, store and prober from, which a reload does not change.
	settings rules.Settings
	loaded   atomic.Int64 // when the rules in force were loaded, Unix nanoseconds

	mu      sync.Mutex // guards reloads; lookups never take it
	servers []*wire.Server
	addrs   map[string]net.Addr // protocol -> bound address
	http    *http.Server
	wg      sync.WaitGroup
}

// Options are what main (or a test) hands the daemon: where metrics go,
// where logs go, and the probing dependencies.
type Options struct {
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer // served on /metrics
	Logger     *slog.Logger
	Probe      ProbeDeps // zero: real DNS, network and clock
}

// NewDaemon prepares a daemon answering from p, with probes as the
// settings describe.
func NewDaemon(p *rules.Rules, opts Options) (*Daemon, error) {
	deps := opts.Probe
	if deps.Metrics == nil {
		deps.Metrics = tlsprobe.NewMetrics(opts.Registerer)
	}
	if deps.Registerer == nil {
		deps.Registerer = opts.Registerer
	}
	gatherer, err := NewGatherer(p.Settings, deps)
	if err != nil {
		return nil, err
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	// The store is opened once, and a damaged or locked one stops the
	// daemon: starting without its pins would silently weaken answers.
	loadStart := time.Now()
	store, err := openStore(p.Settings, now, opts.Logger)
	if err != nil {
		return nil, err
	}
	// One clock for pins and findings: a lookup reads it once for both.
	clock := monoclock.New(deps.Now)
	book := newPinBook(store, p.Settings.PinTTL, clock, opts.Logger, opts.Registerer)
	writer := newStoreWriter(store, book, p.Settings.ProbeTTL, now, opts.Logger, opts.Registerer)
	gather := gatherer.Gather
	fl := newFleet(p.Settings, opts, now)
	var cache *tlsprobe.Cache[Findings]
	if fl != nil {
		book.fleet = fl
		gather = fleetGather(fl, gather, now, func(t tlsprobe.Target) (Findings, bool) { return cache.Peek(t) })
	}
	cache = newFindingsCache(p.Settings, gather, deps, clock, onFindings(book, writer, p.Settings.MinTLSVersion))
	// Pins and findings load side by side: each is about half the work
	// of a start with many of both.
	var (
		pins    []state.Pin
		pinsErr error
		loaded  = make(chan struct{})
	)
	go func() {
		defer close(loaded)
		if pins, pinsErr = store.Pins(); pinsErr == nil {
			book.load(pins)
		}
	}()
	restored, skipped, err := restoreFindings(store, cache, now())
	<-loaded
	if err = cmp.Or(pinsErr, err); err != nil {
		if fl != nil {
			fl.Close()
		}
		cache.Close()
		store.Close()
		return nil, err
	}
	if skipped > 0 {
		opts.Logger.Warn("stored findings that do not decode were skipped; those destinations are probed again",
			"path", p.Settings.StatePath, "skipped", skipped)
	}
	e := NewEngine(p, cache)
	e.pins = book
	e.log = opts.Logger
	e.history = newRecorder(store, func() time.Duration { return e.Rules().Settings.HistoryTTL },
		func() rules.DecisionLog { return e.Rules().Settings.LogDecisions }, now, opts.Logger, opts.Registerer)
	book.downgraded = e.recordDowngrade
	e.history.fleet = fl
	d := &Daemon{
		history: e.history,
		writer:  writer,
		fleet:   fl,
		local: fleetLocal{book: book, history: e.history, cache: cache, writer: writer, minTLS: p.Settings.MinTLSVersion, now: now,
			ttl: p.Settings.ProbeTTL},
		pages:   parsePages(),
		Engine:  e,
		cache:   cache,
		store:   store,
		pins:    book,
		metrics: NewMetrics(opts.Registerer),
		wire:    wire.NewMetrics(opts.Registerer),
		log:     opts.Logger,
		gather:  opts.Gatherer,
		now:     time.Now,
	}
	d.started = d.now()
	d.settings = p.Settings
	d.configLoaded(p)
	d.registerSummaryMetrics(opts.Registerer)
	opts.Logger.Info("state loaded", "path", p.Settings.StatePath, "pins", len(pins), "probe_results", restored,
		"took", time.Since(loadStart).Round(time.Millisecond).String())
	return d, nil
}

// Start opens every configured listener and serves in the background. If
// any listener cannot be opened, the ones already open are closed and the
// error says which failed.
func (d *Daemon) Start() error {
	s := d.Engine.Rules().Settings
	d.addrs = make(map[string]net.Addr)
	rcpt := RcptService{Engine: d.Engine, Metrics: d.metrics}
	type proto struct {
		name, addr string
		codec      wire.Codec
	}
	protos := []proto{
		{"socketmap", s.Listen.Socketmap, wire.NewSocketmapCodec(d.Engine)},
		{"tcptable", s.Listen.TCPTable, wire.NewTCPTableCodec(d.Engine)},
		{"policy", s.Listen.Policy, wire.NewDelegationCodec(rcpt)},
		{"exim", s.Listen.Exim, wire.NewEximCodec(d.Engine, rcpt)},
	}
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	for _, p := range protos {
		if p.addr == "" {
			continue
		}
		l, err := wire.Listen(p.addr, s.SocketMode)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen.%s: %w", p.name, err)
		}
		listeners = append(listeners, l)
		d.addrs[p.name] = l.Addr()
		d.servers = append(d.servers, &wire.Server{
			Protocol:    p.name,
			Codec:       p.codec,
			MaxConns:    s.MaxConnections,
			IdleTimeout: s.IdleTimeout,
			// Time for a lookup that waits probe.wait; a reload that
			// changes probe.wait applies here after a restart.
			RequestTimeout: requestTimeout(s),
			Logger:         d.log, // the server labels its lines with the protocol
			Metrics:        d.wire.Protocol(p.name),
		})
	}
	var httpL net.Listener
	if s.Listen.HTTP != "" {
		l, err := wire.Listen(s.Listen.HTTP, s.SocketMode)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen.http: %w", err)
		}
		httpL = l
		d.addrs["http"] = l.Addr()
	}
	d.history.start()
	d.writer.start()
	if d.fleet != nil {
		d.fleet.Start(d.local)
	}
	for i, srv := range d.servers {
		l := listeners[i]
		d.log.Info("listening", "protocol", srv.Protocol, "addr", l.Addr().String())
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, wire.ErrServerClosed) {
				d.log.Error("server stopped", "protocol", srv.Protocol, "err", err)
			}
		}()
	}
	if httpL != nil {
		d.http = &http.Server{Handler: d.httpHandler(), ReadHeaderTimeout: 10 * time.Second,
			// net/http's own complaints (accept errors, panics) go to the
			// daemon's log, in its format and under its rate limit.
			ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}
		d.log.Info("listening", "protocol", "http", "addr", httpL.Addr().String())
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := d.http.Serve(httpL); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("http server stopped", "err", err)
			}
		}()
	}
	return nil
}

// Addr returns the address a protocol's listener is bound to ("socketmap",
// "tcptable", "http"), or nil. With port 0 in the configuration, it tells
// which port the system chose.
func (d *Daemon) Addr(protocol string) net.Addr { return d.addrs[protocol] }

// Reload loads the configuration file again and puts it in force. A file
// that would not start the daemon is refused (LoadConfig, as serve and
// check validate): the running rules stay, and the error is returned (and
// counted) so the operator sees it in the log and metrics. Settings that
// only a restart applies are logged when they differ from those the daemon
// started with, on every reload until the restart.
func (d *Daemon) Reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	file := d.Engine.Rules().File
	p, err := LoadConfig(file)
	if err != nil {
		d.metrics.Reload(false)
		return err
	}
	for _, msg := range restartOnly(d.settings, p.Settings) {
		d.log.Warn(msg, "config", file)
	}
	d.Engine.SetRules(p)
	for _, w := range p.Warnings {
		// Each is a different warning under one message: none may be
		// held back by the log's rate limit.
		d.log.WarnContext(ratelog.Unlimited(context.Background()), "configuration", "warning", w.Error())
	}
	d.metrics.Reload(true)
	d.configLoaded(p)
	return nil
}

// Shutdown stops accepting, lets requests in flight finish and closes
// every connection, or gives up when ctx ends.
func (d *Daemon) Shutdown(ctx context.Context) error {
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, s := range d.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Shutdown(ctx); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", s.Protocol, err))
				mu.Unlock()
			}
		}()
	}
	if d.http != nil {
		if err := d.http.Shutdown(ctx); err != nil {
			mu.Lock()
			errs = append(errs, fmt.Errorf("http: %w", err))
			mu.Unlock()
		}
	}
	wg.Wait()
	d.wg.Wait()
	d.cache.Close()
	if d.fleet != nil {
		// After the probes, whose findings it sends; before the writer,
		// which writes what the fleet brings.
		if err := d.fleet.Close(); err != nil {
			errs = append(errs, fmt.Errorf("fleet: %w", err))
		}
	}
	d.writer.close()  // after the probes, whose pins and findings it writes
	d.history.close() // after the probes, whose downgrades it records
	if err := d.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("state store: %w", err))
	}
	return errors.Join(errs...)
}

// configLoaded records a configuration taking effect.
func (d *Daemon) configLoaded(rs *rules.Rules) {
	now := d.now()
	d.loaded.Store(now.UnixNano())
	d.metrics.ConfigLoaded(now, len(rs.Rules))
}

// loadedAt is when the rules in force were loaded.
func (d *Daemon) loadedAt() time.Time { return time.Unix(0, d.loaded.Load()) }

// registerSummaryMetrics exposes what the summary counts: the certificates
// of destinations that must be encrypted that expire soon.
func (d *Daemon) registerSummaryMetrics(reg prometheus.Registerer) {
	f := promauto.With(reg)
	for _, days := range []int{14, 30} {
		f.NewGaugeFunc(prometheus.GaugeOpts{Name: "tlspolicyd_certificates_expiring",
			Help:        "MX certificates of destinations answered with a level that requires TLS that expire within the label's days.",
			ConstLabels: prometheus.Labels{"within": strconv.Itoa(days) + "d"}},
			func() float64 { return float64(d.summary().expiringWithin(days)) })
	}
}

// openStore opens the state file, moving findings stored by earlier
// releases to the current format first, and indexing the decision history
// of a file written before the index (each once; either may take a while
// on a large file, and it is logged). A findings migration that fails
// part-way leaves the findings it did not move for the next start: they
// are a cache, and the daemon starts without them. An index that cannot
// be built (a damaged history) leaves the daemon without the destinations
// known only from the history in its list; it logs why.
func openStore(s rules.Settings, now func() time.Time, log *slog.Logger) (*state.Bolt, error) {
	store, err := state.OpenBolt(s.StatePath, time.Second)
	if err != nil {
		return nil, err
	}
	if store.HasLegacyProbes() {
		log.Info("moving the findings stored by an earlier release to the current format; this happens once", "path", s.StatePath)
		start := time.Now()
		kept, dropped, err := store.MigrateProbes(legacyFindings(s.ProbeTTL, now()))
		switch {
		case errors.Is(err, state.ErrCorrupt):
			store.Close()
			return nil, err
		case err != nil:
			log.Error("moving the stored findings failed; the daemon starts without those not moved", "path", s.StatePath, "err", err)
		}
		log.Info("stored findings moved", "path", s.StatePath, "kept", kept, "dropped", dropped,
			"took", time.Since(start).Round(time.Millisecond).String(), "size_bytes", store.Size())
	}
	if !store.HistoryIndexed() {
		log.Info("indexing the decision history by destination, for a quick start; this happens once", "path", s.StatePath)
		start := time.Now()
		// Lookups do not need the history: a damaged one is logged, as
		// reading it for the list of known destinations would be, and
		// does not stop the daemon.
		if n, err := store.IndexHistory(); err != nil {
			log.Error("indexing the decision history failed; the list of known destinations lacks those known only from it",
				"path", s.StatePath, "err", err)
		} else {
			log.Info("decision history indexed", "path", s.StatePath, "destinations", n,
				"took", time.Since(start).Round(time.Millisecond).String(), "size_bytes", store.Size())
		}
	}
	return store, nil
}
