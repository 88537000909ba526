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
)

// Verdict is what a destination's DNSSEC-validated records allow: the
// policy source's answer, which the daemon combines with its rules. The
// zero value, NoDANE, raises nothing.
type Verdict uint8

const (
	// NoDANE: DANE does not apply to the destination: its MX records or
	// every host's address or TLSA records are not DNSSEC-validated
	// (RFC 7672 sections 2.2.1 to 2.2.3), it publishes no TLSA records
	// (validated denial), or the resolver is not trusted. The daemon keeps
	// its other sources and its floor.
	NoDANE Verdict = iota
	// DANEOnly: every MX host has a usable, validated TLSA RRset (RFC 7672
	// section 2.2): Postfix "dane-only".
	DANEOnly
	// MixedDANE: some MX hosts have usable TLSA records, others do not
	// (validated denial, insecure, no address), or hosts past MaxHosts went
	// unchecked. Postfix "dane" does DANE per host, as RFC 7672 section 2.2
	// describes: authenticated where TLSA records are usable, mandatory TLS
	// where they are unusable, opportunistic TLS elsewhere.
	MixedDANE
	// EncryptOnly: TLSA records are published (and validated) but none is
	// usable on any host, so no host can be authenticated; RFC 7672 section
	// 2.2 still has the client insist on TLS, unauthenticated ("DANE
	// broken"), never plaintext: Postfix "encrypt".
	EncryptOnly
	// TempFail: a lookup failed (SERVFAIL, which is also how a validating
	// resolver reports a bogus answer, or a timeout). RFC 7672 section
	// 2.1.1: that is not "no DANE"; the client defers. The daemon answers a
	// temporary error or its floor, and never a weaker level because of it.
	TempFail
)

var verdictNames = [...]string{
	NoDANE:      "no_dane",
	DANEOnly:    "dane_only",
	MixedDANE:   "mixed",
	EncryptOnly: "encrypt_only",
	TempFail:    "temp_fail",
}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// HostStatus is what the lookups found for one MX host. The zero value,
// Failure, claims nothing.
type HostStatus uint8

const (
	// Failure: an address or TLSA lookup failed (SERVFAIL or timeout);
	// RFC 7672 section 2.1.1 defers delivery rather than drop DANE.
	Failure HostStatus = iota
	// Insecure: the host's address records or its TLSA answer are not
	// DNSSEC-validated (no AD bit), so DANE does not apply to it (RFC 7672
	// sections 2.2.2 and 2.2.3); also an IP-address host, which has no
	// name to hold TLSA records.
	Insecure
	// NoAddress: the host has no A or AAAA records; no client can connect
	// to it, so it does not count in the domain's verdict.
	NoAddress
	// NoTLSA: a validated denial: the TLSA name does not exist, or has no
	// TLSA records, and the answer has the AD bit.
	NoTLSA
	// Unusable: a validated TLSA RRset in which no record is usable
	// (Record.Usable): TLS is still mandatory, unauthenticated (RFC 7672
	// section 2.2).
	Unusable
	// Usable: a validated TLSA RRset with at least one usable record: the
	// host must be authenticated with it (RFC 7672 sections 2.2 and 3).
	Usable
)

var statusNames = [...]string{
	Failure:   "failure",
	Insecure:  "insecure",
	NoAddress: "no_address",
	NoTLSA:    "no_tlsa",
	Unusable:  "unusable",
	Usable:    "usable",
}

func (s HostStatus) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("HostStatus(%d)", uint8(s))
}

// Verdict is the verdict for a next hop that is this one host, such as
// Postfix's "[mx.example.com]" (RFC 7672 section 2.2.2, no MX lookup):
// Usable gives DANEOnly, Unusable EncryptOnly, Failure TempFail, anything
// else NoDANE.
func (s HostStatus) Verdict() Verdict {
	switch s {
	case Usable:
		return DANEOnly
	case Unusable:
		return EncryptOnly
	case Failure:
		return TempFail
	}
	return NoDANE
}

// HostTLSA is what was found for one MX host.
type HostTLSA struct {
	// Host is the MX host name, lower case, without the trailing dot.
	Host string
	// Base is the TLSA base domain whose records were used: Host, or the
	// name Host's CNAME chain leads to (RFC 7672 section 2.2.3). Empty
	// unless Status is Usable or Unusable.
	Base   string
	Status HostStatus
	// Records are the validated TLSA records in presentation form ("3 1 1
	// 0a1b..."), usable or not; empty unless Status is Usable or Unusable.
	Records []string
	// Detail says what was found, for logs and "tlspolicyd probe".
	Detail string
	// Err is the failed lookup, a *LookupError, when Status is Failure.
	Err error
}

// Result is the outcome of checking one destination domain.
type Result struct {
	// Domain is the domain checked, lower case A-labels, no trailing dot.
	Domain  string
	Verdict Verdict
	// MXSecure reports that the MX RRset (or its validated absence) had
	// the AD bit.
	MXSecure bool
	// Insecure reports, for NoDANE, that DANE does not apply because
	// something was not DNSSEC-validated (or the resolver is not trusted),
	// rather than because the domain publishes no TLSA records.
	Insecure bool
	// Hosts are the MX hosts checked, by preference (at most MaxHosts);
	// for a domain without MX records, the domain itself (implicit MX).
	Hosts []HostTLSA
	// Detail says why, citing the rule applied.
	Detail string
	// Err is the failed lookup behind TempFail, or ErrUntrusted; else nil.
	Err error
	// CheckedAt is when the check ended, by Checker.Now.
	CheckedAt time.Time
}

// ErrUntrusted is the reason every check of an untrusted Checker gives
// NoDANE: without a local validating resolver, the AD bit proves nothing.
var ErrUntrusted = errors.New("resolver not trusted for DNSSEC")

// MaxHosts bounds the MX hosts checked per domain, as Postfix bounds the
// hosts it tries.
const MaxHosts = 8

// Defaults for the Checker's zero fields.
const (
	DefaultTimeout = 5 * time.Second
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
	// only if AllLoopback(Servers) holds. When false, checks make no query
	// and give NoDANE with ErrUntrusted.
	Trusted bool
	// Port is the SMTP port whose TLSA records Check looks up,
	// "_PORT._tcp.HOST"; 0 means DefaultPort.
	Port int
	// Now is the clock for Result.CheckedAt; nil means time.Now.
	Now func() time.Time
	// Metrics, if not nil, counts checks.
	Metrics *Metrics
}

// AllLoopback reports whether servers is not empty and every server is a
// loopback IP address with a port: the only resolvers whose AD bit a
// Checker trusts.
func AllLoopback(servers []string) bool {
	if len(servers) == 0 {
		return false
	}
	for _, s := range servers {
		host, _, err := net.SplitHostPort(s)
		if err != nil {
			return false
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

func (c *Checker) trusted() bool { return c.Trusted && AllLoopback(c.Servers) }

func (c *Checker) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

func (c *Checker) port() int {
	if c.Port > 0 {
		return c.Port
	}
	return DefaultPort
}

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
func (c *Checker) Check(ctx context.Context, domain string) Result {
	r := c.check(ctx, domain)
	r.CheckedAt = c.now()
	c.Metrics.lookup(label(r.Verdict, r.Insecure))
	return r
}

func (c *Checker) check(ctx context.Context, domain string) Result {
	d, err := normalize(domain)
	if err != nil {
		return Result{Domain: domain, Verdict: NoDANE, Detail: fmt.Sprintf("not a domain name: %v", err)}
	}
	r := Result{Domain: d}
	if !c.trusted() {
		r.Insecure, r.Err, r.Detail = true, ErrUntrusted, ErrUntrusted.Error()
		return r
	}

	mx, err := c.lookup(ctx, d, dns.TypeMX)
	if err != nil {
		r.Verdict, r.Err = TempFail, err
		r.Detail = fmt.Sprintf("MX lookup failed: %v (RFC 7672 section 2.1.1: defer, do not drop DANE)", err)
		return r
	}
	r.MXSecure = mx.secure
	switch {
	case !mx.secure:
		r.Insecure = true
		r.Detail = "MX records not DNSSEC-validated: DANE does not apply (RFC 7672 section 2.2.1)"
		return r
	case mx.nxdomain:
		r.Detail = "the domain does not exist (validated denial)"
		return r
	}

	hosts, null := mxHosts(mx.rrs)
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

	r.Verdict, r.Insecure, r.Detail, r.Err = decide(r.Hosts, unchecked)
	r.Detail = prefix + r.Detail
	return r
}

// decide turns the hosts' findings into the domain's verdict (see Check).
// unchecked counts MX hosts past MaxHosts.
func decide(hosts []HostTLSA, unchecked int) (v Verdict, insecure bool, detail string, err error) {
	var usable, unusable, notlsa, insec, noaddr int
	for _, h := range hosts {
		switch h.Status {
		case Failure:
			// RFC 7672 section 2.1.1: an indeterminate or bogus answer is
			// a reason to defer, never to treat the host as without DANE.
			return TempFail, false, fmt.Sprintf("%s: %s (RFC 7672 section 2.1.1: defer, do not drop DANE)", h.Host, h.Detail), h.Err
		case Usable:
			usable++
		case Unusable:
			unusable++
		case NoTLSA:
			notlsa++
		case Insecure:
			insec++
		case NoAddress:
			noaddr++
		}
	}
	checked := len(hosts) - noaddr
	beyond := ""
	if unchecked > 0 {
		beyond = fmt.Sprintf("; %d MX hosts past the first %d not checked", unchecked, MaxHosts)
	}
	switch {
	case checked == 0:
		return NoDANE, false, "no MX host has an address" + beyond, nil
	case usable == checked && unchecked == 0:
		return DANEOnly, false, fmt.Sprintf("all %d MX hosts have usable TLSA records (RFC 7672 section 2.2)", usable), nil
	case usable > 0:
		return MixedDANE, false, fmt.Sprintf("%d of %d MX hosts have usable TLSA records: DANE applies per host (RFC 7672 section 2.2)%s", usable, checked, beyond), nil
	case unusable > 0:
		return EncryptOnly, false, fmt.Sprintf("%d of %d MX hosts publish TLSA records but none is usable: TLS is mandatory, unauthenticated (RFC 7672 section 2.2)%s", unusable, checked, beyond), nil
	case insec > 0:
		return NoDANE, true, fmt.Sprintf("%d of %d MX hosts not DNSSEC-validated, the others publish no TLSA records: DANE does not apply (RFC 7672 sections 2.2.2, 2.2.3)%s", insec, checked, beyond), nil
	default:
		return NoDANE, false, fmt.Sprintf("no MX host publishes TLSA records (validated denial)%s", beyond), nil
	}
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
	return c.checkHost(ctx, n, port)
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
	var addrs [2]answer
	for i, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		a, err := c.lookup(ctx, host, qtype)
		if err != nil {
			return fail("address", err)
		}
		addrs[i] = a
	}
	if len(addrs[0].rrs)+len(addrs[1].rrs) == 0 {
		h.Status = NoAddress
		h.Detail = "no A or AAAA records"
		if addrs[0].nxdomain {
			h.Detail = "the host name does not exist"
		}
		return h
	}
	expanded := ""
	for _, a := range addrs {
		if len(a.rrs) == 0 {
			continue
		}
		if !a.secure {
			h.Status = Insecure
			h.Detail = "address records not DNSSEC-validated: DANE does not apply to this host (RFC 7672 section 2.2.2)"
			return h
		}
		if expanded == "" {
			expanded = strings.TrimSuffix(a.name, ".")
		}
	}

	// TLSA base domains, CNAME target first (RFC 7672 section 2.2.3).
	bases := []string{host}
	if expanded != "" && expanded != host {
		bases = []string{expanded, host}
	}
	for i, base := range bases {
		qname := fmt.Sprintf("_%d._tcp.%s", port, base)
		t, err := c.lookup(ctx, qname, dns.TypeTLSA)
		if err != nil {
			return fail("TLSA", err)
		}
		var recs []Record
		for _, rr := range t.rrs {
			if tlsa, ok := rr.(*dns.TLSA); ok {
				recs = append(recs, recordFromRR(tlsa))
			}
		}
		last := i == len(bases)-1
		switch {
		case len(recs) > 0 && t.secure:
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
		case !t.secure:
			h.Status = Insecure
			h.Detail = qname + ": TLSA answer not DNSSEC-validated: DANE does not apply to this host (RFC 7672 section 2.2.3)"
		default:
			h.Status = NoTLSA
			h.Detail = qname + ": no TLSA records (validated denial)"
		}
	}
	return h
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
