package dnsclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// MX is one mail exchanger. Host "." is the null MX of RFC 7505.
type MX struct {
	Host string
	Pref uint16
}

// records is Lookup for the methods below, which report a name that does
// not exist as an *Error wrapping ErrNXDomain: their callers treat it as
// an answer of its own ("no such host", "no policy").
func (c *Client) records(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	a, err := c.Lookup(ctx, name, qtype)
	if err != nil {
		return nil, err
	}
	return answerRecords(name, qtype, a)
}

// answerRecords returns the records of a, the answer to name and qtype, or
// the *Error wrapping ErrNXDomain that says name does not exist.
func answerRecords(name string, qtype uint16, a Resolution) ([]dns.RR, error) {
	if a.NXDomain {
		e := &Error{Name: strings.ToLower(dns.Fqdn(name)), Qtype: dns.TypeToString[qtype], Kind: ErrNXDomain}
		if a.Name != e.Name {
			e.Err = fmt.Errorf("its CNAME chain ends at %s", strings.TrimSuffix(a.Name, "."))
		}
		return nil, e
	}
	return a.Records, nil
}

// LookupMX returns the domain's MX records sorted by preference, then host.
// An empty list with a nil error means the domain exists but has no MX
// (the implicit MX applies, RFC 5321 section 5.1).
func (c *Client) LookupMX(ctx context.Context, domain string) ([]MX, error) {
	rrs, err := c.records(ctx, domain, dns.TypeMX)
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

// LookupAddrs returns the host's IPv4 and IPv6 addresses (A, then AAAA).
// One family failing is not fatal when the other answers.
func (c *Client) LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	var firstErr error
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := c.records(ctx, host, qtype)
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
// SPF (RFC 7208 section 3.3) join the pieces again, and how long the
// answer may be kept (Resolution.TTL). A name that exists without TXT
// records gives none and no error; a name that does not exist gives an
// error wrapping ErrNXDomain, so that callers can tell "no record" from
// "could not find out", and its negative TTL all the same.
func (c *Client) LookupTXT(ctx context.Context, name string) ([]string, time.Duration, error) {
	a, err := c.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, 0, err
	}
	rrs, err := answerRecords(name, dns.TypeTXT, a)
	if err != nil {
		return nil, a.TTL, err
	}
	txts := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		var b strings.Builder
		for _, s := range rr.(*dns.TXT).Txt {
			b.WriteString(unescapeTXT(s))
		}
		txts = append(txts, b.String())
	}
	return txts, a.TTL, nil
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
