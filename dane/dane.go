package dane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/idna"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
)

// ErrUntrusted is the reason every check of an untrusted Checker gives
// NoDANE: without a local validating resolver, the AD bit proves nothing.
var ErrUntrusted = errors.New("resolver not trusted for DNSSEC")

// MaxHosts bounds the MX hosts checked per domain, as Postfix bounds the
// hosts it tries.
const MaxHosts = 8

// Defaults for the Checker's zero fields.
const (
	DefaultTimeout = dnsclient.DefaultTimeout
	DefaultPort    = 25
)

// Checker finds out whether destinations are DANE-protected. Its fields
// are read, never written, so one Checker serves concurrent checks.
type Checker struct {
	// Servers are the resolvers to ask, "ip:port", in order; the next is
	// tried when one fails. They must validate DNSSEC.
	Servers []string
	// Timeout bounds each query to each server; 0 means DefaultTimeout.
	Timeout time.Duration
	// Trusted says that the AD bit from Servers can be believed: the daemon
	// sets it when DANE is enabled and every server is a loopback address
	// (a local validating resolver, as Postfix requires). It is honoured
	// only if dnsclient.AllLoopback(Servers) holds. When false, checks make
	// no query and give NoDANE with ErrUntrusted.
	Trusted bool
	// Port is the SMTP port whose TLSA records Check looks up,
	// "_PORT._tcp.HOST"; 0 means DefaultPort.
	Port int
	// Now is the clock for DomainTLSA.CheckedAt; nil means time.Now.
	Now func() time.Time
	// Metrics, if not nil, counts checks.
	Metrics *Metrics
	// Hosts, if not nil, shares each MX host's TLSA result between the
	// domains it serves, for the result's TTL.
	Hosts *HostCache
}

func (c *Checker) trusted() bool { return c.Trusted && dnsclient.AllLoopback(c.Servers) }

// client is what the Checker's lookups go through: DNSSEC on, so that each
// answer says whether the resolver validated it.
func (c *Checker) client() *dnsclient.Client {
	return &dnsclient.Client{Servers: c.Servers, Timeout: c.Timeout, DNSSEC: true}
}

func (c *Checker) port() int { return cmp.Or(c.Port, DefaultPort) }

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Check decides whether mail to domain must be DANE-protected (RFC 7672
// section 2.2). First the MX lookup:
//
//   - it fails: TempFail (section 2.1.1: defer, do not drop DANE);
//   - the MX RRset is not validated: NoDANE, insecure (section 2.2.1: DANE
//     needs a secure MX RRset; the hosts are not looked at);
//   - the domain does not exist, or has a null MX (RFC 7505): NoDANE;
//   - no MX records: the domain is its own host (RFC 5321 section 5.1),
//     checked as a non-MX destination (section 2.2.2).
//
// Then each MX host, by preference, at most MaxHosts, is checked as
// CheckHost does, and the hosts decide, in this order:
//
//   - a lookup failed: TempFail (section 2.1.1: never "no DANE");
//   - every host that has addresses has usable TLSA records: DANEOnly;
//   - some do: MixedDANE (DANE per host, section 2.2); also when every
//     host checked does but hosts past MaxHosts went unchecked;
//   - none do but some publish unusable ones: EncryptOnly (section 2.2:
//     TLS stays mandatory, unauthenticated);
//   - none publish any: NoDANE (Insecure if some host's records were not
//     validated).
//
// Check never fails: a failure is the TempFail verdict, with Err set. Each
// query has the Checker's Timeout; ctx bounds the whole check.
func (c *Checker) Check(ctx context.Context, domain string) DomainTLSA {
	r := c.check(ctx, domain)
	r.CheckedAt = c.now()
	c.Metrics.lookup(label(r.Verdict, r.Insecure))
	return r
}

func (c *Checker) check(ctx context.Context, domain string) DomainTLSA {
	d, err := normalize(domain)
	if err != nil {
		return DomainTLSA{Domain: domain, Verdict: NoDANE, Detail: fmt.Sprintf("not a domain name: %v", err)}
	}
	r := DomainTLSA{Domain: d}
	if !c.trusted() {
		r.Insecure, r.Err, r.Detail = true, ErrUntrusted, ErrUntrusted.Error()
		return r
	}

	mx, err := c.client().Lookup(ctx, d, dns.TypeMX)
	if err != nil {
		r.Verdict, r.Err = TempFail, err
		r.Detail = fmt.Sprintf("MX lookup failed: %v (RFC 7672 section 2.1.1: defer, do not drop DANE)", err)
		return r
	}
	r.MXSecure = mx.Secure
	r.TTL = mx.TTL
	switch {
	case !mx.Secure:
		r.Insecure = true
		r.Detail = "MX records not DNSSEC-validated: DANE does not apply (RFC 7672 section 2.2.1)"
		return r
	case mx.NXDomain:
		r.Detail = "the domain does not exist (validated denial)"
		return r
	}

	hosts, null := mxHosts(mx.Records)
	if null {
		r.Detail = "null MX: the domain accepts no mail (RFC 7505)"
		return r
	}
	prefix := ""
	if len(hosts) == 0 {
		hosts = []string{d}
		prefix = "no MX records, the domain is its own mail host (RFC 5321 section 5.1, RFC 7672 section 2.2.2); "
	}
	unchecked := 0
	if len(hosts) > MaxHosts {
		unchecked = len(hosts) - MaxHosts
		hosts = hosts[:MaxHosts]
	}

	port := c.port()
	r.Hosts = make([]HostTLSA, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { r.Hosts[i] = c.hostStatus(ctx, h, port) })
	}
	wg.Wait()
	for _, h := range r.Hosts {
		r.TTL = minTTL(r.TTL, h.TTL)
	}

	r.Verdict, r.Insecure, r.Detail, r.Err = decide(r.Hosts, unchecked)
	r.Detail = prefix + r.Detail
	if r.Verdict == TempFail {
		r.TTL = 0 // a failure is retried as the caller sees fit
	}
	return r
}

// mxHosts returns the MX hosts of rrs, lower case without the trailing dot,
// by preference and then name, each once. null reports a null MX (RFC
// 7505): "." as the only host. A "." among other hosts is ignored.
func mxHosts(rrs []dns.RR) (hosts []string, null bool) {
	type mx struct {
		host string
		pref uint16
	}
	var mxs []mx
	sawNull := false
	for _, rr := range rrs {
		m, ok := rr.(*dns.MX)
		if !ok {
			continue
		}
		h := strings.ToLower(strings.TrimSuffix(m.Mx, "."))
		if h == "" {
			sawNull = true
			continue
		}
		mxs = append(mxs, mx{h, m.Preference})
	}
	if len(mxs) == 0 {
		return nil, sawNull
	}
	slices.SortFunc(mxs, func(a, b mx) int {
		return cmp.Or(cmp.Compare(a.pref, b.pref), strings.Compare(a.host, b.host))
	})
	seen := make(map[string]bool, len(mxs))
	for _, m := range mxs {
		if !seen[m.host] {
			seen[m.host] = true
			hosts = append(hosts, m.host)
		}
	}
	return hosts, false
}

// CheckHost checks one host, for a next hop without MX lookup such as
// Postfix's "[mx.example.com]" or "[mx.example.com]:587" (RFC 7672 section
// 2.2.2); Check does the same for each MX host. port 0 means the Checker's
// Port. HostStatus.Verdict gives the verdict for such a next hop.
//
//   - The A and AAAA lookups come first: a failure gives Failure, no
//     records NoAddress, and records without the AD bit Insecure, with no
//     TLSA lookup (RFC 7672 sections 2.2.1, 2.2.2: only a host with secure
//     address records gets DANE).
//   - When the address lookup followed a validated CNAME chain, TLSA
//     records are looked for at the chain's target first, then at the
//     host name itself (RFC 7672 section 2.2.3, RFC 7671 section 7).
//   - The TLSA lookup "_PORT._tcp.BASE" (itself following any CNAME):
//     a failure gives Failure; a validated RRset Usable or Unusable; a
//     validated denial NoTLSA; an answer without the AD bit Insecure.
func (c *Checker) CheckHost(ctx context.Context, host string, port int) HostTLSA {
	if port <= 0 {
		port = c.port()
	}
	h := c.hostStatus(ctx, host, port)
	c.Metrics.lookup(label(h.Status.Verdict(), h.Status == Insecure))
	return h
}

// hostStatus checks host as given by a caller or an MX record: a name that
// cannot be looked up is a host no client can reach (NoAddress), not a
// lookup failure.
func (c *Checker) hostStatus(ctx context.Context, host string, port int) HostTLSA {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if net.ParseIP(host) != nil {
		return HostTLSA{Host: host, Status: Insecure, Detail: "an IP address has no TLSA base domain: DANE does not apply (RFC 7672 section 2.2.2)"}
	}
	n, err := normalize(host)
	if err != nil {
		return HostTLSA{Host: host, Status: NoAddress, Detail: fmt.Sprintf("not a host name: %v", err)}
	}
	if !c.trusted() {
		return HostTLSA{Host: n, Status: Insecure, Detail: ErrUntrusted.Error()}
	}
	if h, ok := c.Hosts.get(n, port); ok {
		return h
	}
	h := c.checkHost(ctx, n, port)
	c.Hosts.put(n, port, h)
	return h
}

// checkHost does CheckHost's lookups for host, a normalized name.
func (c *Checker) checkHost(ctx context.Context, host string, port int) HostTLSA {
	h := HostTLSA{Host: host}
	fail := func(what string, err error) HostTLSA {
		h.Status, h.Err = Failure, err
		h.Detail = fmt.Sprintf("%s lookup failed: %v", what, err)
		return h
	}

	// Address records (RFC 7672 section 2.2.2).
	dc := c.client()
	var addrs [2]dnsclient.Resolution
	for i, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		a, err := dc.Lookup(ctx, host, qtype)
		if err != nil {
			return fail("address", err)
		}
		addrs[i] = a
		h.TTL = minTTL(h.TTL, a.TTL)
	}
	if len(addrs[0].Records)+len(addrs[1].Records) == 0 {
		h.Status = NoAddress
		h.Detail = "no A or AAAA records"
		if addrs[0].NXDomain {
			h.Detail = "the host name does not exist"
		}
		return h
	}
	expanded := ""
	for _, a := range addrs {
		if len(a.Records) == 0 {
			continue
		}
		if !a.Secure {
			h.Status = Insecure
			h.Detail = "address records not DNSSEC-validated: DANE does not apply to this host (RFC 7672 section 2.2.2)"
			return h
		}
		if expanded == "" {
			expanded = strings.TrimSuffix(a.Name, ".")
		}
	}

	// TLSA base domains, CNAME target first (RFC 7672 section 2.2.3).
	bases := []string{host}
	if expanded != "" && expanded != host {
		bases = []string{expanded, host}
	}
	for i, base := range bases {
		qname := fmt.Sprintf("_%d._tcp.%s", port, base)
		t, err := dc.Lookup(ctx, qname, dns.TypeTLSA)
		if err != nil {
			return fail("TLSA", err)
		}
		h.TTL = minTTL(h.TTL, t.TTL)
		var recs []Record
		for _, rr := range t.Records {
			if tlsa, ok := rr.(*dns.TLSA); ok {
				recs = append(recs, recordFromRR(tlsa))
			}
		}
		last := i == len(bases)-1
		switch {
		case len(recs) > 0 && t.Secure:
			var usable int
			var firstErr error
			h.Base = base
			h.Records, usable, firstErr = presentation(recs)
			h.Detail = qname + ": " + describeUsable(usable, len(recs), firstErr)
			if usable > 0 {
				h.Status = Usable
			} else {
				h.Status = Unusable
				h.Detail += ": TLS mandatory, unauthenticated (RFC 7672 section 2.2)"
			}
			return h
		case !last:
			// Nothing validated at the CNAME target: try the host name
			// (RFC 7672 section 2.2.3).
			continue
		case !t.Secure:
			h.Status = Insecure
			h.Detail = qname + ": TLSA answer not DNSSEC-validated: DANE does not apply to this host (RFC 7672 section 2.2.3)"
		default:
			h.Status = NoTLSA
			h.Detail = qname + ": no TLSA records (validated denial)"
		}
	}
	return h
}

// minTTL is the smaller of two TTLs where 0 means unknown: an unknown one
// does not shorten a known one.
func minTTL(a, b time.Duration) time.Duration {
	if a == 0 || b == 0 {
		return max(a, b)
	}
	return min(a, b)
}

// normalize returns name as lookups use it: lower-case A-labels, without
// the trailing dot. It rejects what is not a domain name.
func normalize(name string) (string, error) {
	name = strings.TrimSuffix(strings.TrimSpace(name), ".")
	if name == "" {
		return "", errors.New("empty")
	}
	for i := range len(name) {
		if name[i] >= 0x80 {
			a, err := idna.Lookup.ToASCII(name)
			if err != nil {
				return "", err
			}
			name = a
			break
		}
	}
	name = strings.ToLower(name)
	if _, ok := dns.IsDomainName(name); !ok || strings.ContainsAny(name, " \\") {
		return "", fmt.Errorf("%q is not a valid domain name", name)
	}
	if net.ParseIP(name) != nil {
		return "", fmt.Errorf("%q is an IP address", name)
	}
	return name, nil
}
