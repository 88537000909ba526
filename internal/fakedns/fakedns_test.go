package fakedns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// query asks s over network ("udp" or "tcp") for name and qtype; dnssec sets
// the DO bit through EDNS0.
func query(t *testing.T, s *Server, network, name string, qtype uint16, dnssec bool) *dns.Msg {
	t.Helper()
	r, err := exchange(s, network, name, qtype, dnssec, 5*time.Second)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

func exchange(s *Server, network, name string, qtype uint16, dnssec bool, timeout time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	if dnssec {
		m.SetEdns0(1232, true)
	}
	c := &dns.Client{Net: network, Timeout: timeout}
	r, _, err := c.Exchange(m, s.Addr())
	return r, err
}

func rcode(r *dns.Msg) string { return dns.RcodeToString[r.Rcode] }

func TestStartUDPAndTCPSamePort(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	host, port, err := net.SplitHostPort(s.Addr())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("Addr() = %q", s.Addr())
	}
	s.AddA("mx.example.test", "127.0.0.2")
	for _, network := range []string{"udp", "tcp"} {
		r := query(t, s, network, "mx.example.test", dns.TypeA, false)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || !r.Authoritative || !r.RecursionAvailable {
			t.Errorf("%s: got %v", network, r)
		}
	}
	var nets []string
	for _, q := range s.Queries() {
		nets = append(nets, q.Net)
	}
	if !slices.Equal(nets, []string{"udp", "tcp"}) {
		t.Errorf("query transports = %v", nets)
	}
}

func TestStartFixedPort(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	_, port, _ := net.SplitHostPort(s.Addr())
	// The same port on another loopback address is free.
	s2, err := Start("127.0.0.3:" + port)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Addr() != "127.0.0.3:"+port {
		t.Errorf("Addr() = %q", s2.Addr())
	}
	// And taken on the same address.
	if s3, err := Start(s.Addr()); err == nil {
		s3.Close()
		t.Error("Start on a port in use: no error")
	}
}

func TestStartRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0", "localhost:0", "127.0.0.1"} {
		if s, err := Start(addr); err == nil {
			s.Close()
			t.Errorf("Start(%q): no error", addr)
		}
	}
}

func TestCloseTwice(t *testing.T) {
	t.Parallel()
	s, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("first Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNamesCaseInsensitive(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddA("MX.Example.Test", "127.0.0.2")
	for _, name := range []string{"mx.example.test", "mx.example.test.", "MX.EXAMPLE.TEST"} {
		r := query(t, s, "udp", name, dns.TypeA, false)
		if len(r.Answer) != 1 {
			t.Errorf("%s: got %v", name, r)
		}
	}
	if n := s.Count("mX.eXample.test.", dns.TypeA); n != 3 {
		t.Errorf("Count = %d, want 3", n)
	}
	if q := s.Queries(); q[2].Name != "MX.EXAMPLE.TEST." {
		t.Errorf("logged name %q, want the case the client sent", q[2].Name)
	}
	s.Remove("mx.EXAMPLE.test", dns.TypeA)
	if r := query(t, s, "udp", "mx.example.test", dns.TypeA, false); r.Rcode != dns.RcodeNameError {
		t.Errorf("after Remove: %s, want NXDOMAIN", rcode(r))
	}
}

func TestNegativeAnswers(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddA("mx.example.test", "127.0.0.2")
	s.AddTLSA("_25._tcp.mx.example.test", 3, 1, 1, "AB")
	tests := []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"mx.example.test", dns.TypeMX, dns.RcodeSuccess},     // NODATA
		{"_tcp.mx.example.test", dns.TypeA, dns.RcodeSuccess}, // empty non-terminal
		{"example.test", dns.TypeMX, dns.RcodeSuccess},        // empty non-terminal
		{"nope.example.test", dns.TypeA, dns.RcodeNameError},
		{"x.mx.example.test", dns.TypeA, dns.RcodeNameError},
	}
	for _, tt := range tests {
		r := query(t, s, "udp", tt.name, tt.qtype, false)
		if r.Rcode != tt.rcode || len(r.Answer) != 0 {
			t.Errorf("%s %s: %s with %d answers, want %s and none",
				tt.name, dns.TypeToString[tt.qtype], rcode(r), len(r.Answer), dns.RcodeToString[tt.rcode])
		}
		if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA || r.Ns[0].Header().Name != "example.test." {
			t.Errorf("%s: authority %v, want the example.test. SOA", tt.name, r.Ns)
		}
	}
}

func TestSOAFromZone(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	if err := s.Add("sub.example.test. 300 IN SOA ns.sub.example.test. hostmaster.sub.example.test. 7 3600 600 86400 30"); err != nil {
		t.Fatal(err)
	}
	r := query(t, s, "udp", "a.b.sub.example.test", dns.TypeA, false)
	if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
		t.Fatalf("got %v", r)
	}
	if soa, ok := r.Ns[0].(*dns.SOA); !ok || soa.Serial != 7 {
		t.Errorf("authority %v, want the zone's SOA", r.Ns[0])
	}
}

func TestCNAME(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddCNAME("mx.example.test", "alias.example.test")
	s.AddCNAME("alias.example.test", "host.example.net")
	s.AddA("host.example.net", "127.0.0.2")
	s.AddCNAME("dangling.example.test", "missing.example.net")
	s.AddCNAME("loop1.example.test", "loop2.example.test")
	s.AddCNAME("loop2.example.test", "loop1.example.test")

	r := query(t, s, "udp", "mx.example.test", dns.TypeA, false)
	var got []string
	for _, rr := range r.Answer {
		got = append(got, rr.Header().Name+" "+dns.TypeToString[rr.Header().Rrtype])
	}
	want := []string{"mx.example.test. CNAME", "alias.example.test. CNAME", "host.example.net. A"}
	if r.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
		t.Errorf("chain: %s %v, want NOERROR %v", rcode(r), got, want)
	}

	r = query(t, s, "udp", "mx.example.test", dns.TypeCNAME, false)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.CNAME).Target != "alias.example.test." {
		t.Errorf("CNAME query: %v", r.Answer)
	}

	r = query(t, s, "udp", "mx.example.test", dns.TypeMX, false)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 || len(r.Ns) != 1 {
		t.Errorf("NODATA at the end of a chain: %v", r)
	}

	r = query(t, s, "udp", "dangling.example.test", dns.TypeA, false)
	if r.Rcode != dns.RcodeNameError || len(r.Answer) != 1 {
		t.Errorf("dangling CNAME: %s %v, want NXDOMAIN with the CNAME", rcode(r), r.Answer)
	}

	r = query(t, s, "udp", "loop1.example.test", dns.TypeA, false)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("CNAME loop: %s, want SERVFAIL", rcode(r))
	}
}

func TestNullMX(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddMX("nomail.example.test", 0, ".")
	r := query(t, s, "udp", "nomail.example.test", dns.TypeMX, false)
	if len(r.Answer) != 1 {
		t.Fatalf("got %v", r)
	}
	if mx := r.Answer[0].(*dns.MX); mx.Preference != 0 || mx.Mx != "." {
		t.Errorf("got %v, want MX 0 .", mx)
	}
	// What Go's resolver makes of it: one record whose host is ".".
	mxs, err := s.Resolver().LookupMX(context.Background(), "nomail.example.test.")
	if err != nil || len(mxs) != 1 || mxs[0].Host != "." || mxs[0].Pref != 0 {
		t.Errorf("net.Resolver.LookupMX: %v, %v", mxs, err)
	}
}

func TestAddHelpers(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddMX("example.test", 10, "mx1.example.test")
	s.AddMX("example.test", 20, "mx2.example.test.")
	s.AddMX("example.test", 10, "mx1.example.test") // duplicate: ignored
	s.AddAAAA("mx1.example.test", "::1")
	long := strings.Repeat("x", 300) + `\back`
	s.AddTXT("_mta-sts.example.test", "v=STSv1; id=1;")
	s.AddTXT("long.example.test", long, "two")
	s.AddTLSA("_25._tcp.mx1.example.test", 3, 1, 1, "0123ABCD")

	r := query(t, s, "udp", "example.test", dns.TypeMX, false)
	if len(r.Answer) != 2 {
		t.Errorf("MX: %v", r.Answer)
	}
	r = query(t, s, "udp", "mx1.example.test", dns.TypeAAAA, false)
	if len(r.Answer) != 1 || !r.Answer[0].(*dns.AAAA).AAAA.Equal(net.IPv6loopback) {
		t.Errorf("AAAA: %v", r.Answer)
	}
	r = query(t, s, "tcp", "long.example.test", dns.TypeTXT, false)
	if len(r.Answer) != 1 {
		t.Fatalf("TXT: %v", r.Answer)
	}
	txt := r.Answer[0].(*dns.TXT).Txt
	if len(txt) != 3 || len(txt[0]) != 255 {
		t.Errorf("TXT strings: %q, want split at 255 bytes", txt)
	}
	txts, err := s.Resolver().LookupTXT(context.Background(), "long.example.test.")
	if err != nil || len(txts) != 1 || txts[0] != long+"two" {
		t.Errorf("net.Resolver.LookupTXT: %q, %v", txts, err)
	}
	r = query(t, s, "udp", "_25._tcp.mx1.example.test", dns.TypeTLSA, false)
	if len(r.Answer) != 1 {
		t.Fatalf("TLSA: %v", r.Answer)
	}
	if tlsa := r.Answer[0].(*dns.TLSA); tlsa.Usage != 3 || tlsa.Selector != 1 || tlsa.MatchingType != 1 || tlsa.Certificate != "0123abcd" {
		t.Errorf("TLSA: %v", tlsa)
	}
}

func TestAddParses(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	if err := s.Add("example.test MX 10 mx.example.test", "mx.example.test. 60 IN A 127.0.0.2"); err != nil {
		t.Fatal(err)
	}
	r := query(t, s, "udp", "example.test", dns.TypeMX, false)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.MX).Mx != "mx.example.test." {
		t.Errorf("MX: %v", r.Answer)
	}
	if err := s.Add("ok.example.test A 127.0.0.2", "bad.example.test A 999.1.1.1"); err == nil {
		t.Error("Add of a bad record: no error")
	}
	if err := s.Add(""); err == nil {
		t.Error("Add of an empty string: no error")
	}
	if r := query(t, s, "udp", "ok.example.test", dns.TypeA, false); r.Rcode != dns.RcodeNameError {
		t.Errorf("a failed Add added records: %v", r)
	}
}

func TestAddPanicsOnBadIP(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	for name, f := range map[string]func(){
		"AddA with IPv6":     func() { s.AddA("h.test", "::1") },
		"AddA with garbage":  func() { s.AddA("h.test", "nope") },
		"AddAAAA with IPv4":  func() { s.AddAAAA("h.test", "127.0.0.1") },
		"AddAAAA with empty": func() { s.AddAAAA("h.test", "") },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func TestRemove(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddA("mx.example.test", "127.0.0.2")
	s.AddA("mx.example.test", "127.0.0.3")
	s.AddAAAA("mx.example.test", "::1")
	s.Remove("mx.example.test", dns.TypeA)
	if r := query(t, s, "udp", "mx.example.test", dns.TypeA, false); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("after removing A: %v, want NODATA", r)
	}
	if r := query(t, s, "udp", "mx.example.test", dns.TypeAAAA, false); len(r.Answer) != 1 {
		t.Errorf("AAAA removed too: %v", r)
	}
	s.Remove("mx.example.test", dns.TypeANY)
	if r := query(t, s, "udp", "mx.example.test", dns.TypeAAAA, false); r.Rcode != dns.RcodeNameError {
		t.Errorf("after removing all: %s, want NXDOMAIN", rcode(r))
	}
}

func TestSetTTL(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddA("mx.example.test", "127.0.0.2")
	s.AddAAAA("mx.example.test", "::1")
	s.SetTTL("MX.example.test", dns.TypeA, 7)
	if r := query(t, s, "udp", "mx.example.test", dns.TypeA, false); len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 7 {
		t.Errorf("A after SetTTL: %v, want TTL 7", r.Answer)
	}
	if r := query(t, s, "udp", "mx.example.test", dns.TypeAAAA, false); len(r.Answer) != 1 || r.Answer[0].Header().Ttl != ttl {
		t.Errorf("AAAA changed too: %v", r.Answer)
	}
}

func TestSetRcode(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddMX("example.test", 10, "mx.example.test")
	for _, rc := range []int{dns.RcodeServerFailure, dns.RcodeNameError, dns.RcodeRefused} {
		s.SetRcode("Example.Test", rc)
		r := query(t, s, "udp", "example.test", dns.TypeMX, false)
		if r.Rcode != rc || len(r.Answer) != 0 {
			t.Errorf("SetRcode(%s): got %s with %v", dns.RcodeToString[rc], rcode(r), r.Answer)
		}
		if wantSOA := rc == dns.RcodeNameError; (len(r.Ns) == 1) != wantSOA {
			t.Errorf("SetRcode(%s): authority %v", dns.RcodeToString[rc], r.Ns)
		}
	}
	s.SetRcode("example.test", dns.RcodeSuccess)
	if r := query(t, s, "udp", "example.test", dns.TypeMX, false); len(r.Answer) != 1 {
		t.Errorf("after clearing the rcode: %v", r)
	}
}

func TestSetAD(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddTLSA("_25._tcp.mx.example.test", 3, 1, 1, "ab")
	s.AddCNAME("alias.example.test", "_25._tcp.mx.example.test")
	s.SetAD("_25._tcp.MX.example.test", true)

	if r := query(t, s, "udp", "_25._tcp.mx.example.test", dns.TypeTLSA, true); !r.AuthenticatedData {
		t.Error("AD name, DO query: no AD bit")
	}
	if r := query(t, s, "udp", "_25._tcp.mx.example.test", dns.TypeTLSA, false); r.AuthenticatedData {
		t.Error("AD name, query without DO or AD: AD bit set")
	}
	// A query with the AD bit (RFC 6840) rather than DO.
	m := new(dns.Msg).SetQuestion("_25._tcp.mx.example.test.", dns.TypeTLSA)
	m.AuthenticatedData = true
	r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.Addr())
	if err != nil || !r.AuthenticatedData {
		t.Errorf("AD query: %v, %v", r, err)
	}
	// A chain is secure only if every link is.
	if r := query(t, s, "udp", "alias.example.test", dns.TypeTLSA, true); r.AuthenticatedData {
		t.Error("insecure CNAME to a secure name: AD bit set")
	}
	s.SetAD("alias.example.test", true)
	if r := query(t, s, "udp", "alias.example.test", dns.TypeTLSA, true); !r.AuthenticatedData {
		t.Error("secure chain: no AD bit")
	}
	s.SetAD("_25._tcp.mx.example.test", false)
	if r := query(t, s, "udp", "_25._tcp.mx.example.test", dns.TypeTLSA, true); r.AuthenticatedData {
		t.Error("after SetAD false: AD bit set")
	}
	qs := s.Queries()
	if !qs[0].DNSSEC || qs[1].DNSSEC || !qs[2].DNSSEC {
		t.Errorf("Query.DNSSEC wrong: %+v", qs[:3])
	}
}

func TestSetDrop(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddA("mx.example.test", "127.0.0.2")
	s.SetDrop("mx.example.test", true)
	// The short timeout is what is tested: no answer ever comes.
	_, err := exchange(s, "udp", "mx.example.test", dns.TypeA, false, 100*time.Millisecond)
	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Errorf("dropped query: err %v, want a timeout", err)
	}
	if n := s.Count("mx.example.test", dns.TypeA); n != 1 {
		t.Errorf("dropped query logged %d times, want 1", n)
	}
	s.SetDrop("mx.example.test", false)
	if r := query(t, s, "udp", "mx.example.test", dns.TypeA, false); len(r.Answer) != 1 {
		t.Errorf("after SetDrop false: %v", r)
	}
}

func TestSetDelay(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddA("mx.example.test", "127.0.0.2")
	const d = 50 * time.Millisecond
	s.SetDelay("mx.example.test", d)
	start := time.Now()
	r := query(t, s, "udp", "mx.example.test", dns.TypeA, false)
	if elapsed := time.Since(start); elapsed < d {
		t.Errorf("answered after %v, want at least %v", elapsed, d)
	}
	if len(r.Answer) != 1 {
		t.Errorf("delayed answer: %v", r)
	}
	s.SetDelay("mx.example.test", 0)
	query(t, s, "udp", "mx.example.test", dns.TypeA, false)
}

// TestCloseEndsDelayedQuery checks that Close does not wait for a long delay,
// and that the client blocked on it learns at once (over TCP, the connection
// closes).
func TestCloseEndsDelayedQuery(t *testing.T) {
	t.Parallel()
	s, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.SetDelay("slow.example.test", time.Hour)
	errc := make(chan error, 1)
	go func() {
		_, err := exchange(s, "tcp", "slow.example.test", dns.TypeA, false, time.Minute)
		errc <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.WaitQueries(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := <-errc; err == nil {
		t.Error("delayed query answered after Close")
	}
}

func TestWaitQueriesContext(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.WaitQueries(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitQueries with a canceled context: %v", err)
	}
}

func TestTruncation(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	const n = 20
	for i := range n {
		s.AddTXT("big.example.test", fmt.Sprintf("%02d%s", i, strings.Repeat("x", 100)))
	}
	r := query(t, s, "udp", "big.example.test", dns.TypeTXT, false)
	if !r.Truncated || len(r.Answer) >= n {
		t.Errorf("UDP without EDNS0: TC=%v with %d answers, want truncated", r.Truncated, len(r.Answer))
	}
	r = query(t, s, "udp", "big.example.test", dns.TypeTXT, true) // 1232-byte buffer
	if !r.Truncated {
		t.Errorf("UDP with a 1232-byte buffer: TC=%v with %d answers, want truncated", r.Truncated, len(r.Answer))
	}
	r = query(t, s, "tcp", "big.example.test", dns.TypeTXT, false)
	if r.Truncated || len(r.Answer) != n {
		t.Errorf("TCP: TC=%v with %d answers, want all %d", r.Truncated, len(r.Answer), n)
	}
	// Go's resolver retries over TCP.
	txts, err := s.Resolver().LookupTXT(context.Background(), "big.example.test.")
	if err != nil || len(txts) != n {
		t.Errorf("net.Resolver.LookupTXT: %d records, %v", len(txts), err)
	}
}

func TestGoResolver(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	s.AddMX("example.test", 10, "mx.example.test")
	s.AddA("mx.example.test", "127.0.0.2")
	s.AddMX("fail.example.test", 10, "mx.example.test")
	s.SetRcode("fail.example.test", dns.RcodeServerFailure)
	res := s.Resolver()
	ctx := context.Background()

	mxs, err := res.LookupMX(ctx, "example.test.")
	if err != nil || len(mxs) != 1 || mxs[0].Host != "mx.example.test." {
		t.Errorf("LookupMX: %v, %v", mxs, err)
	}
	addrs, err := res.LookupHost(ctx, "mx.example.test.")
	if err != nil || !slices.Equal(addrs, []string{"127.0.0.2"}) {
		t.Errorf("LookupHost: %v, %v", addrs, err)
	}
	var dnsErr *net.DNSError
	_, err = res.LookupMX(ctx, "nxdomain.example.test.")
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("LookupMX of an unknown name: %v, want IsNotFound", err)
	}
	_, err = res.LookupMX(ctx, "mx.example.test.") // NODATA
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("LookupMX of a name without MX: %v, want IsNotFound", err)
	}
	_, err = res.LookupMX(ctx, "fail.example.test.")
	if !errors.As(err, &dnsErr) || dnsErr.IsNotFound {
		t.Errorf("LookupMX with SERVFAIL: %v, want a DNS error that is not IsNotFound", err)
	}
}

// TestConcurrentChanges changes the zone while it is queried; run with -race.
func TestConcurrentChanges(t *testing.T) {
	t.Parallel()
	s := MustStart(t)
	const workers, rounds = 4, 50
	var wg sync.WaitGroup
	for w := range workers {
		name := fmt.Sprintf("h%d.example.test", w)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range rounds {
				s.AddA(name, fmt.Sprintf("127.0.0.%d", i%250+1))
				s.SetAD(name, i%2 == 0)
				s.SetRcode(name, []int{dns.RcodeSuccess, dns.RcodeServerFailure}[i%2])
				s.Remove(name, dns.TypeA)
			}
		}()
		go func() {
			defer wg.Done()
			for range rounds {
				if _, err := exchange(s, "udp", name, dns.TypeA, true, 5*time.Second); err != nil {
					t.Error(err)
					return
				}
				s.Queries()
				s.Count(name, 0)
			}
		}()
	}
	wg.Wait()
	if n := len(s.Queries()); n != workers*rounds {
		t.Errorf("%d queries logged, want %d", n, workers*rounds)
	}
}
