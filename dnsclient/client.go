package dnsclient

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// DNS failures, kept apart because they mean different things to callers:
// a name that does not exist is an answer ("no policy", "no such host"),
// while the others mean "we do not know" and must never be read as "there
// is nothing". A failed lookup is an *Error wrapping one of them.
var (
	// ErrNXDomain: the name does not exist. Lookup reports it in
	// Resolution.NXDomain; LookupMX, LookupAddrs and LookupTXT as an error.
	ErrNXDomain = errors.New("no such domain")
	// ErrServFail: the resolver answered SERVFAIL, which a validating
	// resolver also answers for a bogus (failed validation) answer.
	ErrServFail = errors.New("server failure")
	// ErrTimeout: no answer in time, or the caller's context ended.
	ErrTimeout = errors.New("DNS timeout")
	// ErrOther: any other failure: another error rcode, an unreadable
	// answer, an answer to another question, a CNAME chain too long, no
	// server to ask.
	ErrOther = errors.New("DNS error")
)

// Error is a failed lookup. It wraps its Kind and, if set, Err.
type Error struct {
	// Name is the name queried, fully qualified: the name looked up, or
	// a CNAME target on its chain when that query failed.
	Name  string
	Qtype string // "MX", "A", "AAAA", "TXT", "TLSA"
	Kind  error  // ErrNXDomain, ErrServFail, ErrTimeout or ErrOther
	Err   error  // the underlying error, or nil
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s %s: %v", strings.TrimSuffix(e.Name, "."), e.Qtype, e.Kind)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns Kind and, if set, Err.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind} // an Unwrap []error must not hold nil
	}
	return []error{e.Kind, e.Err}
}

// maxCNAMEs bounds CNAME chains, which a hostile zone could make circular.
const maxCNAMEs = 8

// ednsSize is the EDNS0 UDP buffer size announced (the DNS flag day 2020
// value); larger answers come truncated and are asked again over TCP.
const ednsSize = 1232

// DefaultTimeout bounds each query to each server when Client.Timeout is 0.
const DefaultTimeout = 5 * time.Second

// Client resolves against fixed servers, in order, trying the next when one
// fails. It does no caching: callers cache whole results. Its fields are
// read, never written, so one Client serves concurrent lookups.
type Client struct {
	// Servers are the resolvers to ask, "ip:port".
	Servers []string
	// Timeout bounds each query to each server; 0 means DefaultTimeout.
	Timeout time.Duration
	// DNSSEC makes queries ask for validation (DO and AD bits) and answers
	// report in Resolution.Secure whether the resolver validated them. The
	// servers must then be validating resolvers that can be trusted (see
	// AllLoopback).
	DNSSEC bool
}

// New returns a client, with DNSSEC off, that asks servers, or the servers
// of /etc/resolv.conf when servers is empty.
func New(servers []string, timeout time.Duration) (*Client, error) {
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
	return &Client{Servers: servers, Timeout: timeout}, nil
}

func (c *Client) timeout() time.Duration { return cmp.Or(c.Timeout, DefaultTimeout) }

// Resolution is the outcome of a lookup that got an answer, NOERROR or
// NXDOMAIN.
type Resolution struct {
	// Records are the records of the asked type at the end of any CNAME
	// chain.
	Records []dns.RR
	// Name is their owner: the name looked up after CNAMEs, lower case,
	// fully qualified. DANE looks for TLSA records there.
	Name string
	// Secure reports that the Client has DNSSEC set and every answer on
	// the way had the AD bit. A CNAME chain is as secure as its weakest
	// link (RFC 7671 section 7); a validating resolver also sets AD on an
	// answer holding a whole chain only if all of it validated.
	Secure bool
	// NXDomain reports that Name does not exist (RFC 6604: after a CNAME
	// chain, the rcode is that of its last name).
	NXDomain bool
	// TTL is how long the answer may be kept: the smallest TTL of the
	// records used (the CNAMEs on the way included) or, for an answer
	// without records, the negative-caching TTL of the zone's SOA (RFC
	// 2308 section 5: the smaller of the SOA's own TTL and its minimum).
	// It is 0 when the answer says nothing about it (no records, no SOA).
	TTL time.Duration
}

// Lookup resolves name and qtype, following CNAMEs within an answer and,
// when an answer stops at a CNAME without the target's records, with a new
// query for its target. A name that does not exist is a Resolution with
// NXDomain set, not an error; errors are *Error.
func (c *Client) Lookup(ctx context.Context, name string, qtype uint16) (Resolution, error) {
	asked := strings.ToLower(dns.Fqdn(name))
	tooLong := &Error{Name: asked, Qtype: dns.TypeToString[qtype], Kind: ErrOther, Err: errors.New("CNAME chain too long")}
	target := asked
	a := Resolution{Secure: c.DNSSEC}
	ttl := uint32(math.MaxUint32) // the smallest TTL seen on the way
	links := 0                    // CNAMEs followed, in answers and across queries: an answer may loop
	for range maxCNAMEs + 1 {
		r, err := c.query(ctx, target, qtype)
		if err != nil {
			return Resolution{}, err
		}
		a.Secure = a.Secure && r.AuthenticatedData
		followed := false
		for changed := true; changed; { // walk the chain inside this answer
			changed = false
			for _, rr := range r.Answer {
				if !strings.EqualFold(rr.Header().Name, target) {
					continue
				}
				if cn, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
					if links++; links > maxCNAMEs {
						return Resolution{}, tooLong
					}
					target = strings.ToLower(dns.Fqdn(cn.Target))
					ttl = min(ttl, rr.Header().Ttl)
					followed, changed = true, true
					break
				}
			}
		}
		a.Records = a.Records[:0]
		last := ttl
		for _, rr := range r.Answer {
			if rr.Header().Rrtype == qtype && strings.EqualFold(rr.Header().Name, target) {
				a.Records = append(a.Records, rr)
				last = min(last, rr.Header().Ttl)
			}
		}
		if len(a.Records) == 0 {
			last = min(last, negativeTTL(r))
		}
		a.Name = target
		a.NXDomain = r.Rcode == dns.RcodeNameError
		if last != math.MaxUint32 {
			a.TTL = time.Duration(last) * time.Second
		}
		// An answer that ends at a CNAME without the target's records may be
		// a partial one: ask for the target itself. NXDOMAIN is the rcode of
		// the chain's last name (RFC 6604), final already.
		if len(a.Records) > 0 || !followed || a.NXDomain {
			return a, nil
		}
	}
	return Resolution{}, tooLong
}

// negativeTTL is how long an answer without records may be cached: the
// smaller of the TTL and the minimum field of the SOA in its authority
// section (RFC 2308 section 5), or math.MaxUint32 when there is none.
func negativeTTL(r *dns.Msg) uint32 {
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
	}
	return math.MaxUint32
}

// query asks the servers in turn and returns the first NOERROR or NXDOMAIN
// answer to name's question. With DNSSEC, the query sets the DO bit (RFC
// 4035 section 3.2.1), so that a validating resolver validates, and the AD
// bit (RFC 6840 section 5.7), which asks for the result in the answer's AD
// bit. A truncated UDP answer is asked again over TCP.
func (c *Client) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(ednsSize, c.DNSSEC)
	m.AuthenticatedData = c.DNSSEC
	qt := dns.TypeToString[qtype]
	var last error = &Error{Name: name, Qtype: qt, Kind: ErrOther, Err: errors.New("no DNS server configured")}
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
			kind := ErrOther
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
				kind = ErrTimeout
			}
			last = &Error{Name: name, Qtype: qt, Kind: kind, Err: err}
		case !sameQuestion(m, r):
			last = &Error{Name: name, Qtype: qt, Kind: ErrOther, Err: fmt.Errorf("%s answered another question", srv)}
		case r.Rcode == dns.RcodeSuccess || r.Rcode == dns.RcodeNameError:
			return r, nil
		case r.Rcode == dns.RcodeServerFailure:
			last = &Error{Name: name, Qtype: qt, Kind: ErrServFail}
		default:
			last = &Error{Name: name, Qtype: qt, Kind: ErrOther, Err: fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, &Error{Name: name, Qtype: qt, Kind: ErrTimeout, Err: err}
	}
	return nil, last
}

// exchange sends m to srv over network and reads the answer, within the
// per-query timeout and ctx. Cancelling ctx ends the exchange at once.
func (c *Client) exchange(ctx context.Context, m *dns.Msg, srv, network string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	cl := &dns.Client{Net: network, Timeout: c.timeout(), UDPSize: ednsSize}
	conn, err := cl.DialContext(ctx, srv)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// miekg/dns only reads ctx's deadline; closing the connection also
	// ends the read on cancellation.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r, _, err := cl.ExchangeWithConnContext(ctx, m, conn)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return r, err
}

// sameQuestion reports whether r answers q's question: an answer to
// another one is misdirected or forged, and must not be taken for it.
func sameQuestion(q, r *dns.Msg) bool {
	if len(r.Question) != 1 {
		return false
	}
	a, b := q.Question[0], r.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
