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
// enabled. The three run side by side within the probe timeout.
type Gatherer struct {
	probe   *tlsprobe.Prober
	dane    *dane.Checker // nil: DANE off
	sts     *mtasts.Cache // nil: MTA-STS off
	timeout time.Duration
}

// Gather collects the Findings of one target.
func (g *Gatherer) Gather(ctx context.Context, t tlsprobe.Target) Findings {
	var f Findings
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	if g.dane != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.DANE, f.DANEDetail = g.checkDANE(ctx, t)
		}()
	}
	// MTA-STS applies to recipient domains only (RFC 8461 section 3.4),
	// not to a "[host]" next hop or a host with its own port.
	if g.sts != nil && !t.Direct && t.Port == 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := g.sts.Lookup(ctx, t.Name)
			f.STSNote = r.Outcome.String()
			if r.OK {
				p := r.Policy
				f.STS = &p
			}
		}()
	}
	f.Probe = g.probe.Probe(ctx, t)
	wg.Wait()
	return f
}

func (g *Gatherer) checkDANE(ctx context.Context, t tlsprobe.Target) (dane.Verdict, string) {
	if t.Direct {
		port := t.Port
		if port == 0 {
			port = 25
		}
		h := g.dane.CheckHost(ctx, t.Name, port)
		return h.Status.Verdict(), h.Detail
	}
	if t.Port != 0 && t.Port != 25 {
		return dane.NoDANE, "DANE is checked for port 25 deliveries only"
	}
	r := g.dane.Check(ctx, t.Name)
	return r.Verdict, r.Detail
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
	g := &Gatherer{timeout: s.ProbeTimeout, probe: &tlsprobe.Prober{
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
	}}
	if s.DANEEnabled {
		g.dane = &dane.Checker{
			Servers: s.DNSServers,
			Timeout: s.DNSTimeout,
			Trusted: dnsclient.AllLoopback(s.DNSServers),
			Now:     deps.Now,
			Metrics: dane.NewMetrics(deps.Registerer),
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
// filled by g. onResult (may be nil) sees every value the cache stores.
func NewFindingsCache(s rules.Settings, g *Gatherer, deps ProbeDeps, onResult func(string, Findings)) *tlsprobe.Cache[Findings] {
	return tlsprobe.NewCache(g.Gather, tlsprobe.CacheConfig{
		TTL:         s.ProbeTTL,
		NegativeTTL: s.ProbeNegTTL,
		Now:         deps.Now,
		Metrics:     deps.Metrics,
	}, onResult)
}
