package dnsclient

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
)

// testTimeout bounds each query in tests that expect answers: far above
// what a loopback answer takes, so a slow machine passes.
const testTimeout = 2 * time.Second

// dnsClient returns a client that asks servers, in order.
func dnsClient(servers ...string) *Client {
	return &Client{Servers: servers, Timeout: testTimeout}
}

// scriptedServer serves, over UDP on 127.0.0.1, the reply handle makes of
// each query, or none when it returns nil, for the replies fakedns is too
// correct to give. It returns the address and a count of the queries
// received.
func scriptedServer(t *testing.T, handle func(req *dns.Msg) *dns.Msg) (string, *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var queries atomic.Int32
	started := make(chan struct{})
	srv := &dns.Server{
		PacketConn:        pc,
		NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			queries.Add(1)
			if m := handle(req); m != nil {
				w.WriteMsg(m)
			}
		}),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-errc:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		<-errc
	})
	return pc.LocalAddr().String(), &queries
}

// scriptedDNS is scriptedServer answering each question with the rcode and
// records answer gives: an answer that stops at a CNAME, a CNAME loop
// inside one answer, one failing record type.
func scriptedDNS(t *testing.T, answer func(q dns.Question) (rcode int, rrs []dns.RR)) (string, *atomic.Int32) {
	t.Helper()
	return scriptedServer(t, func(req *dns.Msg) *dns.Msg {
		m := new(dns.Msg).SetReply(req)
		m.Rcode, m.Answer = answer(req.Question[0])
		return m
	})
}

// loopingDNS is a server that answers a.example.test with a CNAME to
// b.example.test and any other name with a CNAME to a.example.test, one
// link per answer.
func loopingDNS(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	return scriptedServer(t, func(req *dns.Msg) *dns.Msg {
		m := new(dns.Msg).SetReply(req)
		q := req.Question[0]
		target := "a.example.test."
		if q.Name == target {
			target = "b.example.test."
		}
		m.Answer = []dns.RR{&dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: target}}
		return m
	})
}

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestClientMXSorted(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 20, "b.example.test")
	d.AddMX("example.test", 10, "z.example.test")
	d.AddMX("example.test", 30, "a.example.test")
	d.AddMX("example.test", 10, "A.Example.Test")
	got, err := dnsClient(d.Addr()).LookupMX(context.Background(), "Example.TEST")
	if err != nil {
		t.Fatal(err)
	}
	want := []MX{{"a.example.test", 10}, {"z.example.test", 10}, {"b.example.test", 20}, {"a.example.test", 30}}
	if !slices.Equal(got, want) {
		t.Errorf("LookupMX = %v, want %v", got, want)
	}
}

func TestClientNullMX(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 0, ".")
	got, err := dnsClient(d.Addr()).LookupMX(context.Background(), "example.test")
	if err != nil || !slices.Equal(got, []MX{{".", 0}}) {
		t.Errorf("LookupMX = %v, %v; want the null MX", got, err)
	}
}

// A domain that exists without MX records: no records, no error (the
// implicit MX applies).
func TestClientNoData(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddA("example.test", "192.0.2.1")
	got, err := dnsClient(d.Addr()).LookupMX(context.Background(), "example.test")
	if err != nil || len(got) != 0 {
		t.Errorf("LookupMX = %v, %v; want none and no error", got, err)
	}
	addrs, err := dnsClient(d.Addr()).LookupAddrs(context.Background(), "example.test")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("192.0.2.1")}) {
		t.Errorf("LookupAddrs = %v, %v; want the A record without AAAA", addrs, err)
	}
}

// checkError checks that err is a *Error for name (fully qualified or
// not) and qtype wrapping kind, and that it can be unwrapped safely.
func checkError(t *testing.T, err error, name, qtype string, kind error) {
	t.Helper()
	var de *Error
	if !errors.As(err, &de) || !errors.Is(err, kind) {
		t.Fatalf("err = %v (%T), want a *Error wrapping %q", err, err, kind)
	}
	if dns.Fqdn(de.Name) != dns.Fqdn(name) || de.Qtype != qtype {
		t.Errorf("Error for %s %s, want %s %s", de.Name, de.Qtype, name, qtype)
	}
	// errors: "It is invalid for an Unwrap method to return an []error
	// containing a nil error value."
	for _, e := range de.Unwrap() {
		if e == nil {
			t.Errorf("%v: Unwrap returns a nil error", err)
		}
	}
	for _, other := range []error{ErrNXDomain, ErrServFail, ErrTimeout, ErrOther} {
		if other != kind && errors.Is(err, other) {
			t.Errorf("err = %v also matches %q", err, other)
		}
	}
}

func TestClientNXDomain(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("other.test", 10, "mx.other.test")
	c := dnsClient(d.Addr())
	_, err := c.LookupMX(context.Background(), "example.test")
	checkError(t, err, "example.test", "MX", ErrNXDomain)
	_, err = c.LookupAddrs(context.Background(), "mx.example.test")
	checkError(t, err, "mx.example.test", "A", ErrNXDomain)
	if n := d.Count("mx.example.test", dns.TypeAAAA); n != 0 {
		t.Errorf("%d AAAA queries after NXDOMAIN for A, want none", n)
	}
}

func TestClientServFail(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	d.SetRcode("example.test", dns.RcodeServerFailure)
	d.SetRcode("mx.example.test", dns.RcodeServerFailure)
	c := dnsClient(d.Addr())
	_, err := c.LookupMX(context.Background(), "example.test")
	checkError(t, err, "example.test", "MX", ErrServFail)
	_, err = c.LookupAddrs(context.Background(), "mx.example.test")
	checkError(t, err, "mx.example.test", "A", ErrServFail)
}

func TestClientRefused(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.SetRcode("example.test", dns.RcodeRefused)
	_, err := dnsClient(d.Addr()).LookupMX(context.Background(), "example.test")
	checkError(t, err, "example.test", "MX", ErrOther)
}

func TestClientTimeout(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	d.SetDrop("example.test", true)
	c := &Client{Servers: []string{d.Addr()}, Timeout: 200 * time.Millisecond}
	start := time.Now()
	_, err := c.LookupMX(context.Background(), "example.test")
	checkError(t, err, "example.test", "MX", ErrTimeout)
	if took := time.Since(start); took < c.Timeout || took > 10*c.Timeout {
		t.Errorf("lookup took %v, want about %v", took, c.Timeout)
	}
}

// A context that ends is a timeout too, and no server is asked after it.
func TestClientContextDone(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := dnsClient(d.Addr(), d.Addr()).LookupMX(ctx, "example.test")
	checkError(t, err, "example.test", "MX", ErrTimeout)
	if n := len(d.Queries()); n != 0 {
		t.Errorf("%d queries after the context ended", n)
	}
}

func TestClientCNAMEChain(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddCNAME("mx.example.test", "one.hosting.test")
	d.AddCNAME("one.hosting.test", "two.hosting.test")
	d.AddA("two.hosting.test", "192.0.2.1")
	d.AddCNAME("example.test", "mail.example.net") // MX lookups follow CNAMEs too
	d.AddMX("mail.example.net", 10, "mx.example.test")
	c := dnsClient(d.Addr())
	addrs, err := c.LookupAddrs(context.Background(), "mx.example.test")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("192.0.2.1")}) {
		t.Errorf("LookupAddrs = %v, %v; want 192.0.2.1", addrs, err)
	}
	mxs, err := c.LookupMX(context.Background(), "example.test")
	if err != nil || !slices.Equal(mxs, []MX{{"mx.example.test", 10}}) {
		t.Errorf("LookupMX = %v, %v", mxs, err)
	}
	if n := d.Count("two.hosting.test", dns.TypeA); n != 0 {
		t.Errorf("%d A queries for the end of a chain that the first answer held", n)
	}
}

// A CNAME to a name without records of the type: no records, no error.
func TestClientCNAMEToNoData(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddCNAME("mx.example.test", "v6only.hosting.test")
	d.AddAAAA("v6only.hosting.test", "2001:db8::1")
	addrs, err := dnsClient(d.Addr()).LookupAddrs(context.Background(), "mx.example.test")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("2001:db8::1")}) {
		t.Errorf("LookupAddrs = %v, %v; want 2001:db8::1", addrs, err)
	}
}

// A server may answer with the CNAME only (as an authoritative server does
// for a target out of its zone): the client asks again for the target.
func TestClientCNAMEFollowUp(t *testing.T) {
	t.Parallel()
	addr, queries := scriptedDNS(t, func(q dns.Question) (int, []dns.RR) {
		switch {
		case q.Name == "mx.example.test." && q.Qtype == dns.TypeA:
			return dns.RcodeSuccess, []dns.RR{rr(t, "mx.example.test. 60 IN CNAME a.hosting.test.")}
		case q.Name == "a.hosting.test." && q.Qtype == dns.TypeA: // partly resolved
			return dns.RcodeSuccess, []dns.RR{
				rr(t, "a.hosting.test. 60 IN CNAME b.hosting.test."),
				rr(t, "b.hosting.test. 60 IN CNAME c.hosting.test."),
			}
		case q.Name == "c.hosting.test." && q.Qtype == dns.TypeA:
			return dns.RcodeSuccess, []dns.RR{rr(t, "c.hosting.test. 60 IN A 192.0.2.7")}
		}
		return dns.RcodeSuccess, nil
	})
	addrs, err := dnsClient(addr).LookupAddrs(context.Background(), "mx.example.test")
	if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("192.0.2.7")}) {
		t.Errorf("LookupAddrs = %v, %v; want 192.0.2.7", addrs, err)
	}
	if n := queries.Load(); n != 4 { // A: mx, a, c; AAAA: mx
		t.Errorf("%d queries, want 4", n)
	}
}

// CNAME loops end in an error, whether the server detects them (fakedns:
// SERVFAIL), puts the loop in one answer, or spreads it over answers.
func TestClientCNAMELoop(t *testing.T) {
	t.Parallel()
	t.Run("server", func(t *testing.T) {
		t.Parallel()
		d := fakedns.MustStart(t)
		d.AddCNAME("a.example.test", "b.example.test")
		d.AddCNAME("b.example.test", "a.example.test")
		_, err := dnsClient(d.Addr()).LookupAddrs(context.Background(), "a.example.test")
		checkError(t, err, "a.example.test", "A", ErrServFail)
	})
	t.Run("one answer", func(t *testing.T) {
		t.Parallel()
		addr, _ := scriptedDNS(t, func(q dns.Question) (int, []dns.RR) {
			return dns.RcodeSuccess, []dns.RR{
				rr(t, "a.example.test. 60 IN CNAME b.example.test."),
				rr(t, "b.example.test. 60 IN CNAME a.example.test."),
			}
		})
		_, err := dnsClient(addr).LookupMX(context.Background(), "a.example.test")
		checkError(t, err, "a.example.test", "MX", ErrOther)
	})
	t.Run("across answers", func(t *testing.T) {
		t.Parallel()
		addr, queries := loopingDNS(t)
		_, err := dnsClient(addr).LookupMX(context.Background(), "a.example.test")
		checkError(t, err, "a.example.test", "MX", ErrOther)
		if n := queries.Load(); n > maxCNAMEs+1 {
			t.Errorf("%d queries, want at most %d", n, maxCNAMEs+1)
		}
	})
	t.Run("long chain", func(t *testing.T) {
		t.Parallel()
		// One answer holding a chain of 2*maxCNAMEs distinct names.
		addr, _ := scriptedDNS(t, func(q dns.Question) (int, []dns.RR) {
			var rrs []dns.RR
			for i := range 2 * maxCNAMEs {
				rrs = append(rrs, rr(t, strings.Repeat("x", i)+"a.example.test. 60 IN CNAME "+strings.Repeat("x", i+1)+"a.example.test."))
			}
			return dns.RcodeSuccess, append(rrs, rr(t, strings.Repeat("x", 2*maxCNAMEs)+"a.example.test. 60 IN MX 10 mx.example.test."))
		})
		_, err := dnsClient(addr).LookupMX(context.Background(), "a.example.test")
		checkError(t, err, "a.example.test", "MX", ErrOther)
	})
}

func TestClientAddrs(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddA("mx.example.test", "192.0.2.1")
	d.AddA("mx.example.test", "192.0.2.2")
	d.AddAAAA("mx.example.test", "2001:db8::1")
	d.AddRR(&dns.AAAA{ // IPv4-mapped: unmapped
		Hdr:  dns.RR_Header{Name: "mx.example.test.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60},
		AAAA: net.ParseIP("::ffff:192.0.2.3"),
	})
	addrs, err := dnsClient(d.Addr()).LookupAddrs(context.Background(), "MX.example.test.")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"),
		netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.0.2.3")}
	if !slices.Equal(addrs, want) {
		t.Errorf("LookupAddrs = %v, want %v", addrs, want)
	}
}

// One address family failing is not fatal when the other answers; both
// failing is.
func TestClientAddrsOneFamilyFails(t *testing.T) {
	t.Parallel()
	addr, _ := scriptedDNS(t, func(q dns.Question) (int, []dns.RR) {
		switch {
		case q.Name == "v4.example.test." && q.Qtype == dns.TypeA:
			return dns.RcodeSuccess, []dns.RR{rr(t, "v4.example.test. 60 IN A 192.0.2.1")}
		case q.Name == "v6.example.test." && q.Qtype == dns.TypeAAAA:
			return dns.RcodeSuccess, []dns.RR{rr(t, "v6.example.test. 60 IN AAAA 2001:db8::1")}
		}
		return dns.RcodeServerFailure, nil
	})
	c := dnsClient(addr)
	for name, want := range map[string]string{"v4.example.test": "192.0.2.1", "v6.example.test": "2001:db8::1"} {
		addrs, err := c.LookupAddrs(context.Background(), name)
		if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr(want)}) {
			t.Errorf("LookupAddrs(%s) = %v, %v; want %s", name, addrs, err, want)
		}
	}
	_, err := c.LookupAddrs(context.Background(), "none.example.test")
	checkError(t, err, "none.example.test", "A", ErrServFail)
}

// An answer too large for UDP is truncated, and asked again over TCP.
func TestClientTCPFallback(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	var want []netip.Addr
	for i := range 200 {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
		d.AddA("big.example.test", a.String())
		want = append(want, a)
	}
	addrs, err := dnsClient(d.Addr()).LookupAddrs(context.Background(), "big.example.test")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	if !slices.Equal(addrs, want) {
		t.Errorf("got %d addresses, want %d", len(addrs), len(want))
	}
	var nets []string
	for _, q := range d.Queries() {
		if q.Type == dns.TypeA {
			nets = append(nets, q.Net)
		}
	}
	if !slices.Equal(nets, []string{"udp", "tcp"}) {
		t.Errorf("A queries over %q, want udp then tcp", nets)
	}
}

// deadAddr returns a loopback UDP address that nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// A server that does not answer, or fails, is skipped for the next.
func TestClientFailover(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	failing := fakedns.MustStart(t)
	failing.SetRcode("example.test", dns.RcodeServerFailure)
	for name, first := range map[string]string{"dead port": deadAddr(t), "SERVFAIL": failing.Addr()} {
		mxs, err := dnsClient(first, d.Addr()).LookupMX(context.Background(), "example.test")
		if err != nil || !slices.Equal(mxs, []MX{{"mx.example.test", 10}}) {
			t.Errorf("%s first: LookupMX = %v, %v", name, mxs, err)
		}
	}
	// NXDOMAIN is an answer: the next server is not asked.
	other := fakedns.MustStart(t)
	_, err := dnsClient(other.Addr(), d.Addr()).LookupMX(context.Background(), "example.test")
	checkError(t, err, "example.test", "MX", ErrNXDomain)
	if n := d.Count("example.test", dns.TypeMX); n != 2 {
		t.Errorf("second server asked %d times, want 2 (not after NXDOMAIN)", n)
	}
}

func TestClientNoServers(t *testing.T) {
	t.Parallel()
	_, err := dnsClient().LookupMX(context.Background(), "example.test")
	checkError(t, err, "example.test", "MX", ErrOther)
}

// LookupTXT joins each record's character-strings (split by DNS at 255
// bytes), keeps records apart, and gives back the bytes as published,
// including those that miekg/dns escapes.
func TestClientTXT(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	long := strings.Repeat("a", 300) // two character-strings on the wire
	d.AddTXT("_mta-sts.example.test", "v=STSv1; ", "id=20240101T000000;")
	d.AddTXT("_mta-sts.example.test", long)
	d.AddTXT("odd.example.test", `q"uote \back`+"\x01\xff end")
	c := dnsClient(d.Addr())
	got, _, err := c.LookupTXT(context.Background(), "_MTA-STS.example.test.")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	want := []string{long, "v=STSv1; id=20240101T000000;"}
	if !slices.Equal(got, want) {
		t.Errorf("LookupTXT = %q, want %q", got, want)
	}
	got, _, err = c.LookupTXT(context.Background(), "odd.example.test")
	if want := `q"uote \back` + "\x01\xff end"; err != nil || len(got) != 1 || got[0] != want {
		t.Errorf("LookupTXT = %q, %v; want [%q]", got, err, want)
	}
}

func TestClientTXTNone(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddA("example.test", "192.0.2.1")
	d.AddCNAME("_mta-sts.alias.test", "_mta-sts.example.test")
	d.AddTXT("_mta-sts.example.test", "v=STSv1; id=1")
	d.SetRcode("_mta-sts.broken.test", dns.RcodeServerFailure)
	c := dnsClient(d.Addr())
	ctx := context.Background()
	if got, _, err := c.LookupTXT(ctx, "example.test"); err != nil || len(got) != 0 {
		t.Errorf("NODATA: LookupTXT = %q, %v; want none and no error", got, err)
	}
	if got, _, err := c.LookupTXT(ctx, "_mta-sts.alias.test"); err != nil || !slices.Equal(got, []string{"v=STSv1; id=1"}) {
		t.Errorf("CNAME: LookupTXT = %q, %v", got, err)
	}
	_, _, err := c.LookupTXT(ctx, "_mta-sts.nowhere.test")
	checkError(t, err, "_mta-sts.nowhere.test", "TXT", ErrNXDomain)
	_, _, err = c.LookupTXT(ctx, "_mta-sts.broken.test")
	checkError(t, err, "_mta-sts.broken.test", "TXT", ErrServFail)
}

// An answer's TTL is the smallest of the records it used, CNAMEs included;
// an answer without records takes the SOA's negative TTL (RFC 2308), which
// NXDOMAIN reports beside its error.
func TestClientTTL(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	mustAdd(t, d,
		"_mta-sts.example.test. 120 IN TXT \"v=STSv1; id=1\"",
		"_mta-sts.example.test. 900 IN TXT \"other\"",
		"_mta-sts.alias.test. 30 IN CNAME _mta-sts.example.test.",
		"soa.test. 600 IN SOA ns.soa.test. hostmaster.soa.test. 1 3600 600 86400 20",
		"soa.test. 600 IN A 192.0.2.1",
	)
	c := dnsClient(d.Addr())
	ctx := context.Background()
	for _, tt := range []struct {
		name    string
		want    time.Duration
		wantErr error
	}{
		{"_mta-sts.example.test", 120 * time.Second, nil},
		{"_mta-sts.alias.test", 30 * time.Second, nil},
		{"soa.test", 20 * time.Second, nil},                      // NODATA: the SOA's minimum
		{"_mta-sts.soa.test", 20 * time.Second, ErrNXDomain},     // NXDOMAIN under that SOA
		{"_mta-sts.nowhere.test", 60 * time.Second, ErrNXDomain}, // fakedns's made-up SOA: 60 s
	} {
		_, ttl, err := c.LookupTXT(ctx, tt.name)
		if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) || ttl != tt.want {
			t.Errorf("LookupTXT(%s) TTL = %v, %v; want %v, %v", tt.name, ttl, err, tt.want, tt.wantErr)
		}
	}
}

func mustAdd(t *testing.T, d *fakedns.Server, records ...string) {
	t.Helper()
	if err := d.Add(records...); err != nil {
		t.Fatal(err)
	}
}

func TestUnescapeTXT(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		``:          ``,
		`plain`:     `plain`,
		`a\"b`:      `a"b`,
		`a\\b`:      `a\b`,
		`\001\255x`: "\x01\xffx",
		`\999`:      `999`, // not a byte: the backslash quotes the digit
		`\12`:       `12`,
		`end\`:      `end\`,
	} {
		if got := unescapeTXT(in); got != want {
			t.Errorf("unescapeTXT(%q) = %q, want %q", in, got, want)
		}
	}
}
