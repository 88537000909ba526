package tlsprobe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Resolver is the DNS the prober needs. Tests give it a fake DNS server's
// address; the daemon gives it the configured servers.
type Resolver interface {
	// LookupMX returns the domain's MX records sorted by preference. An
	// empty list with a nil error means the domain exists but has no MX
	// (the implicit MX applies, RFC 5321 section 5.1).
	LookupMX(ctx context.Context, domain string) ([]MX, error)
	// LookupAddrs returns the host's IPv4 and IPv6 addresses.
	LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error)
}

// MX is one mail exchanger. Host "." is the null MX of RFC 7505.
type MX struct {
	Host string
	Pref uint16
}

// DNS failures, kept apart because they mean different things: a domain
// that does not exist, a server that failed, and no answer in time.
var (
	ErrNXDomain   = errors.New("no such domain")
	ErrServFail   = errors.New("server failure")
	ErrDNSTimeout = errors.New("DNS timeout")
	ErrDNSOther   = errors.New("DNS error")
)

// DNSError is a failed lookup; it wraps one of the sentinels above.
type DNSError struct {
	Name  string
	Qtype string
	Kind  error // ErrNXDomain, ErrServFail, ErrDNSTimeout or ErrDNSOther
	Err   error // the underlying error, if any
}

func (e *DNSError) Error() string {
	s := fmt.Sprintf("%s %s: %v", e.Name, e.Qtype, e.Kind)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *DNSError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind} // an Unwrap []error must not hold nil
	}
	return []error{e.Kind, e.Err}
}

// maxCNAMEs bounds CNAME chains, which a hostile zone could make circular.
const maxCNAMEs = 8

// DNSClient resolves with github.com/miekg/dns against fixed servers,
// in order, trying the next on failure. It does no caching: results are
// cached as whole probe results.
type DNSClient struct {
	Servers []string      // "ip:port"
	Timeout time.Duration // per query and server
}

// NewDNSClient uses servers, or those of /etc/resolv.conf when empty.
func NewDNSClient(servers []string, timeout time.Duration) (*DNSClient, error) {
	if len(servers) == 0 {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("no dns.servers configured and /etc/resolv.conf: %w", err)
		}
		for _, s := range conf.Servers {
			servers = append(servers, net.JoinHostPort(s, conf.Port))
		}
		if len(servers) == 0 {
			return nil, errors.New("no dns.servers configured and /etc/resolv.conf names none")
		}
	}
	return &DNSClient{Servers: servers, Timeout: timeout}, nil
}

// query asks each server in turn; it returns the first NOERROR or NXDOMAIN
// answer, following UDP truncation with TCP.
func (c *DNSClient) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	qt := dns.TypeToString[qtype]
	var last error = &DNSError{Name: name, Qtype: qt, Kind: ErrDNSOther, Err: errors.New("no DNS server")}
	for _, srv := range c.Servers {
		if ctx.Err() != nil {
			break
		}
		r, err := c.exchange(ctx, m, srv, "udp")
		if err == nil && r.Truncated {
			r, err = c.exchange(ctx, m, srv, "tcp")
		}
		switch {
		case err != nil:
			kind := ErrDNSOther
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
				kind = ErrDNSTimeout
			}
			last = &DNSError{Name: name, Qtype: qt, Kind: kind, Err: err}
		case r.Rcode == dns.RcodeSuccess:
			return r, nil
		case r.Rcode == dns.RcodeNameError:
			return r, &DNSError{Name: name, Qtype: qt, Kind: ErrNXDomain}
		case r.Rcode == dns.RcodeServerFailure:
			last = &DNSError{Name: name, Qtype: qt, Kind: ErrServFail}
		default:
			last = &DNSError{Name: name, Qtype: qt, Kind: ErrDNSOther, Err: fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])}
		}
	}
	if ctx.Err() != nil {
		return nil, &DNSError{Name: name, Qtype: qt, Kind: ErrDNSTimeout, Err: ctx.Err()}
	}
	return nil, last
}

func (c *DNSClient) exchange(ctx context.Context, m *dns.Msg, srv, network string) (*dns.Msg, error) {
	cl := &dns.Client{Net: network, Timeout: c.Timeout}
	r, _, err := cl.ExchangeContext(ctx, m, srv)
	return r, err
}

// lookup resolves name/qtype, following CNAMEs within the answer and, when
// the answer stops at a CNAME, with a new query for its target.
func (c *DNSClient) lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	target := dns.Fqdn(strings.ToLower(name))
	tooLong := &DNSError{Name: name, Qtype: dns.TypeToString[qtype], Kind: ErrDNSOther, Err: errors.New("CNAME chain too long")}
	links := 0 // CNAMEs followed, in answers and across queries: an answer may loop
	for hop := 0; hop <= maxCNAMEs; hop++ {
		r, err := c.query(ctx, target, qtype)
		if err != nil {
			return nil, err
		}
		var out []dns.RR
		cname := ""
		for changed := true; changed; { // walk the chain inside this answer
			changed = false
			for _, rr := range r.Answer {
				if !strings.EqualFold(rr.Header().Name, target) {
					continue
				}
				if cn, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
					if links++; links > maxCNAMEs {
						return nil, tooLong
					}
					target, cname, changed = strings.ToLower(cn.Target), cn.Target, true
					break
				}
				if rr.Header().Rrtype == qtype {
					out = append(out, rr)
				}
			}
		}
		if len(out) > 0 || cname == "" {
			return out, nil
		}
	}
	return nil, tooLong
}

// LookupMX implements Resolver.
func (c *DNSClient) LookupMX(ctx context.Context, domain string) ([]MX, error) {
	rrs, err := c.lookup(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	mxs := make([]MX, 0, len(rrs))
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		host := strings.ToLower(strings.TrimSuffix(mx.Mx, "."))
		if host == "" {
			host = "."
		}
		mxs = append(mxs, MX{Host: host, Pref: mx.Preference})
	}
	sort.SliceStable(mxs, func(i, j int) bool {
		if mxs[i].Pref != mxs[j].Pref {
			return mxs[i].Pref < mxs[j].Pref
		}
		return mxs[i].Host < mxs[j].Host
	})
	return mxs, nil
}

// LookupAddrs implements Resolver: A and AAAA. One family failing is not
// fatal when the other answers.
func (c *DNSClient) LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	var firstErr error
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := c.lookup(ctx, host, qtype)
		if err != nil {
			if errors.Is(err, ErrNXDomain) {
				return nil, err // the name does not exist at all
			}
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, rr := range rrs {
			var ip net.IP
			switch rr := rr.(type) {
			case *dns.A:
				ip = rr.A
			case *dns.AAAA:
				ip = rr.AAAA
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				addrs = append(addrs, a.Unmap())
			}
		}
	}
	if len(addrs) == 0 && firstErr != nil {
		return nil, firstErr
	}
	return addrs, nil
}

// LookupTXT returns the TXT records at name, each record's
// character-strings joined into one string: a publisher may split a long
// record anywhere, and readers such as MTA-STS (RFC 8461 section 3.1) and
// SPF (RFC 7208 section 3.3) join the pieces again. CNAMEs are followed. A
// name that exists without TXT records gives none and no error; a name that
// does not exist gives a *DNSError wrapping ErrNXDomain, so that callers can
// tell "no record" from "could not find out".
func (c *DNSClient) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := c.lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	txts := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		var b strings.Builder
		for _, s := range rr.(*dns.TXT).Txt {
			b.WriteString(unescapeTXT(s))
		}
		txts = append(txts, b.String())
	}
	return txts, nil
}

// unescapeTXT undoes the presentation-format escapes that miekg/dns puts in
// the character-strings it unpacks (\" and \\ for quote and backslash,
// \DDD for unprintable bytes), giving back the bytes on the wire.
func unescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b = append(b, s[i])
			continue
		}
		if d := s[i+1:]; len(d) >= 3 && txtDigit(d[0]) && txtDigit(d[1]) && txtDigit(d[2]) {
			if v := int(d[0]-'0')*100 + int(d[1]-'0')*10 + int(d[2]-'0'); v <= 0xff {
				b = append(b, byte(v))
				i += 3
				continue
			}
		}
		b = append(b, s[i+1])
		i++
	}
	return string(b)
}

func txtDigit(c byte) bool { return '0' <= c && c <= '9' }
