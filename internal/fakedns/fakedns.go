// Package fakedns is an in-process DNS server for tests, built on
// github.com/miekg/dns. It answers from a zone the test fills and changes
// while the server runs, and can be told to fail in the ways real DNS fails:
// NXDOMAIN, SERVFAIL, slow or missing answers. It also sets the AD bit on
// chosen names, standing in for a validating resolver in DANE tests.
//
// It exists so that MX resolution and the prober can be tested against real
// DNS messages over real UDP and TCP sockets (truncation, CNAME chains, null
// MX, negative answers) without the internet and without replacing any
// global: the code under test is given Addr, or the *net.Resolver from
// Resolver, through its own configuration, so tests can run in parallel.
//
// # Semantics
//
// The server plays a recursive resolver that knows the whole namespace: every
// name it has no records for does not exist. Answers follow RFC 1034 and RFC
// 2308 as a real server would:
//
//   - Names are case-insensitive; "example.test" and "Example.TEST." are the
//     same name in every method.
//   - A name with records of the asked type: NOERROR with those records.
//   - A name with a CNAME (and a query for another type): the CNAME, then the
//     answer for its target, following chains up to 8 links (a longer chain
//     or a loop is SERVFAIL). The rcode is that of the last name in the chain
//     (RFC 6604): a CNAME to an unknown name is NXDOMAIN with the CNAME.
//   - A name that exists but has no records of the type (NODATA), including
//     an empty non-terminal such as "_tcp.mx.example" when
//     "_25._tcp.mx.example" has records: NOERROR, no answer, an SOA in the
//     authority section.
//   - Any other name: NXDOMAIN with an SOA in the authority section.
//   - The SOA is the closest enclosing SOA added to the zone, or else one
//     made up for the last two labels of the name.
//   - Over UDP, answers larger than the client's EDNS0 buffer (512 bytes
//     without EDNS0) are truncated with the TC bit, so clients retry over
//     TCP.
//   - Answers carry AA and RA, so that stub resolvers (Go's included) accept
//     them.
//
// SetRcode, SetAD, SetDelay and SetDrop apply to the query name as asked, not
// to CNAME targets, except that the AD bit is set only when every name in a
// CNAME chain has it. As a validating resolver does (RFC 6840, section 5.8),
// AD is set only when the query set the DO or the AD bit.
//
// All methods are safe to call concurrently, while the server answers.
package fakedns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// ttl is the TTL of records made by the Add helpers and of made-up SOAs.
const ttl = 300

// maxChain bounds CNAME chains, as resolvers do.
const maxChain = 8

// Query is one question the server received.
type Query struct {
	// Name is the query name as the client sent it (case kept).
	Name string
	// Type is the query type, such as dns.TypeMX.
	Type uint16
	// Net is "udp" or "tcp".
	Net string
	// DNSSEC reports whether the query set the DO or the AD bit, that is,
	// asked for DNSSEC-validated answers.
	DNSSEC bool
}

// Server is a running fake DNS server. Make one with Start or MustStart.
type Server struct {
	addr     string
	udp, tcp *dns.Server
	wg       sync.WaitGroup // the goroutines running udp and tcp
	done     chan struct{}  // closed by Close: ends delayed answers

	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	records map[string][]dns.RR // by canonical owner name
	rcode   map[string]int
	ad      map[string]bool
	delay   map[string]time.Duration
	drop    map[string]bool
	queries []Query
	// queried is closed and replaced each time a query is logged, waking
	// WaitQueries.
	queried chan struct{}
}

// Start starts a server on addr, which must be a loopback IP address and a
// port, on UDP and TCP both. With port 0 it picks a port free for both
// protocols.
func Start(addr string) (*Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("fakedns: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("fakedns: %q is not a loopback address: tests must not listen on the network", host)
	}
	pc, l, err := listen(host, port)
	if err != nil {
		return nil, err
	}
	s := &Server{
		addr:    l.Addr().String(),
		done:    make(chan struct{}),
		records: make(map[string][]dns.RR),
		rcode:   make(map[string]int),
		ad:      make(map[string]bool),
		delay:   make(map[string]time.Duration),
		drop:    make(map[string]bool),
		queried: make(chan struct{}),
	}
	h := dns.HandlerFunc(s.handle)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: l, Handler: h}
	if err := s.activate(s.udp); err != nil {
		pc.Close()
		l.Close()
		s.wg.Wait()
		return nil, err
	}
	if err := s.activate(s.tcp); err != nil {
		l.Close()
		s.udp.Shutdown()
		s.wg.Wait()
		return nil, err
	}
	return s, nil
}

// MustStart starts a server on a free port of 127.0.0.1, fails the test if it
// cannot, and closes the server when the test ends.
func MustStart(tb testing.TB) *Server {
	tb.Helper()
	return MustStartAt(tb, "127.0.0.1:0")
}

// MustStartAt is MustStart on addr, as for Start. A fixed address such as
// 127.0.0.70:53 serves clients that cannot be told a port: the C library's
// stub resolver, configured by resolv.conf, asks port 53 only.
func MustStartAt(tb testing.TB, addr string) *Server {
	tb.Helper()
	s, err := Start(addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("fakedns: close: %v", err)
		}
	})
	return s
}

// listen opens UDP and TCP on the same port. For port 0 it lets the kernel
// choose a UDP port and then tries TCP on it, a few times, since that port
// may be taken for TCP.
func listen(host, port string) (net.PacketConn, net.Listener, error) {
	const tries = 10
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, port))
		if err != nil {
			return nil, nil, fmt.Errorf("fakedns: %w", err)
		}
		p := strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
		l, err := net.Listen("tcp", net.JoinHostPort(host, p))
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		if port != "0" || i == tries-1 {
			return nil, nil, fmt.Errorf("fakedns: %w", err)
		}
	}
}

// activate runs srv in a goroutine and returns once it serves, so that Close
// can never come before the miekg/dns server has started (its Shutdown fails
// on a server that has not started, which would leak the goroutine).
func (s *Server) activate(srv *dns.Server) error {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		errc <- srv.ActivateAndServe()
	}()
	select {
	case <-started:
		return nil
	case err := <-errc:
		return fmt.Errorf("fakedns: serve: %w", err)
	}
}

// Addr returns the address the server listens on, "127.0.0.1:PORT", for UDP
// and TCP alike.
func (s *Server) Addr() string { return s.addr }

// Resolver returns a Go resolver that sends every query to this server. Go's
// resolver still reads /etc/resolv.conf for its search list, ndots, timeout
// and attempts, and /etc/hosts first for host lookups: use fully qualified
// names under a reserved domain such as .test, and a context deadline.
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, s.addr)
		},
	}
}

// Close stops the server: it stops listening, ends delayed and dropped
// queries without an answer, and waits for every goroutine to return. Later
// calls return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		ctx := context.Background()
		s.closeErr = errors.Join(s.udp.ShutdownContext(ctx), s.tcp.ShutdownContext(ctx))
		s.wg.Wait()
	})
	return s.closeErr
}

// canonical returns name as zone keys hold it: lower case, fully qualified.
func canonical(name string) string {
	return strings.ToLower(dns.Fqdn(name))
}

// Add parses records in zone-file syntax, such as
// "example.test. 300 IN MX 10 mx.example.test.", and adds them. Names are
// absolute even without a trailing dot; a missing TTL is 3600. It adds
// nothing if any record fails to parse.
func (s *Server) Add(records ...string) error {
	rrs := make([]dns.RR, 0, len(records))
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			return fmt.Errorf("fakedns: %w", err)
		}
		if rr == nil {
			return fmt.Errorf("fakedns: no record in %q", r)
		}
		rrs = append(rrs, rr)
	}
	s.AddRR(rrs...)
	return nil
}

// AddRR adds copies of rrs; adding a record that is already there does
// nothing.
func (s *Server) AddRR(rrs ...dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range rrs {
		rr = dns.Copy(rr)
		rr.Header().Name = canonical(rr.Header().Name)
		if rr.Header().Class == 0 {
			rr.Header().Class = dns.ClassINET
		}
		name := rr.Header().Name
		if !slices.ContainsFunc(s.records[name], func(have dns.RR) bool { return dns.IsDuplicate(have, rr) }) {
			s.records[name] = append(s.records[name], rr)
		}
	}
}

func hdr(name string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: dns.Fqdn(name), Rrtype: rrtype, Class: dns.ClassINET, Ttl: ttl}
}

// AddMX adds an MX record. The null MX of RFC 7505, "this domain accepts no
// mail", is AddMX(domain, 0, ".").
func (s *Server) AddMX(domain string, pref uint16, host string) {
	s.AddRR(&dns.MX{Hdr: hdr(domain, dns.TypeMX), Preference: pref, Mx: dns.Fqdn(host)})
}

// AddA adds an A record. It panics if ip is not an IPv4 address: that is a
// mistake in the test.
func (s *Server) AddA(host, ip string) {
	a := net.ParseIP(ip).To4()
	if a == nil {
		panic(fmt.Sprintf("fakedns: AddA(%q, %q): not an IPv4 address", host, ip))
	}
	s.AddRR(&dns.A{Hdr: hdr(host, dns.TypeA), A: a})
}

// AddAAAA adds an AAAA record. It panics if ip is not an IPv6 address: that
// is a mistake in the test.
func (s *Server) AddAAAA(host, ip string) {
	a := net.ParseIP(ip)
	if a == nil || a.To4() != nil {
		panic(fmt.Sprintf("fakedns: AddAAAA(%q, %q): not an IPv6 address", host, ip))
	}
	s.AddRR(&dns.AAAA{Hdr: hdr(host, dns.TypeAAAA), AAAA: a})
}

// AddCNAME makes name an alias of target.
func (s *Server) AddCNAME(name, target string) {
	s.AddRR(&dns.CNAME{Hdr: hdr(name, dns.TypeCNAME), Target: dns.Fqdn(target)})
}

// AddTXT adds one TXT record made of the character-strings strs, taken as
// raw bytes. A string longer than 255 bytes is split into several, as DNS
// requires; clients such as MTA-STS readers join them again. Call AddTXT
// again for a second record at the same name.
func (s *Server) AddTXT(name string, strs ...string) {
	var txt []string
	for _, str := range strs {
		for {
			chunk := str[:min(len(str), 255)]
			// miekg/dns reads backslash escapes in TXT strings.
			txt = append(txt, strings.ReplaceAll(chunk, `\`, `\\`))
			str = str[len(chunk):]
			if str == "" {
				break
			}
		}
	}
	s.AddRR(&dns.TXT{Hdr: hdr(name, dns.TypeTXT), Txt: txt})
}

// AddTLSA adds a TLSA record (RFC 6698) at name, such as
// "_25._tcp.mx.example.test"; data is the certificate association data in
// hexadecimal. Use SetAD on name too, for a DANE client to trust it.
func (s *Server) AddTLSA(name string, usage, selector, matchingType uint8, data string) {
	s.AddRR(&dns.TLSA{
		Hdr:          hdr(name, dns.TypeTLSA),
		Usage:        usage,
		Selector:     selector,
		MatchingType: matchingType,
		Certificate:  strings.ToLower(data),
	})
}

// Remove removes the records of type qtype at name; dns.TypeANY removes all
// of them. A name left with no records no longer exists (NXDOMAIN), unless
// it has names below it.
func (s *Server) Remove(name string, qtype uint16) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := slices.DeleteFunc(slices.Clone(s.records[name]), func(rr dns.RR) bool {
		return qtype == dns.TypeANY || rr.Header().Rrtype == qtype
	})
	if len(kept) == 0 {
		delete(s.records, name)
	} else {
		s.records[name] = kept
	}
}

// SetTTL sets the TTL of name's records of type qtype (dns.TypeANY: all of
// them), as a zone edit would.
func (s *Server) SetTTL(name string, qtype uint16, ttl uint32) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	rrs := make([]dns.RR, len(s.records[name]))
	for i, rr := range s.records[name] {
		rrs[i] = dns.Copy(rr) // answers already sent keep theirs
		if qtype == dns.TypeANY || rr.Header().Rrtype == qtype {
			rrs[i].Header().Ttl = ttl
		}
	}
	s.records[name] = rrs
}

// SetRcode makes queries for name answer with rcode and no records, whatever
// the zone holds: dns.RcodeServerFailure for SERVFAIL, dns.RcodeRefused, or
// dns.RcodeNameError for NXDOMAIN (with an SOA). dns.RcodeSuccess returns to
// answering from the zone.
func (s *Server) SetRcode(name string, rcode int) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if rcode == dns.RcodeSuccess {
		delete(s.rcode, name)
	} else {
		s.rcode[name] = rcode
	}
}

// SetAD sets whether answers for name carry the AD (authenticated data) bit,
// that is, whether a validating resolver would call them DNSSEC-secure.
func (s *Server) SetAD(name string, ad bool) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ad {
		s.ad[name] = true
	} else {
		delete(s.ad, name)
	}
}

// SetDelay delays answers for name by d, for timeout and deduplication
// tests; 0 removes the delay. The query is logged (see WaitQueries) before
// the delay starts. Close ends pending delays without an answer.
func (s *Server) SetDelay(name string, d time.Duration) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if d > 0 {
		s.delay[name] = d
	} else {
		delete(s.delay, name)
	}
}

// SetDrop sets whether queries for name get no answer at all, so that clients
// time out. Queries are still logged.
func (s *Server) SetDrop(name string, drop bool) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if drop {
		s.drop[name] = true
	} else {
		delete(s.drop, name)
	}
}

// Queries returns the queries received so far, oldest first.
func (s *Server) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.queries)
}

// Count returns how many queries for name (in any case) and qtype were
// received; qtype 0 counts every type. Tests use it to assert that a cache
// saved a lookup.
func (s *Server) Count(name string, qtype uint16) int {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, q := range s.queries {
		if canonical(q.Name) == name && (qtype == 0 || q.Type == qtype) {
			n++
		}
	}
	return n
}

// WaitQueries waits until at least n queries have been received and returns
// them all, or returns ctx's error. Tests use it to know that a client is
// blocked on a delayed or dropped name.
func (s *Server) WaitQueries(ctx context.Context, n int) ([]Query, error) {
	for {
		s.mu.Lock()
		if len(s.queries) >= n {
			q := slices.Clone(s.queries)
			s.mu.Unlock()
			return q, nil
		}
		wake := s.queried
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, fmt.Errorf("fakedns: waiting for %d queries: %w", n, ctx.Err())
		}
	}
}

// handle answers one query; miekg/dns calls it in a goroutine of its own.
func (s *Server) handle(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		w.WriteMsg(new(dns.Msg).SetRcode(req, dns.RcodeFormatError))
		return
	}
	q := req.Question[0]
	name := canonical(q.Name)
	opt := req.IsEdns0()
	network := w.LocalAddr().Network()

	s.mu.Lock()
	s.queries = append(s.queries, Query{
		Name:   q.Name,
		Type:   q.Qtype,
		Net:    network,
		DNSSEC: req.AuthenticatedData || (opt != nil && opt.Do()),
	})
	close(s.queried)
	s.queried = make(chan struct{})
	drop, delay := s.drop[name], s.delay[name]
	s.mu.Unlock()

	if drop {
		return
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.done:
			t.Stop()
			return
		}
	}

	s.mu.Lock()
	resp := s.answer(req, q, name)
	s.mu.Unlock()
	if network == "udp" {
		size := dns.MinMsgSize
		if opt != nil {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}

// answer builds the reply to q from the zone. s.mu must be held.
func (s *Server) answer(req *dns.Msg, q dns.Question, name string) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	opt := req.IsEdns0()
	if opt != nil {
		m.SetEdns0(dns.DefaultMsgSize, opt.Do())
	}
	dnssec := req.AuthenticatedData || (opt != nil && opt.Do())

	if rc, ok := s.rcode[name]; ok {
		m.Rcode = rc
		if rc == dns.RcodeNameError {
			m.Ns = []dns.RR{s.soa(name)}
			m.AuthenticatedData = dnssec && s.ad[name]
		}
		return m
	}

	secure := s.ad[name]
	cur := name
	for links := 0; ; links++ {
		var cname *dns.CNAME
		found := false
		for _, rr := range s.records[cur] {
			if q.Qtype == dns.TypeANY || rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
				found = true
			} else if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if found {
			break
		}
		if cname != nil {
			if links == maxChain {
				m.Answer = nil
				m.Rcode = dns.RcodeServerFailure
				return m
			}
			m.Answer = append(m.Answer, dns.Copy(cname))
			cur = canonical(cname.Target)
			secure = secure && s.ad[cur]
			continue
		}
		if !s.exists(cur) {
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = []dns.RR{s.soa(cur)}
		break
	}
	m.AuthenticatedData = dnssec && secure
	return m
}

// exists reports whether name has records or names below it (an empty
// non-terminal). s.mu must be held.
func (s *Server) exists(name string) bool {
	if len(s.records[name]) > 0 {
		return true
	}
	for owner := range s.records {
		if strings.HasSuffix(owner, "."+name) || name == "." {
			return true
		}
	}
	return false
}

// soa returns the SOA for negative answers about name: the closest enclosing
// SOA in the zone, or one made up for the last two labels. s.mu must be held.
func (s *Server) soa(name string) dns.RR {
	labels := dns.SplitDomainName(name)
	for i := range labels {
		for _, rr := range s.records[dns.Fqdn(strings.Join(labels[i:], "."))] {
			if rr.Header().Rrtype == dns.TypeSOA {
				return dns.Copy(rr)
			}
		}
	}
	apex := "."
	if len(labels) > 0 {
		apex = dns.Fqdn(strings.Join(labels[max(0, len(labels)-2):], "."))
	}
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: apex, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
		Ns:      "ns." + strings.TrimPrefix(apex, "."),
		Mbox:    "hostmaster." + strings.TrimPrefix(apex, "."),
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  60,
	}
}
