package dnsclient

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
)

// An answer whose question is not the one asked is refused, and the next
// server is asked: a misdirected or forged answer must not pass for the
// real one.
func TestLookupOtherQuestion(t *testing.T) {
	t.Parallel()
	good := fakedns.MustStart(t)
	good.AddA("mx.example.test", "192.0.2.1")
	for name, change := range map[string]func(q *dns.Question){
		"name":  func(q *dns.Question) { q.Name = "evil.example.test." },
		"type":  func(q *dns.Question) { q.Qtype = dns.TypeAAAA },
		"class": func(q *dns.Question) { q.Qclass = dns.ClassCHAOS },
		"none":  nil,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			forged := rr(t, "mx.example.test. 60 IN A 198.51.100.66")
			bad, _ := scriptedServer(t, func(req *dns.Msg) *dns.Msg {
				m := new(dns.Msg).SetReply(req)
				m.Answer = []dns.RR{forged}
				if change == nil {
					m.Question = nil
				} else {
					change(&m.Question[0])
				}
				return m
			})
			_, err := dnsClient(bad).Lookup(context.Background(), "mx.example.test", dns.TypeA)
			checkError(t, err, "mx.example.test", "A", ErrOther)
			if !strings.Contains(err.Error(), "answered another question") {
				t.Errorf("err = %v, want it to say why", err)
			}
			a, err := dnsClient(bad, good.Addr()).Lookup(context.Background(), "mx.example.test", dns.TypeA)
			if err != nil || len(a.Records) != 1 || a.Records[0].(*dns.A).A.String() != "192.0.2.1" {
				t.Errorf("bad server first: Lookup = %+v, %v; want the good server's 192.0.2.1", a, err)
			}
		})
	}
}

// Cancelling the context ends a query to a server that never answers at
// once, not at the query's timeout.
func TestLookupCancelSilentServer(t *testing.T) {
	t.Parallel()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c := &Client{Servers: []string{silent.LocalAddr().String()}, Timeout: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Lookup(ctx, "example.test", dns.TypeMX)
		done <- err
	}()
	// Cancel once the query is in flight.
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := silent.ReadFrom(make([]byte, 512)); err != nil {
		t.Fatalf("no query reached the silent server: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		checkError(t, err, "example.test", "MX", ErrTimeout)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want it to wrap context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Lookup did not return after its context was cancelled")
	}
}

// chainServer answers "mx.example.test. A" with a CNAME only, and the
// target's query with its address, setting AD on the first answer if adFirst
// and on the second if adSecond. It records whether each query asked for
// DNSSEC (DO and AD bits) in the slice that asked returns.
func chainServer(t *testing.T, adFirst, adSecond bool) (addr string, asked func() []bool) {
	t.Helper()
	cname := rr(t, "mx.example.test. 60 IN CNAME a.hosting.test.")
	a := rr(t, "a.hosting.test. 60 IN A 192.0.2.7")
	var mu sync.Mutex
	var dnssec []bool
	addr, _ = scriptedServer(t, func(req *dns.Msg) *dns.Msg {
		opt := req.IsEdns0()
		mu.Lock()
		dnssec = append(dnssec, req.AuthenticatedData && opt != nil && opt.Do())
		mu.Unlock()
		m := new(dns.Msg).SetReply(req)
		switch req.Question[0].Name {
		case "mx.example.test.":
			m.Answer = []dns.RR{cname}
			m.AuthenticatedData = adFirst
		case "a.hosting.test.":
			m.Answer = []dns.RR{a}
			m.AuthenticatedData = adSecond
		default:
			m.Rcode = dns.RcodeNameError
		}
		return m
	})
	return addr, func() []bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(dnssec)
	}
}

// A lookup is secure only if the client asked for DNSSEC and every answer
// on its CNAME chain had the AD bit.
func TestLookupSecureChain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name              string
		dnssec            bool
		adFirst, adSecond bool
		wantSecure        bool
	}{
		{"both validated", true, true, true, true},
		{"first only", true, true, false, false},
		{"second only", true, false, true, false},
		{"neither", true, false, false, false},
		{"DNSSEC off", false, true, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr, asked := chainServer(t, tc.adFirst, tc.adSecond)
			c := &Client{Servers: []string{addr}, Timeout: testTimeout, DNSSEC: tc.dnssec}
			a, err := c.Lookup(context.Background(), "MX.example.test", dns.TypeA)
			if err != nil {
				t.Fatal(err)
			}
			if a.Secure != tc.wantSecure || a.Name != "a.hosting.test." || a.NXDomain || len(a.Records) != 1 {
				t.Errorf("Lookup = %+v; want Secure %v, the target's one record", a, tc.wantSecure)
			}
			if got := asked(); !slices.Equal(got, []bool{tc.dnssec, tc.dnssec}) {
				t.Errorf("queries asked for DNSSEC: %v, want %v twice", got, tc.dnssec)
			}
		})
	}
}

// Lookup reports a name that does not exist as an answer, with the chain's
// last name; the record methods as an error wrapping ErrNXDomain that names
// the name asked and where its chain ended.
func TestLookupNXDomain(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddCNAME("alias.example.test", "gone.hosting.test")
	d.AddA("other.example.test", "192.0.2.1")
	d.SetAD("alias.example.test", true)
	d.SetAD("gone.hosting.test", true)
	c := &Client{Servers: []string{d.Addr()}, Timeout: testTimeout, DNSSEC: true}
	ctx := context.Background()

	a, err := c.Lookup(ctx, "missing.example.test", dns.TypeA)
	if err != nil || !a.NXDomain || a.Name != "missing.example.test." || len(a.Records) != 0 || a.Secure {
		t.Errorf("Lookup(missing) = %+v, %v; want NXDomain, insecure, no error", a, err)
	}
	a, err = c.Lookup(ctx, "alias.example.test", dns.TypeA)
	if err != nil || !a.NXDomain || a.Name != "gone.hosting.test." || !a.Secure {
		t.Errorf("Lookup(alias) = %+v, %v; want a validated NXDomain at the CNAME target", a, err)
	}
	_, err = c.LookupAddrs(ctx, "alias.example.test")
	checkError(t, err, "alias.example.test", "A", ErrNXDomain)
	if !strings.Contains(err.Error(), "gone.hosting.test") {
		t.Errorf("err = %v, want it to name the chain's end", err)
	}
}

// A loop over answers, each a CNAME to the next name, costs at most
// maxCNAMEs+1 queries, whatever the query type, and asking for the CNAME
// itself follows nothing.
func TestLookupCNAMELoopBounded(t *testing.T) {
	t.Parallel()
	addr, queries := loopingDNS(t)
	c := &Client{Servers: []string{addr}, Timeout: testTimeout, DNSSEC: true}
	_, err := c.Lookup(context.Background(), "_25._tcp.a.example.test", dns.TypeTLSA)
	checkError(t, err, "_25._tcp.a.example.test", "TLSA", ErrOther)
	if n := queries.Load(); n < 2 || n > maxCNAMEs+1 {
		t.Errorf("%d queries, want 2 to %d", n, maxCNAMEs+1)
	}
	a, err := c.Lookup(context.Background(), "a.example.test", dns.TypeCNAME)
	if err != nil || len(a.Records) != 1 || a.Name != "a.example.test." {
		t.Errorf("Lookup CNAME = %+v, %v; want the one CNAME record", a, err)
	}
}

// Errors read without the trailing dot and unwrap to their kind and cause.
func TestErrorString(t *testing.T) {
	t.Parallel()
	cause := errors.New("boom")
	err := error(&Error{Name: "example.test.", Qtype: "MX", Kind: ErrServFail, Err: cause})
	if got, want := err.Error(), "example.test MX: server failure: boom"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, ErrServFail) || !errors.Is(err, cause) || errors.Is(err, ErrTimeout) {
		t.Errorf("%v unwraps wrongly", err)
	}
}

// New keeps the servers it is given, with DNSSEC off.
func TestNew(t *testing.T) {
	t.Parallel()
	c, err := New([]string{"127.0.0.1:5353", "[::1]:53"}, time.Second)
	if err != nil || !slices.Equal(c.Servers, []string{"127.0.0.1:5353", "[::1]:53"}) || c.Timeout != time.Second || c.DNSSEC {
		t.Errorf("New = %+v, %v", c, err)
	}
	if (&Client{}).timeout() != DefaultTimeout {
		t.Error("a zero Timeout is not DefaultTimeout")
	}
}
