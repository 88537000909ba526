package tlsprobe

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
)

// Defaults for the Prober fields left zero.
const (
	DefaultPort        = 25
	DefaultTimeout     = 30 * time.Second
	DefaultStepTimeout = 10 * time.Second
	// DefaultMaxHosts bounds the MX hosts probed per domain (lowest
	// preference first): a hostile zone may list thousands.
	DefaultMaxHosts = 8
	// DefaultMaxAddrs bounds the addresses probed per MX host.
	DefaultMaxAddrs = 2
)

// Prober probes destinations' mail servers for STARTTLS and TLS quality.
// Everything it touches is injected: the resolver, the dialer, the clock
// and the trust anchors, so tests run against in-process fakes.
type Prober struct {
	Resolver Resolver
	// Dial opens TCP connections (nil: a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock, used for durations and certificate validity.
	Now   func() time.Time
	Roots *x509.CertPool // trust anchors; nil means the system roots
	Helo  string         // EHLO name (empty: the host name)
	Port  int            // SMTP port (0: 25)
	// MinVersion is the least TLS version that counts as good enough.
	MinVersion   uint16
	Timeout      time.Duration // whole probe of one target
	StepTimeout  time.Duration // connect, banner, EHLO, STARTTLS, handshake: each
	AllowPrivate bool          // allow loopback and private addresses (probe.allow_private; tests)
	MaxHosts     int
	MaxAddrs     int
	Metrics      *Metrics // nil: no metrics
	// Hosts, if set, shares host results between the domains a host
	// serves and bounds how hard hosts and CPUs are worked (see Hosts);
	// nil probes every host of every target afresh (`tlspolicyd probe`).
	Hosts *Hosts
}

func (p *Prober) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Prober) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if p.Dial != nil {
		return p.Dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func (p *Prober) step() time.Duration    { return cmp.Or(p.StepTimeout, DefaultStepTimeout) }
func (p *Prober) timeout() time.Duration { return cmp.Or(p.Timeout, DefaultTimeout) }

func (p *Prober) helo() string {
	if p.Helo != "" {
		return p.Helo
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

func (p *Prober) minVersion() uint16 { return cmp.Or(p.MinVersion, tls.VersionTLS12) }

func orDefault(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

// Probe resolves the target's mail servers and probes each, within the
// prober's Timeout. It never returns an error: every failure is a Cause in
// the Report, so that callers cache and report failures like successes.
func (p *Prober) Probe(ctx context.Context, t Target) Report {
	start := p.now()
	ctx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	p.Metrics.probeStarted()
	r := p.probe(ctx, t)
	// The evidence is as old as its oldest host result: the target is
	// due again when that one is.
	r.Target, r.ProbedAt, r.Duration = t, start, p.now().Sub(start)
	shared := len(r.Hosts) > 0
	for _, h := range r.Hosts {
		if !h.ProbedAt.IsZero() && h.ProbedAt.Before(r.ProbedAt) {
			r.ProbedAt = h.ProbedAt
		}
		shared = shared && h.shared
	}
	if shared {
		p.Metrics.probeShared()
	}
	p.Metrics.probeDone(r)
	return r
}

func (p *Prober) probe(ctx context.Context, t Target) Report {
	port := orDefault(t.Port, orDefault(p.Port, DefaultPort))
	mxs := []dnsclient.MX{{Host: t.Name}}
	if !t.Direct {
		found, err := p.Resolver.LookupMX(ctx, t.Name)
		switch {
		case errors.Is(err, dnsclient.ErrNXDomain):
			return Report{Cause: CauseNXDomain, Detail: t.Name + " does not exist (NXDOMAIN)"}
		case err != nil:
			return Report{Cause: CauseDNS, Detail: "MX lookup: " + err.Error()}
		case len(found) > 0:
			// RFC 7505: a null MX ("." ) says the domain takes no mail; it
			// must stand alone, so "." beside real hosts is just skipped.
			mxs = mxs[:0]
			for _, mx := range found {
				if mx.Host != "." {
					mxs = append(mxs, mx)
				}
			}
			if len(mxs) == 0 {
				return Report{Cause: CauseNullMX, Detail: t.Name + " publishes a null MX: it accepts no mail"}
			}
		} // no MX: the implicit MX is the domain itself
	}
	if len(mxs) > orDefault(p.MaxHosts, DefaultMaxHosts) {
		mxs = mxs[:orDefault(p.MaxHosts, DefaultMaxHosts)]
	}

	// Probe the hosts in parallel (bounded by MaxHosts), each host's
	// addresses in turn.
	results := make([][]HostReport, len(mxs))
	var wg sync.WaitGroup
	for i, mx := range mxs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = p.probeHost(ctx, mx, port)
		}()
	}
	wg.Wait()
	var hosts []HostReport
	for _, rs := range results {
		hosts = append(hosts, rs...)
	}
	return summarize(hosts)
}

// probeHost resolves one MX host and probes up to MaxAddrs of its
// addresses, one IPv4 and one IPv6 first.
func (p *Prober) probeHost(ctx context.Context, mx dnsclient.MX, port int) []HostReport {
	addrs, err := p.hostAddrs(ctx, mx.Host)
	if errors.Is(err, dnsclient.ErrNXDomain) {
		return []HostReport{{Host: mx.Host, Preference: mx.Pref, Cause: CauseNoAddress, Detail: mx.Host + " does not exist"}}
	}
	if err != nil {
		return []HostReport{{Host: mx.Host, Preference: mx.Pref, Cause: CauseDNS, Detail: err.Error()}}
	}
	if len(addrs) == 0 {
		return []HostReport{{Host: mx.Host, Preference: mx.Pref, Cause: CauseNoAddress, Detail: mx.Host + " has no address"}}
	}
	addrs = pickAddrs(addrs, orDefault(p.MaxAddrs, DefaultMaxAddrs))
	out := make([]HostReport, 0, len(addrs))
	for _, a := range addrs {
		r := p.hostResult(ctx, mx.Host, netip.AddrPortFrom(a, uint16(port)))
		r.Preference = mx.Pref // the domain's, not the host's
		out = append(out, r)
	}
	return out
}

// hostResult is host's result at addr: shared through Hosts when set.
func (p *Prober) hostResult(ctx context.Context, host string, addr netip.AddrPort) HostReport {
	if p.Hosts == nil {
		return p.probeAddr(ctx, host, 0, addr)
	}
	r, shared := p.Hosts.result(ctx, host, addr, func(ctx context.Context) HostReport { return p.probeAddr(ctx, host, 0, addr) })
	r.shared = shared
	return r
}

func (p *Prober) hostAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	return p.Hosts.lookupAddrs(ctx, host, func(ctx context.Context) ([]netip.Addr, error) {
		return p.Resolver.LookupAddrs(ctx, host)
	})
}

// pickAddrs takes at most n addresses, alternating families so that a host
// reachable over both is probed over both.
func pickAddrs(addrs []netip.Addr, n int) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	out := make([]netip.Addr, 0, n)
	for i := 0; len(out) < n && (i < len(v4) || i < len(v6)); i++ {
		if i < len(v4) {
			out = append(out, v4[i])
		}
		if i < len(v6) && len(out) < n {
			out = append(out, v6[i])
		}
	}
	return out
}

// summarize makes the domain's verdict safe for whichever MX a sender
// uses: the weakest capability among the addresses that answered. With no
// answer at all, there is no evidence (CapUnknown) and the cause of the
// most preferred host explains why.
func summarize(hosts []HostReport) Report {
	r := Report{Hosts: hosts, Capability: CapUnknown}
	answered := false
	for _, h := range hosts {
		if !h.Cause.Answered() {
			continue
		}
		if !answered || h.Capability < r.Capability {
			r.Capability, r.Cause, r.Detail = h.Capability, h.Cause, h.Detail
		}
		answered = true
	}
	if !answered && len(hosts) > 0 {
		r.Cause, r.Detail = hosts[0].Cause, fmt.Sprintf("%s: %s", hosts[0].Host, hosts[0].Detail)
		allPrivate := true
		for _, h := range hosts {
			allPrivate = allPrivate && h.Cause == CausePrivateAddress
		}
		if allPrivate {
			r.Cause = CausePrivateAddress
		}
	}
	return r
}
