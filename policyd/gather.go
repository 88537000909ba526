package policyd

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/internal/monoclock"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/roots"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// ProbeDeps are the parts of gathering that tests replace: the resolver,
// the dialer and the clock. Zero fields mean the real thing, configured
// from the settings.
type ProbeDeps struct {
	Resolver tlsprobe.Resolver
	Dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	Now      func() time.Time
	Metrics  *tlsprobe.Metrics
	// Registerer takes the DANE and MTA-STS collectors (nil: none).
	Registerer prometheus.Registerer
}

// Gatherer collects Findings: the probe always, DANE and MTA-STS when
// enabled. The three run side by side within the probe timeout. The probe
// is redone when three quarters of probe.ttl have passed; what a
// destination publishes is read again when its records' TTL runs out,
// bounded by dns.min_ttl and probe.ttl (a refresh with a fresh probe reads
// only those).
type Gatherer struct {
	probe   *tlsprobe.Prober
	dane    *dane.Checker // nil: DANE off
	sts     *mtasts.Cache // nil: MTA-STS off
	timeout time.Duration
	now     func() time.Time
	// ttl is probe.ttl; minTTL and negTTL (probe.negative_ttl, for a
	// failed lookup) bound how soon published records are read again.
	ttl, minTTL, negTTL time.Duration
}

// Gather collects the Findings of one target. prev is what is cached for
// it (the zero Findings if nothing): a probe still fresh is kept, and a
// DANE verdict is kept when checking it again fails (RFC 7672 section
// 2.1.1: a lookup failure defers, it never drops DANE).
func (g *Gatherer) Gather(ctx context.Context, t tlsprobe.Target, prev Findings) Findings {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	var f Findings
	var daneTTL, stsTTL time.Duration
	var wg sync.WaitGroup
	if g.dane != nil {
		wg.Go(func() { f.DANE, f.DANEDetail, daneTTL = g.checkDANE(ctx, t, prev) })
	}
	// MTA-STS applies to recipient domains only (RFC 8461 section 3.4),
	// not to a "[host]" next hop or a host with its own port.
	if g.sts != nil && !t.Direct && t.Port == 0 {
		wg.Go(func() {
			r := g.sts.Lookup(ctx, t.Name)
			f.STSNote, stsTTL = r.Outcome.String(), g.recordTTL(r.TTL, r.Err != nil)
			if r.OK {
				p := r.Policy
				f.setSTS(&p)
			}
		})
	}
	if g.probeDue(prev) {
		f.Probe = g.probe.Probe(ctx, t)
	} else {
		f.Probe, f.probeKept = prev.Probe, true
	}
	wg.Wait()
	if next := minTTL(daneTTL, stsTTL); next > 0 {
		f.RecheckAt = g.clock().Add(next)
	}
	return f
}

// probeDue reports whether prev's probe must be done again: there is none,
// it failed, or three quarters of probe.ttl have passed.
func (g *Gatherer) probeDue(prev Findings) bool {
	at := prev.Probe.ProbedAt
	return at.IsZero() || prev.Probe.Failed() || !g.clock().Before(at.Add(g.ttl*3/4))
}

// recordTTL is how long a published record's answer is kept: its DNS TTL
// within [dns.min_ttl, probe.ttl]; probe.ttl when DNS gave none (or no
// query was made); probe.negative_ttl, within the same bounds, after a
// failure.
func (g *Gatherer) recordTTL(ttl time.Duration, failed bool) time.Duration {
	switch {
	case failed:
		ttl = g.negTTL
	case ttl <= 0:
		ttl = g.ttl
	}
	return max(min(ttl, g.ttl), min(g.minTTL, g.ttl))
}

func (g *Gatherer) clock() time.Time {
	if g.now != nil {
		return g.now()
	}
	return time.Now()
}

// minTTL is the smaller of two durations where 0 means none.
func minTTL(a, b time.Duration) time.Duration {
	if a == 0 || b == 0 {
		return max(a, b)
	}
	return min(a, b)
}

// checkDANE checks t's TLSA records and says how long the verdict lasts.
// A check that fails keeps prev's verdict, if it had one that protects
// (Postfix, told dane-only, looks the records up itself and defers on the
// same failure), and is retried after probe.negative_ttl.
func (g *Gatherer) checkDANE(ctx context.Context, t tlsprobe.Target, prev Findings) (dane.Verdict, string, time.Duration) {
	v, detail, ttl := g.daneVerdict(ctx, t)
	if v == dane.TempFail && prev.DANE != dane.NoDANE && prev.DANE != dane.TempFail {
		return prev.DANE, prev.DANEDetail + "; checking again failed (" + detail + "): verdict kept", g.recordTTL(0, true)
	}
	return v, detail, g.recordTTL(ttl, v == dane.TempFail)
}

func (g *Gatherer) daneVerdict(ctx context.Context, t tlsprobe.Target) (dane.Verdict, string, time.Duration) {
	if t.Direct {
		h := g.dane.CheckHost(ctx, t.Name, t.Port) // port 0: probe.port
		return h.Status.Verdict(), h.Detail, h.TTL
	}
	if t.Port != 0 && t.Port != g.dane.Port {
		return dane.NoDANE, fmt.Sprintf("DANE is checked for deliveries to MX hosts on probe.port (%d) only", g.dane.Port), 0
	}
	r := g.dane.Check(ctx, t.Name)
	return r.Verdict, r.Detail, r.TTL
}

// NewGatherer builds what gathers Findings as the settings describe: the
// probe of the MX hosts always and, when enabled, DANE and MTA-STS. The
// prober and the MTA-STS fetcher share one resolver.
func NewGatherer(s rules.Settings, deps ProbeDeps) (*Gatherer, error) {
	res, stsRes, err := resolvers(s, deps)
	if err != nil {
		return nil, err
	}
	probeRoots, err := trustAnchors("probe.ca_file", s.ProbeCAFile)
	if err != nil {
		return nil, err
	}
	g := &Gatherer{timeout: s.ProbeTimeout, now: deps.Now, ttl: s.ProbeTTL, minTTL: s.DNSMinTTL, negTTL: s.ProbeNegTTL, probe: &tlsprobe.Prober{
		Resolver:     res,
		Dial:         deps.Dial,
		Now:          deps.Now,
		Roots:        probeRoots,
		Helo:         s.ProbeHelo,
		Port:         s.ProbePort,
		MinVersion:   s.MinTLSVersion,
		Timeout:      s.ProbeTimeout,
		StepTimeout:  min(s.ProbeTimeout, tlsprobe.DefaultStepTimeout),
		AllowPrivate: s.AllowPrivate,
		Metrics:      deps.Metrics,
		Hosts: tlsprobe.NewHosts(tlsprobe.HostsConfig{TTL: s.ProbeTTL, NegativeTTL: s.ProbeNegTTL,
			PerAddress: s.ProbePerAddress, AddrTTL: s.DNSMinTTL, Now: deps.Now, Metrics: deps.Metrics}),
	}}
	if s.DANEEnabled {
		// The TLSA records of the port mail goes to, as Postfix looks up
		// those of smtp_tcp_port: probe.port, 25 in production.
		g.dane = &dane.Checker{
			Port:    s.ProbePort,
			Servers: s.DNSServers,
			Timeout: s.DNSTimeout,
			Trusted: dnsclient.AllLoopback(s.DNSServers),
			Now:     deps.Now,
			Metrics: dane.NewMetrics(deps.Registerer),
			Hosts:   dane.NewHostCache(0, deps.Now),
		}
	}
	if s.MTASTSEnabled {
		stsRoots, err := trustAnchors("mtasts.ca_file", s.MTASTSCAFile)
		if err != nil {
			return nil, err
		}
		f := &mtasts.Fetcher{Resolver: stsRes, Roots: stsRoots, AllowPrivate: s.AllowPrivate, Dial: deps.Dial,
			Timeout: s.ProbeTimeout, Now: deps.Now}
		g.sts = mtasts.NewCache(f, 0, deps.Now, mtasts.NewMetrics(deps.Registerer))
	}
	return g, nil
}

// resolvers are the resolvers of the prober and of the MTA-STS fetcher:
// the configured DNS client, or the one a test injects (which may answer
// MX and address lookups only; the configured client then answers the
// rest).
func resolvers(s rules.Settings, deps ProbeDeps) (tlsprobe.Resolver, mtasts.Resolver, error) {
	type both interface {
		tlsprobe.Resolver
		mtasts.Resolver
	}
	if r, ok := deps.Resolver.(both); ok {
		return r, r, nil
	}
	c, err := dnsclient.New(s.DNSServers, s.DNSTimeout)
	if err != nil {
		return nil, nil, err
	}
	if deps.Resolver != nil {
		return deps.Resolver, c, nil
	}
	return c, c, nil
}

// trustAnchors loads the system roots plus caFile, naming the setting in
// the error.
func trustAnchors(key, caFile string) (*x509.CertPool, error) {
	pool, err := roots.Load(caFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return pool, nil
}

// NewFindingsCache builds the cache of Findings the settings describe,
// filled by g, on clock (nil: the system clock; give the pins' clock, so
// that a lookup reads it once for both). onResult (may be nil) sees every
// value the cache stores.
func NewFindingsCache(s rules.Settings, g *Gatherer, deps ProbeDeps, clock *monoclock.Clock, onResult func(string, Findings)) *tlsprobe.Cache[Findings] {
	return newFindingsCache(s, g.Gather, deps, clock, onResult)
}

// newFindingsCache is NewFindingsCache with the gathering function given
// (a fleet's wraps the gatherer's).
func newFindingsCache(s rules.Settings, gather tlsprobe.Gather[Findings], deps ProbeDeps, clock *monoclock.Clock, onResult func(string, Findings)) *tlsprobe.Cache[Findings] {
	return tlsprobe.NewCache(gather, tlsprobe.CacheConfig{
		TTL:         s.ProbeTTL,
		NegativeTTL: s.ProbeNegTTL,
		Clock:       clock,
		Metrics:     deps.Metrics,
	}, onResult)
}
