package policyd

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"time"

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
}

// NewProber builds the prober the settings describe.
func NewProber(s Settings, deps ProbeDeps) (*tlsprobe.Prober, error) {
	res := deps.Resolver
	if res == nil {
		c, err := tlsprobe.NewDNSClient(s.DNSServers, s.DNSTimeout)
		if err != nil {
			return nil, err
		}
		res = c
	}
	roots, err := trustAnchors(s.ProbeCAFile)
	if err != nil {
		return nil, err
	}
	minVersion, err := tlsprobe.ParseVersion(s.MinimumTLS)
	if err != nil {
		return nil, err
	}
	return &tlsprobe.Prober{
		Resolver:     res,
		Dial:         deps.Dial,
		Now:          deps.Now,
		Roots:        roots,
		Helo:         s.ProbeHelo,
		Port:         s.ProbePort,
		MinVersion:   minVersion,
		Timeout:      s.ProbeTimeout,
		StepTimeout:  min(s.ProbeTimeout, tlsprobe.DefaultStepTimeout),
		AllowPrivate: s.AllowPrivate,
		Metrics:      deps.Metrics,
	}, nil
}

// NewProbeCache wraps a prober in the cache the settings describe;
// onResult (may be nil) sees every result the cache stores.
func NewProbeCache(s Settings, p *tlsprobe.Prober, deps ProbeDeps, onResult func(string, tlsprobe.Result)) *tlsprobe.Cache[tlsprobe.Result] {
	return tlsprobe.NewCache(p.Probe, tlsprobe.CacheConfig{
		TTL:         s.ProbeTTL,
		NegativeTTL: s.ProbeNegTTL,
		Now:         deps.Now,
		Metrics:     deps.Metrics,
	}, onResult)
}

// trustAnchors is the system roots plus the PEM certificates in caFile.
func trustAnchors(caFile string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if caFile == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("probe.ca_file: %w", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("probe.ca_file: %s holds no PEM certificate", caFile)
	}
	return pool, nil
}
