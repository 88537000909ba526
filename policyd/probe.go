package policyd

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/roots"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// ProbeDeps are the parts of probing that tests replace: the resolver, the
// dialer and the clock. Zero fields mean the real thing, configured from
// the settings.
type ProbeDeps struct {
	Resolver tlsprobe.Resolver
	Dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	Now      func() time.Time
	Metrics  *tlsprobe.Metrics
	// Registerer takes the DANE and MTA-STS collectors (nil: none).
	Registerer prometheus.Registerer
}

// NewProber builds the prober the settings describe.
func NewProber(s rules.Settings, deps ProbeDeps) (*tlsprobe.Prober, error) {
	res := deps.Resolver
	if res == nil {
		c, err := dnsclient.New(s.DNSServers, s.DNSTimeout)
		if err != nil {
			return nil, err
		}
		res = c
	}
	anchors, err := roots.Load(s.ProbeCAFile)
	if err != nil {
		return nil, fmt.Errorf("probe.ca_file: %w", err)
	}
	return &tlsprobe.Prober{
		Resolver:     res,
		Dial:         deps.Dial,
		Now:          deps.Now,
		Roots:        anchors,
		Helo:         s.ProbeHelo,
		Port:         s.ProbePort,
		MinVersion:   s.MinTLSVersion,
		Timeout:      s.ProbeTimeout,
		StepTimeout:  min(s.ProbeTimeout, tlsprobe.DefaultStepTimeout),
		AllowPrivate: s.AllowPrivate,
		Metrics:      deps.Metrics,
	}, nil
}

// NewGatherer builds what gathers Findings as the settings describe: the
// probe of p and, when enabled, DANE and MTA-STS.
func NewGatherer(s rules.Settings, p *tlsprobe.Prober, deps ProbeDeps) (*Gatherer, error) {
	g := &Gatherer{probe: p, timeout: s.ProbeTimeout}
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
		res, ok := p.Resolver.(mtasts.Resolver)
		if !ok {
			c, err := dnsclient.New(s.DNSServers, s.DNSTimeout)
			if err != nil {
				return nil, err
			}
			res = c
		}
		anchors, err := roots.Load(s.MTASTSCAFile)
		if err != nil {
			return nil, fmt.Errorf("mtasts.ca_file: %w", err)
		}
		f := &mtasts.Fetcher{Resolver: res, Roots: anchors, AllowPrivate: s.AllowPrivate, Dial: deps.Dial,
			Timeout: s.ProbeTimeout, Now: deps.Now}
		g.sts = mtasts.NewCache(f, 0, deps.Now, mtasts.NewMetrics(deps.Registerer))
	}
	return g, nil
}

// NewProbeCache builds the cache of Findings the settings describe, filled
// by g. onResult (may be nil) sees every value the cache stores.
func NewProbeCache(s rules.Settings, g *Gatherer, deps ProbeDeps, onResult func(string, Findings)) *tlsprobe.Cache[Findings] {
	return tlsprobe.NewCache(g.Gather, tlsprobe.CacheConfig{
		TTL:         s.ProbeTTL,
		NegativeTTL: s.ProbeNegTTL,
		Now:         deps.Now,
		Metrics:     deps.Metrics,
	}, onResult)
}
