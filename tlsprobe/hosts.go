package tlsprobe

import (
	"context"
	"net/netip"
	"runtime"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Defaults for the HostsConfig fields left zero.
const (
	// DefaultHostsSize bounds the MX host results kept: a few large
	// providers serve most domains, so hosts are far fewer than domains.
	DefaultHostsSize = 100_000
	// DefaultPerAddress is how many probes may talk to one address at
	// once: a host that serves a million domains sees the daemon as one
	// polite sender, not as a scanner.
	DefaultPerAddress = 2
)

// HostsConfig sets how MX host results are shared and how politely hosts
// are probed.
type HostsConfig struct {
	TTL         time.Duration // a good host result is fresh this long
	NegativeTTL time.Duration // a host that did not answer is left alone this long
	Size        int           // host results kept (0: DefaultHostsSize)
	PerAddress  int           // probes at once per address (0: DefaultPerAddress)
	// Handshakes bounds the TLS handshakes and certificate checks running
	// at once, the CPU-heavy part of a probe (0: one less than GOMAXPROCS,
	// at least one), so that probing never takes every CPU from lookups.
	Handshakes int
	// AddrTTL is how long a host's addresses are kept (0: looked up for
	// every domain): the daemon gives dns.min_ttl, so 10,000 domains on
	// 50 hosts cost 50 address lookups a minute, not 10,000.
	AddrTTL time.Duration
	Now     func() time.Time
	Metrics *Metrics
}

// Hosts shares probe results between the domains an MX host serves: a
// result belongs to (MX host name, address, port), since the certificate
// name check is made against the host name, so a domain that names the
// same host at the same address is answered by the same result, exactly.
// 1,000 domains hosted by one provider cost one STARTTLS session with each
// of its addresses, not 1,000.
//
// A good result is reused for three quarters of the TTL, the point at
// which the findings cache refreshes a domain: a domain's refresh then
// finds its oldest host result due and probes that host again, so every
// domain sees a host's change (a new certificate) within the TTL. A host
// that did not answer is not tried again for the negative TTL (the
// back-off), whichever domain asks. Probes of one host run once at a
// time (single flight), at most PerAddress talk to one address, and at
// most Handshakes handshake at once across all hosts.
type Hosts struct {
	cfg        HostsConfig
	handshakes chan struct{}

	mu      sync.Mutex
	results *lru.Cache[hostKey, HostReport]
	flights map[hostKey]*hostFlight
	addrs   map[netip.Addr]*addrSlots
	// names holds hosts' addresses for AddrTTL, by host name; lookups
	// of one name at the same time share one (nameFlights).
	names       *lru.Cache[string, heldAddrs]
	nameFlights map[string]*nameFlight
}

// heldAddrs is a host's addresses as looked up at some time.
type heldAddrs struct {
	addrs []netip.Addr
	at    time.Time
}

// nameFlight is one address lookup in progress.
type nameFlight struct {
	done  chan struct{}
	addrs []netip.Addr
	err   error
}

// hostKey is what a host result belongs to.
type hostKey struct {
	host string
	addr netip.AddrPort
}

// hostFlight is one host probe in progress; others asking wait on done.
// kept is false when the probe was cut short by the end of its caller's
// context: the others then ask again.
type hostFlight struct {
	done chan struct{}
	res  HostReport
	kept bool
}

// addrSlots bounds the probes talking to one address; users counts the
// flights holding or waiting for a slot, so that an idle address's slots
// are dropped.
type addrSlots struct {
	sem   chan struct{}
	users int
}

// NewHosts returns an empty set of host results.
func NewHosts(cfg HostsConfig) *Hosts {
	if cfg.Size <= 0 {
		cfg.Size = DefaultHostsSize
	}
	if cfg.PerAddress <= 0 {
		cfg.PerAddress = DefaultPerAddress
	}
	if cfg.Handshakes <= 0 {
		cfg.Handshakes = max(runtime.GOMAXPROCS(0)-1, 1)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	results, _ := lru.New[hostKey, HostReport](cfg.Size) // Size > 0: no error
	names, _ := lru.New[string, heldAddrs](cfg.Size)
	h := &Hosts{
		cfg:         cfg,
		handshakes:  make(chan struct{}, cfg.Handshakes),
		results:     results,
		flights:     make(map[hostKey]*hostFlight),
		addrs:       make(map[netip.Addr]*addrSlots),
		names:       names,
		nameFlights: make(map[string]*nameFlight),
	}
	cfg.Metrics.countHosts(h.Len)
	return h
}

// Len is the number of host results held.
func (h *Hosts) Len() int { return h.results.Len() }

// fresh reports whether a held result may answer at now.
func (h *Hosts) fresh(r HostReport, now time.Time) bool {
	ttl := h.cfg.TTL * 3 / 4
	if !r.Cause.Answered() {
		ttl = h.cfg.NegativeTTL
	}
	return now.Before(r.ProbedAt.Add(ttl))
}

// result returns host's result at addr: a fresh one held, or one that
// probe gets now, once for everybody asking at the same time. shared
// reports that the caller made no connection: the result was held, or
// another caller's probe got it.
func (h *Hosts) result(ctx context.Context, host string, addr netip.AddrPort, probe func(context.Context) HostReport) (r HostReport, shared bool) {
	k := hostKey{host, addr}
	for {
		h.mu.Lock()
		if r, ok := h.results.Get(k); ok && h.fresh(r, h.cfg.Now()) {
			h.mu.Unlock()
			h.cfg.Metrics.hostResult(true)
			return r, true
		}
		f := h.flights[k]
		if f == nil {
			f = &hostFlight{done: make(chan struct{})}
			h.flights[k] = f
			h.mu.Unlock()
			h.fly(ctx, k, f, probe)
			h.cfg.Metrics.hostResult(false)
			return f.res, false
		}
		h.mu.Unlock()
		select {
		case <-f.done:
			if f.kept {
				h.cfg.Metrics.hostResult(true)
				return f.res, true
			}
			// The probe ended with its caller: ask again.
		case <-ctx.Done():
			return HostReport{Host: host, Addr: addr, ProbedAt: h.cfg.Now(), Cause: netCause(ctx.Err()),
				Detail: "gave up waiting for another probe of this host: " + ctx.Err().Error()}, false
		}
	}
}

// fly runs the probe of flight f in the caller's goroutine, politely
// (see addrSlot), keeps its result and wakes the others waiting. A probe
// cut short by its caller's end is not kept: it says nothing of the host.
func (h *Hosts) fly(ctx context.Context, k hostKey, f *hostFlight, probe func(context.Context) HostReport) {
	release, err := h.addrSlot(ctx, k.addr.Addr())
	if err != nil {
		f.res = HostReport{Host: k.host, Addr: k.addr, ProbedAt: h.cfg.Now(), Cause: netCause(err), Detail: "waiting for a free connection to " + k.addr.Addr().String() + ": " + err.Error()}
	} else {
		f.res = probe(ctx)
		release()
		h.cfg.Metrics.hostProbed(f.res)
	}
	h.mu.Lock()
	if f.kept = err == nil && ctx.Err() == nil; f.kept {
		h.results.Add(k, f.res)
	}
	delete(h.flights, k)
	h.mu.Unlock()
	close(f.done)
}

// addrSlot waits for one of addr's PerAddress slots; release gives it
// back.
func (h *Hosts) addrSlot(ctx context.Context, addr netip.Addr) (release func(), err error) {
	h.mu.Lock()
	s := h.addrs[addr]
	if s == nil {
		s = &addrSlots{sem: make(chan struct{}, h.cfg.PerAddress)}
		h.addrs[addr] = s
	}
	s.users++
	h.mu.Unlock()
	done := func() {
		h.mu.Lock()
		if s.users--; s.users == 0 {
			delete(h.addrs, addr)
		}
		h.mu.Unlock()
	}
	select {
	case s.sem <- struct{}{}:
		return func() { <-s.sem; done() }, nil
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	}
}

// lookupAddrs returns host's addresses: those looked up less than AddrTTL
// ago, or what lookup finds now, once for everybody asking at the same
// time. A failed lookup is not kept. A nil *Hosts keeps nothing.
func (h *Hosts) lookupAddrs(ctx context.Context, host string, lookup func(context.Context) ([]netip.Addr, error)) ([]netip.Addr, error) {
	if h == nil || h.cfg.AddrTTL <= 0 {
		return lookup(ctx)
	}
	h.mu.Lock()
	if a, ok := h.names.Get(host); ok && h.cfg.Now().Before(a.at.Add(h.cfg.AddrTTL)) {
		h.mu.Unlock()
		return a.addrs, nil
	}
	f := h.nameFlights[host]
	if f == nil {
		f = &nameFlight{done: make(chan struct{})}
		h.nameFlights[host] = f
		h.mu.Unlock()
		at := h.cfg.Now()
		f.addrs, f.err = lookup(ctx)
		h.mu.Lock()
		if f.err == nil {
			h.names.Add(host, heldAddrs{addrs: f.addrs, at: at})
		}
		delete(h.nameFlights, host)
		h.mu.Unlock()
		close(f.done)
		return f.addrs, f.err
	}
	h.mu.Unlock()
	select {
	case <-f.done:
		return f.addrs, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// handshake waits for a handshake slot; release gives it back. A nil
// *Hosts bounds nothing.
func (h *Hosts) handshake(ctx context.Context) (release func(), err error) {
	if h == nil {
		return func() {}, nil
	}
	select {
	case h.handshakes <- struct{}{}:
		return func() { <-h.handshakes }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
