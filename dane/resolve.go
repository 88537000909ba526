package dane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/miekg/dns"
)

// DNS failures. A failed lookup wraps one of them (match with errors.Is).
// Each means "we do not know", never "there is nothing": RFC 7672 section
// 2.1.1 has the client defer, not drop DANE, on such answers.
var (
	// ErrServFail: the resolver answered SERVFAIL, which a validating
	// resolver also answers for a bogus (failed validation) answer.
	ErrServFail = errors.New("DNS server failure")
	// ErrTimeout: no answer in time.
	ErrTimeout = errors.New("DNS timeout")
	// ErrDNS: any other failure: an error rcode, an unreadable answer, a
	// CNAME chain too long, no server to ask.
	ErrDNS = errors.New("DNS error")
)

// LookupError is a failed DNS lookup. It wraps ErrServFail, ErrTimeout or
// ErrDNS, and the underlying error if there is one.
type LookupError struct {
	Name  string // the query name
	Qtype string // "MX", "A", "AAAA", "TLSA"
	Kind  error  // ErrServFail, ErrTimeout or ErrDNS
	Err   error  // the underlying error, or nil
}

func (e *LookupError) Error() string {
	s := fmt.Sprintf("%s %s: %v", strings.TrimSuffix(e.Name, "."), e.Qtype, e.Kind)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns Kind and, if set, Err.
func (e *LookupError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// maxCNAMEs bounds CNAME chains, which a hostile zone could make circular.
const maxCNAMEs = 8

// ednsSize is the EDNS0 UDP buffer size we announce (the DNS flag day 2020
// value); larger answers come truncated and are asked again over TCP.
const ednsSize = 1232

// answer is the outcome of a lookup that got an answer (NOERROR or
// NXDOMAIN).
type answer struct {
	rrs      []dns.RR // the records of the asked type, at the end of any CNAME chain
	name     string   // the owner of rrs: the query name after CNAMEs, lower case, fully qualified
	secure   bool     // every response carried the AD bit
	nxdomain bool     // the (final) name does not exist
}

// lookup resolves name and qtype, following CNAMEs within an answer and,
// when an answer stops at a CNAME, with a new query for its target. The
// answer is secure only if every response on the way was (RFC 7671 section
// 7: a CNAME chain is as secure as its weakest link; a validating resolver
// also sets AD on a whole chain only if it all validated).
func (c *Checker) lookup(ctx context.Context, name string, qtype uint16) (answer, error) {
	qt := dns.TypeToString[qtype]
	target := strings.ToLower(dns.Fqdn(name))
	a := answer{secure: true}
	links := 0
	for range maxCNAMEs + 1 {
		r, err := c.query(ctx, target, qtype)
		if err != nil {
			return answer{}, err
		}
		a.secure = a.secure && r.AuthenticatedData
		followed := false
		for changed := true; changed; { // walk the chain inside this answer
			changed = false
			for _, rr := range r.Answer {
				if !strings.EqualFold(rr.Header().Name, target) {
					continue
				}
				if cn, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
					if links++; links > maxCNAMEs {
						return answer{}, &LookupError{Name: name, Qtype: qt, Kind: ErrDNS, Err: errors.New("CNAME chain too long")}
					}
					target = strings.ToLower(dns.Fqdn(cn.Target))
					followed, changed = true, true
					break
				}
			}
		}
		a.rrs = a.rrs[:0]
		for _, rr := range r.Answer {
			if rr.Header().Rrtype == qtype && strings.EqualFold(rr.Header().Name, target) {
				a.rrs = append(a.rrs, rr)
			}
		}
		a.name = target
		a.nxdomain = r.Rcode == dns.RcodeNameError
		// An answer that ends at a CNAME without the target's records may be
		// a partial one: ask for the target itself. NXDOMAIN is the rcode of
		// the chain's last name (RFC 6604), final already.
		if len(a.rrs) > 0 || !followed || a.nxdomain {
			return a, nil
		}
	}
	return answer{}, &LookupError{Name: name, Qtype: qt, Kind: ErrDNS, Err: errors.New("CNAME chain too long")}
}

// query asks the servers in turn and returns the first NOERROR or NXDOMAIN
// answer. The query sets the DO bit (RFC 4035 section 3.2.1), so that a
// validating resolver validates and reports the result in the AD bit, and
// the AD bit (RFC 6840 section 5.7), which asks for AD in the answer. A
// truncated UDP answer is asked again over TCP.
func (c *Checker) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(ednsSize, true)
	m.AuthenticatedData = true
	qt := dns.TypeToString[qtype]
	var last error = &LookupError{Name: name, Qtype: qt, Kind: ErrDNS, Err: errors.New("no DNS server configured")}
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
			kind := ErrDNS
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
				kind = ErrTimeout
			}
			last = &LookupError{Name: name, Qtype: qt, Kind: kind, Err: err}
		case !sameQuestion(m, r):
			last = &LookupError{Name: name, Qtype: qt, Kind: ErrDNS, Err: fmt.Errorf("%s answered another question", srv)}
		case r.Rcode == dns.RcodeSuccess || r.Rcode == dns.RcodeNameError:
			return r, nil
		case r.Rcode == dns.RcodeServerFailure:
			last = &LookupError{Name: name, Qtype: qt, Kind: ErrServFail}
		default:
			last = &LookupError{Name: name, Qtype: qt, Kind: ErrDNS, Err: fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, &LookupError{Name: name, Qtype: qt, Kind: ErrTimeout, Err: err}
	}
	return nil, last
}

// exchange sends m to srv over network and reads the answer, within the
// per-query timeout and ctx. Cancelling ctx ends the exchange at once.
func (c *Checker) exchange(ctx context.Context, m *dns.Msg, srv, network string) (*dns.Msg, error) {
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

// sameQuestion reports whether r answers q's question.
func sameQuestion(q, r *dns.Msg) bool {
	if len(r.Question) != 1 {
		return false
	}
	a, b := q.Question[0], r.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
