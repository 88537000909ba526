package dane

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
)

// testTimeout bounds each query in tests that expect answers: far above
// what a loopback answer takes, so a slow CI machine passes.
const testTimeout = 5 * time.Second

var fixedNow = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// newChecker returns a trusted checker asking s.
func newChecker(s *fakedns.Server) *Checker {
	return &Checker{
		Servers: []string{s.Addr()},
		Timeout: testTimeout,
		Trusted: true,
		Now:     func() time.Time { return fixedNow },
	}
}

// sha256Hex and sha512Hex make digests of the right length to publish.
func sha256Hex(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func sha512Hex(s string) string {
	d := sha512.Sum512([]byte(s))
	return hex.EncodeToString(d[:])
}

// secureDomain publishes domain's MX hosts, by preference 10, 20, ..., each
// with an A record on its own loopback address, all DNSSEC-validated.
func secureDomain(s *fakedns.Server, domain string, hosts ...string) {
	s.SetAD(domain, true)
	for i, h := range hosts {
		s.AddMX(domain, uint16(10*(i+1)), h)
		s.AddA(h, fmt.Sprintf("127.0.0.%d", 10+i))
		s.SetAD(h, true)
	}
}

// tlsaName is the TLSA owner name for host on port 25.
func tlsaName(host string) string { return "_25._tcp." + host }

// secureTLSA publishes a validated TLSA record for host, port 25.
func secureTLSA(s *fakedns.Server, host string, usage, selector, mtype uint8, data string) {
	s.AddTLSA(tlsaName(host), usage, selector, mtype, data)
	s.SetAD(tlsaName(host), true)
}

func statuses(r DomainTLSA) []HostStatus {
	var out []HostStatus
	for _, h := range r.Hosts {
		out = append(out, h.Status)
	}
	return out
}

func hostNames(r DomainTLSA) []string {
	var out []string
	for _, h := range r.Hosts {
		out = append(out, h.Host)
	}
	return out
}

// wantResult checks the verdict and the hosts' statuses, and logs the
// result for failing tests.
func wantResult(t *testing.T, r DomainTLSA, v Verdict, hosts ...HostStatus) {
	t.Helper()
	if r.Verdict != v || !slices.Equal(statuses(r), hosts) {
		t.Fatalf("verdict %v, hosts %v, detail %q, err %v\nwant verdict %v, hosts %v\nhosts: %+v",
			r.Verdict, statuses(r), r.Detail, r.Err, v, hosts, r.Hosts)
	}
}

func TestCheckDANEOnly(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test")
	ee := sha256Hex("mx1 key")
	ta := sha256Hex("issuer cert")
	secureTLSA(s, "mx1.example.test", 3, 1, 1, ee)
	secureTLSA(s, "mx2.example.test", 2, 0, 1, ta)

	c := newChecker(s)
	r := c.Check(t.Context(), "Example.TEST.")
	wantResult(t, r, DANEOnly, Usable, Usable)
	if r.Domain != "example.test" || !r.MXSecure || r.Insecure || r.Err != nil || !r.CheckedAt.Equal(fixedNow) {
		t.Errorf("result %+v", r)
	}
	if got := hostNames(r); !slices.Equal(got, []string{"mx1.example.test", "mx2.example.test"}) {
		t.Errorf("hosts %v, want by preference", got)
	}
	if h := r.Hosts[0]; h.Base != "mx1.example.test" || !slices.Equal(h.Records, []string{"3 1 1 " + ee}) {
		t.Errorf("mx1: %+v", h)
	}
	if h := r.Hosts[1]; !slices.Equal(h.Records, []string{"2 0 1 " + ta}) {
		t.Errorf("mx2: %+v", h)
	}
	// Every query asked for DNSSEC: without DO or AD, a validating
	// resolver does not say what it validated.
	for _, q := range s.Queries() {
		if !q.DNSSEC {
			t.Errorf("query %s %s without DO/AD", q.Name, dns.TypeToString[q.Type])
		}
	}
}

// A verdict lasts as long as the shortest-lived answer it rests on, so that
// a TLSA RRset withdrawn or changed is seen when its TTL runs out; a
// failure has no TTL of its own.
func TestCheckTTL(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test") // TTL 300
	if err := s.Add(
		// The absent AAAA records take the SOA's negative TTL.
		"example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 3600",
		"_25._tcp.mx1.example.test. 120 IN TLSA 3 1 1 "+sha256Hex("k1"),
		"_25._tcp.mx2.example.test. 3600 IN TLSA 3 1 1 "+sha256Hex("k2"),
	); err != nil {
		t.Fatal(err)
	}
	s.SetAD(tlsaName("mx1.example.test"), true)
	s.SetAD(tlsaName("mx2.example.test"), true)
	c := newChecker(s)
	r := c.Check(t.Context(), "example.test")
	wantResult(t, r, DANEOnly, Usable, Usable)
	if r.TTL != 120*time.Second || r.Hosts[0].TTL != 120*time.Second || r.Hosts[1].TTL != 300*time.Second {
		t.Errorf("TTL %v, hosts %v and %v; want 2m0s, 2m0s and 5m0s (the A record's)", r.TTL, r.Hosts[0].TTL, r.Hosts[1].TTL)
	}
	s.SetRcode(tlsaName("mx2.example.test"), dns.RcodeServerFailure)
	if r := c.Check(t.Context(), "example.test"); r.Verdict != TempFail || r.TTL != 0 {
		t.Errorf("failure: verdict %v, TTL %v; want TempFail, 0", r.Verdict, r.TTL)
	}
}

func TestCheckTLSAWithoutAD(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test")
	for _, h := range []string{"mx1.example.test", "mx2.example.test"} {
		s.AddTLSA(tlsaName(h), 3, 1, 1, sha256Hex(h)) // no SetAD
	}
	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, NoDANE, Insecure, Insecure)
	if !r.Insecure || !r.MXSecure {
		t.Errorf("Insecure %v, MXSecure %v; want true, true", r.Insecure, r.MXSecure)
	}
	if len(r.Hosts[0].Records) != 0 {
		t.Errorf("records of an insecure answer reported: %v", r.Hosts[0].Records)
	}
}

func TestCheckMXWithoutAD(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test")
	secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("k"))
	s.SetAD("example.test", false)

	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, NoDANE)
	if r.MXSecure || !r.Insecure || !strings.Contains(r.Detail, "2.2.1") {
		t.Errorf("result %+v", r)
	}
	// RFC 7672 section 2.2.1: with an insecure MX RRset the hosts are not
	// looked at.
	if n := s.Count(tlsaName("mx1.example.test"), dns.TypeTLSA); n != 0 {
		t.Errorf("%d TLSA queries after an insecure MX answer", n)
	}
}

func TestCheckUnusableTLSA(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		publish func(s *fakedns.Server, host string)
		wantErr error
	}{
		{"PKIX usages only", func(s *fakedns.Server, host string) {
			secureTLSA(s, host, 0, 0, 1, sha256Hex("ca"))
			secureTLSA(s, host, 1, 1, 1, sha256Hex("ee"))
		}, ErrPKIXUsage},
		{"SHA-256 with 64 bytes", func(s *fakedns.Server, host string) {
			secureTLSA(s, host, 3, 1, 1, sha512Hex("k"))
		}, ErrDigestLength},
		{"SHA-512 with 32 bytes", func(s *fakedns.Server, host string) {
			secureTLSA(s, host, 3, 1, 2, sha256Hex("k"))
		}, ErrDigestLength},
		{"unknown matching type", func(s *fakedns.Server, host string) {
			secureTLSA(s, host, 3, 1, 7, sha256Hex("k"))
		}, ErrMatchingType},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := fakedns.MustStart(t)
			secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test")
			tc.publish(s, "mx1.example.test")
			tc.publish(s, "mx2.example.test")

			r := newChecker(s).Check(t.Context(), "example.test")
			wantResult(t, r, EncryptOnly, Unusable, Unusable)
			h := r.Hosts[0]
			if len(h.Records) == 0 || h.Base != "mx1.example.test" {
				t.Errorf("unusable host %+v: want its records listed", h)
			}
			if err := firstRecordErr(t, h.Records); !errors.Is(err, tc.wantErr) {
				t.Errorf("record error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// firstRecordErr parses presentation-form records back and returns the
// first one's usability error.
func firstRecordErr(t *testing.T, recs []string) error {
	t.Helper()
	rr, err := dns.NewRR("x.test. IN TLSA " + recs[0])
	if err != nil {
		t.Fatal(err)
	}
	return recordFromRR(rr.(*dns.TLSA)).Usable()
}

func TestCheckUsableAmongUnusable(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test")
	secureTLSA(s, "mx1.example.test", 1, 1, 1, sha256Hex("pkix"))
	secureTLSA(s, "mx1.example.test", 3, 1, 1, sha512Hex("bad length"))
	secureTLSA(s, "mx1.example.test", 3, 1, 2, sha512Hex("good"))

	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, DANEOnly, Usable)
	if n := len(r.Hosts[0].Records); n != 3 {
		t.Errorf("%d records listed, want all 3", n)
	}
	if !strings.Contains(r.Hosts[0].Detail, "1 of 3") {
		t.Errorf("detail %q", r.Hosts[0].Detail)
	}
}

func TestCheckValidatedDenial(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		deny   func(s *fakedns.Server, name string)
		status HostStatus
	}{
		// The name does not exist: NXDOMAIN.
		{"NXDOMAIN", func(s *fakedns.Server, name string) {}, NoTLSA},
		{"forced NXDOMAIN", func(s *fakedns.Server, name string) { s.SetRcode(name, dns.RcodeNameError) }, NoTLSA},
		// The name exists with other records: NODATA.
		{"NODATA", func(s *fakedns.Server, name string) { s.AddTXT(name, "not a TLSA record") }, NoTLSA},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := fakedns.MustStart(t)
			secureDomain(s, "example.test", "mx1.example.test")
			tc.deny(s, tlsaName("mx1.example.test"))
			s.SetAD(tlsaName("mx1.example.test"), true)

			r := newChecker(s).Check(t.Context(), "example.test")
			wantResult(t, r, NoDANE, tc.status)
			if r.Insecure || r.Err != nil {
				t.Errorf("a validated denial is not insecure: %+v", r)
			}
			// Without AD the same denial proves nothing.
			s.SetAD(tlsaName("mx1.example.test"), false)
			r = newChecker(s).Check(t.Context(), "example.test")
			wantResult(t, r, NoDANE, Insecure)
			if !r.Insecure {
				t.Errorf("an unvalidated denial must be insecure: %+v", r)
			}
		})
	}
}

func TestCheckMixed(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test", "mx3.example.test")
	secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("k"))
	s.SetAD(tlsaName("mx2.example.test"), true)                   // validated denial
	secureTLSA(s, "mx3.example.test", 0, 0, 1, sha256Hex("pkix")) // unusable

	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, MixedDANE, Usable, NoTLSA, Unusable)
}

func TestCheckUnusableAndNoTLSA(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test")
	secureTLSA(s, "mx1.example.test", 1, 1, 1, sha256Hex("pkix"))
	s.SetAD(tlsaName("mx2.example.test"), true)

	// No host can be authenticated, but one publishes TLSA records: TLS
	// stays mandatory (RFC 7672 section 2.2), never plaintext.
	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, EncryptOnly, Unusable, NoTLSA)
}

func TestCheckTLSAServfail(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test")
	secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("k"))
	secureTLSA(s, "mx2.example.test", 3, 1, 1, sha256Hex("k2"))
	s.SetRcode(tlsaName("mx2.example.test"), dns.RcodeServerFailure)

	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, TempFail, Usable, Failure)
	if !errors.Is(r.Err, dnsclient.ErrServFail) || !errors.Is(r.Hosts[1].Err, dnsclient.ErrServFail) {
		t.Errorf("err %v, host err %v; want dnsclient.ErrServFail", r.Err, r.Hosts[1].Err)
	}
	var le *dnsclient.Error
	if !errors.As(r.Err, &le) || le.Qtype != "TLSA" || !strings.HasPrefix(le.Name, "_25._tcp.mx2.example.test") {
		t.Errorf("err %#v", r.Err)
	}
}

func TestCheckServfailElsewhere(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		fail string
	}{
		{"MX", "example.test"},
		{"address", "mx1.example.test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := fakedns.MustStart(t)
			secureDomain(s, "example.test", "mx1.example.test")
			secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("k"))
			s.SetRcode(tc.fail, dns.RcodeServerFailure)
			r := newChecker(s).Check(t.Context(), "example.test")
			if r.Verdict != TempFail || !errors.Is(r.Err, dnsclient.ErrServFail) {
				t.Fatalf("verdict %v, err %v; want TempFail, dnsclient.ErrServFail", r.Verdict, r.Err)
			}
		})
	}
}

func TestCheckTimeout(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test")
	secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("k"))
	secureTLSA(s, "mx2.example.test", 3, 1, 1, sha256Hex("k2"))
	s.SetDrop(tlsaName("mx2.example.test"), true)

	const timeout = 300 * time.Millisecond
	c := newChecker(s)
	c.Timeout = timeout
	start := time.Now()
	r := c.Check(t.Context(), "example.test")
	elapsed := time.Since(start)
	wantResult(t, r, TempFail, Usable, Failure)
	if !errors.Is(r.Err, dnsclient.ErrTimeout) {
		t.Errorf("err %v, want dnsclient.ErrTimeout", r.Err)
	}
	// One server, one dropped query: the check ends with that query's
	// timeout (hosts are checked in parallel), not later.
	if elapsed < timeout || elapsed > timeout+2*time.Second {
		t.Errorf("took %v with a %v timeout", elapsed, timeout)
	}
}

func TestCheckContextDeadline(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test")
	s.SetDrop(tlsaName("mx1.example.test"), true)

	c := newChecker(s)
	c.Timeout = time.Hour // the caller's deadline must bound the check
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := c.Check(ctx, "example.test")
	if r.Verdict != TempFail || !errors.Is(r.Err, dnsclient.ErrTimeout) {
		t.Fatalf("verdict %v, err %v; want TempFail, dnsclient.ErrTimeout", r.Verdict, r.Err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v past a 200ms deadline", d)
	}
}

func TestCheckContextCancel(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test")
	s.SetDrop(tlsaName("mx1.example.test"), true)

	c := newChecker(s)
	c.Timeout = time.Hour
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan DomainTLSA, 1)
	go func() { done <- c.Check(ctx, "example.test") }()
	// Wait for the dropped TLSA query (MX, A, AAAA come first), then cancel:
	// the check must end at once, not at its hour-long timeout.
	wctx, wcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer wcancel()
	for n := 1; s.Count(tlsaName("mx1.example.test"), dns.TypeTLSA) == 0; n++ {
		if _, err := s.WaitQueries(wctx, n); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	select {
	case r := <-done:
		if r.Verdict != TempFail {
			t.Fatalf("verdict %v after cancel, want TempFail", r.Verdict)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Check did not return after its context was cancelled")
	}
}

func TestCheckUntrusted(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test")
	secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("k"))

	tests := []struct {
		name string
		c    *Checker
	}{
		{"Trusted false", &Checker{Servers: []string{s.Addr()}, Timeout: testTimeout}},
		// Trusted is not honoured for a resolver reached over the network,
		// whose AD bit an attacker on the path could set.
		{"non-loopback server", &Checker{Servers: []string{s.Addr(), "192.0.2.53:53"}, Timeout: testTimeout, Trusted: true}},
		{"no servers", &Checker{Timeout: testTimeout, Trusted: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.c.Check(t.Context(), "example.test")
			wantResult(t, r, NoDANE)
			if r.Detail != "resolver not trusted for DNSSEC" || !errors.Is(r.Err, ErrUntrusted) || !r.Insecure {
				t.Errorf("result %+v", r)
			}
			h := tc.c.CheckHost(t.Context(), "mx1.example.test", 25)
			if h.Status != Insecure || h.Detail != "resolver not trusted for DNSSEC" {
				t.Errorf("CheckHost %+v", h)
			}
		})
	}
	if n := len(s.Queries()); n != 0 {
		t.Errorf("an untrusted checker made %d queries", n)
	}
}

func TestCheckInsecureAddress(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test", "mx2.example.test")
	secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("k1"))
	secureTLSA(s, "mx2.example.test", 3, 1, 1, sha256Hex("k2"))
	s.SetAD("mx2.example.test", false)

	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, MixedDANE, Usable, Insecure)
	if !strings.Contains(r.Hosts[1].Detail, "address") {
		t.Errorf("detail %q", r.Hosts[1].Detail)
	}
	// RFC 7672 section 2.2.2: no TLSA lookup for a host with insecure
	// addresses.
	if n := s.Count(tlsaName("mx2.example.test"), dns.TypeTLSA); n != 0 {
		t.Errorf("%d TLSA queries for a host with insecure addresses", n)
	}

	// The only MX host insecure: no DANE at all.
	s.SetAD("mx1.example.test", false)
	r = newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, NoDANE, Insecure, Insecure)
	if !r.Insecure {
		t.Error("Insecure not set")
	}
}

func TestCheckNoAddress(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test")
	secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("k"))
	s.AddMX("example.test", 5, "gone.example.test") // no address records
	s.SetAD("gone.example.test", true)

	// A host no client can connect to does not stop the others' DANE.
	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, DANEOnly, NoAddress, Usable)

	s.Remove("mx1.example.test", dns.TypeA)
	r = newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, NoDANE, NoAddress, NoAddress)
}

func TestCheckDomainCases(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	// No MX: the domain is its own host (implicit MX).
	s.AddA("implicit.test", "127.0.0.20")
	s.SetAD("implicit.test", true)
	secureTLSA(s, "implicit.test", 3, 1, 1, sha256Hex("k"))
	// Null MX.
	s.AddMX("null.test", 0, ".")
	s.SetAD("null.test", true)
	// Does not exist, validated.
	s.SetAD("nx.test", true)
	// A "." among real hosts is ignored.
	secureDomain(s, "dot.test", "mx.dot.test")
	s.AddMX("dot.test", 0, ".")
	secureTLSA(s, "mx.dot.test", 3, 1, 1, sha256Hex("k"))
	// The same host twice.
	secureDomain(s, "twice.test", "mx.twice.test")
	s.AddMX("twice.test", 50, "MX.twice.test.")
	secureTLSA(s, "mx.twice.test", 3, 1, 1, sha256Hex("k"))

	// An MX host written as an IP address, or as no valid name.
	secureDomain(s, "odd.test", "mx.odd.test")
	s.AddMX("odd.test", 20, "192.0.2.1")
	s.AddMX("odd.test", 30, `bad\032name.odd.test`)
	secureTLSA(s, "mx.odd.test", 3, 1, 1, sha256Hex("k"))

	c := newChecker(s)
	tests := []struct {
		domain   string
		verdict  Verdict
		hosts    []string
		insecure bool
		detail   string
	}{
		{"implicit.test", DANEOnly, []string{"implicit.test"}, false, "RFC 5321 section 5.1"},
		{"null.test", NoDANE, nil, false, "null MX"},
		{"nx.test", NoDANE, nil, false, "does not exist"},
		{"dot.test", DANEOnly, []string{"mx.dot.test"}, false, ""},
		{"twice.test", DANEOnly, []string{"mx.twice.test"}, false, ""},
		{"odd.test", MixedDANE, []string{"mx.odd.test", "192.0.2.1", `bad\ name.odd.test`}, false, "1 of 2"},
		{"", NoDANE, nil, false, "not a domain name"},
		{"192.0.2.1", NoDANE, nil, false, "IP address"},
		{"bad name.test", NoDANE, nil, false, "not a domain name"},
	}
	for _, tc := range tests {
		r := c.Check(t.Context(), tc.domain)
		if r.Verdict != tc.verdict || !slices.Equal(hostNames(r), tc.hosts) || r.Insecure != tc.insecure || !strings.Contains(r.Detail, tc.detail) {
			t.Errorf("Check(%q) = verdict %v, hosts %v, insecure %v, detail %q; want %v, %v, %v, %q",
				tc.domain, r.Verdict, hostNames(r), r.Insecure, r.Detail, tc.verdict, tc.hosts, tc.insecure, tc.detail)
		}
	}
}

func TestCheckIDN(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "xn--bcher-kva.test", "mx.xn--bcher-kva.test")
	secureTLSA(s, "mx.xn--bcher-kva.test", 3, 1, 1, sha256Hex("k"))
	r := newChecker(s).Check(t.Context(), "Bücher.test")
	wantResult(t, r, DANEOnly, Usable)
	if r.Domain != "xn--bcher-kva.test" {
		t.Errorf("Domain %q", r.Domain)
	}
}

func TestCheckMaxHosts(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	var hosts []string
	for i := range MaxHosts + 2 {
		hosts = append(hosts, fmt.Sprintf("mx%02d.example.test", i))
	}
	secureDomain(s, "example.test", hosts...)
	for _, h := range hosts {
		secureTLSA(s, h, 3, 1, 1, sha256Hex(h))
	}
	r := newChecker(s).Check(t.Context(), "example.test")
	if len(r.Hosts) != MaxHosts || r.Hosts[MaxHosts-1].Host != hosts[MaxHosts-1] {
		t.Fatalf("checked %v, want the first %d by preference", hostNames(r), MaxHosts)
	}
	// Hosts that were not checked may lack TLSA records: not DANEOnly.
	if r.Verdict != MixedDANE || !strings.Contains(r.Detail, "not checked") {
		t.Errorf("verdict %v, detail %q", r.Verdict, r.Detail)
	}
	if n := s.Count(tlsaName(hosts[MaxHosts]), dns.TypeTLSA); n != 0 {
		t.Errorf("host past MaxHosts looked up")
	}
}

func TestCheckPort(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test")
	s.AddTLSA("_2525._tcp.mx1.example.test", 3, 1, 1, sha256Hex("k"))
	s.SetAD("_2525._tcp.mx1.example.test", true)
	s.SetAD(tlsaName("mx1.example.test"), true)

	c := newChecker(s)
	wantResult(t, c.Check(t.Context(), "example.test"), NoDANE, NoTLSA)
	c.Port = 2525
	wantResult(t, c.Check(t.Context(), "example.test"), DANEOnly, Usable)
}

func TestCheckHost(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	s.AddA("relay.example.test", "127.0.0.30")
	s.SetAD("relay.example.test", true)
	secureTLSA(s, "relay.example.test", 3, 1, 1, sha256Hex("k"))
	s.AddTLSA("_587._tcp.relay.example.test", 2, 1, 1, sha256Hex("ta"))
	s.SetAD("_587._tcp.relay.example.test", true)
	s.AddA("plain.example.test", "127.0.0.31")
	s.AddTLSA(tlsaName("plain.example.test"), 3, 1, 1, sha256Hex("k"))
	s.SetAD(tlsaName("plain.example.test"), true) // its addresses are not secure

	c := newChecker(s)
	tests := []struct {
		host    string
		port    int
		status  HostStatus
		verdict Verdict
		records []string
	}{
		{"relay.example.test", 0, Usable, DANEOnly, []string{"3 1 1 " + sha256Hex("k")}},
		{"[Relay.Example.Test.]", 25, Usable, DANEOnly, []string{"3 1 1 " + sha256Hex("k")}},
		{"relay.example.test", 587, Usable, DANEOnly, []string{"2 1 1 " + sha256Hex("ta")}},
		{"relay.example.test", 465, Insecure, NoDANE, nil}, // unvalidated NXDOMAIN
		{"plain.example.test", 25, Insecure, NoDANE, nil},
		{"missing.example.test", 25, NoAddress, NoDANE, nil},
		{"127.0.0.30", 25, Insecure, NoDANE, nil},
		{"[192.0.2.1]", 25, Insecure, NoDANE, nil},
	}
	for _, tc := range tests {
		h := c.CheckHost(t.Context(), tc.host, tc.port)
		if h.Status != tc.status || h.Status.Verdict() != tc.verdict || !slices.Equal(h.Records, tc.records) {
			t.Errorf("CheckHost(%q, %d) = %+v; want %v, %v, %v", tc.host, tc.port, h, tc.status, tc.verdict, tc.records)
		}
	}
	if n := s.Count("plain.example.test", dns.TypeMX); n != 0 {
		t.Error("CheckHost looked up MX records")
	}
}

func TestCheckHostServfail(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	s.AddA("relay.example.test", "127.0.0.30")
	s.SetAD("relay.example.test", true)
	s.SetRcode(tlsaName("relay.example.test"), dns.RcodeServerFailure)
	h := newChecker(s).CheckHost(t.Context(), "relay.example.test", 25)
	if h.Status != Failure || h.Status.Verdict() != TempFail || !errors.Is(h.Err, dnsclient.ErrServFail) {
		t.Fatalf("CheckHost = %+v", h)
	}
}

func TestCheckCNAME(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		setup  func(s *fakedns.Server)
		status HostStatus
		base   string
	}{
		{
			// RFC 7672 section 2.2.3: TLSA records at the end of a
			// validated CNAME chain come first.
			"TLSA at the CNAME target", func(s *fakedns.Server) {
				secureTLSA(s, "mx.provider.test", 3, 1, 1, sha256Hex("target"))
				secureTLSA(s, "mx1.example.test", 0, 0, 1, sha256Hex("original, unusable"))
			}, Usable, "mx.provider.test",
		},
		{
			"TLSA only at the original name", func(s *fakedns.Server) {
				s.SetAD(tlsaName("mx.provider.test"), true) // validated denial
				secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("original"))
			}, Usable, "mx1.example.test",
		},
		{
			"insecure TLSA at the target, usable at the original", func(s *fakedns.Server) {
				s.AddTLSA(tlsaName("mx.provider.test"), 3, 1, 1, sha256Hex("target"))
				secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("original"))
			}, Usable, "mx1.example.test",
		},
		{
			"no TLSA anywhere", func(s *fakedns.Server) {
				s.SetAD(tlsaName("mx.provider.test"), true)
				s.SetAD(tlsaName("mx1.example.test"), true)
			}, NoTLSA, "",
		},
		{
			"unsigned CNAME target", func(s *fakedns.Server) {
				s.SetAD("mx.provider.test", false)
				secureTLSA(s, "mx.provider.test", 3, 1, 1, sha256Hex("target"))
				secureTLSA(s, "mx1.example.test", 3, 1, 1, sha256Hex("original"))
			}, Insecure, "",
		},
		{
			// The TLSA name itself an alias (RFC 7671 section 7), as
			// providers publish for their customers.
			"TLSA name is a CNAME", func(s *fakedns.Server) {
				s.Remove("mx1.example.test", dns.TypeCNAME)
				s.AddA("mx1.example.test", "127.0.0.10")
				s.AddCNAME(tlsaName("mx1.example.test"), "_dane.provider.test")
				s.SetAD(tlsaName("mx1.example.test"), true)
				s.AddTLSA("_dane.provider.test", 3, 1, 1, sha256Hex("shared"))
				s.SetAD("_dane.provider.test", true)
			}, Usable, "mx1.example.test",
		},
		{
			"TLSA CNAME to an unsigned zone", func(s *fakedns.Server) {
				s.Remove("mx1.example.test", dns.TypeCNAME)
				s.AddA("mx1.example.test", "127.0.0.10")
				s.AddCNAME(tlsaName("mx1.example.test"), "_dane.provider.test")
				s.SetAD(tlsaName("mx1.example.test"), true)
				s.AddTLSA("_dane.provider.test", 3, 1, 1, sha256Hex("shared"))
			}, Insecure, "",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := fakedns.MustStart(t)
			s.AddMX("example.test", 10, "mx1.example.test")
			s.SetAD("example.test", true)
			s.AddCNAME("mx1.example.test", "mx.provider.test")
			s.SetAD("mx1.example.test", true)
			s.AddA("mx.provider.test", "127.0.0.40")
			s.SetAD("mx.provider.test", true)
			tc.setup(s)

			r := newChecker(s).Check(t.Context(), "example.test")
			if len(r.Hosts) != 1 {
				t.Fatalf("hosts %+v", r.Hosts)
			}
			h := r.Hosts[0]
			if h.Host != "mx1.example.test" || h.Status != tc.status || h.Base != tc.base {
				t.Fatalf("host %+v; want status %v, base %q", h, tc.status, tc.base)
			}
		})
	}
}

func TestCheckServersInOrder(t *testing.T) {
	t.Parallel()
	good := fakedns.MustStart(t)
	secureDomain(good, "example.test", "mx1.example.test")
	secureTLSA(good, "mx1.example.test", 3, 1, 1, sha256Hex("k"))

	failing := fakedns.MustStart(t)
	failing.SetRcode("example.test", dns.RcodeServerFailure)
	failing.SetRcode("mx1.example.test", dns.RcodeRefused)
	failing.SetRcode(tlsaName("mx1.example.test"), dns.RcodeServerFailure)

	// A server that never answers: each query to it costs the timeout.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	c := newChecker(good)
	c.Servers = []string{silent.LocalAddr().String(), failing.Addr(), good.Addr()}
	c.Timeout = 250 * time.Millisecond
	r := c.Check(t.Context(), "example.test")
	wantResult(t, r, DANEOnly, Usable)
	if failing.Count("example.test", dns.TypeMX) != 1 || failing.Count(tlsaName("mx1.example.test"), dns.TypeTLSA) != 1 {
		t.Errorf("second server not asked first: %v", failing.Queries())
	}

	// Every server failing: the last failure is reported.
	c.Servers = []string{good.Addr(), failing.Addr()}
	c.Timeout = testTimeout
	good.SetRcode(tlsaName("mx1.example.test"), dns.RcodeServerFailure)
	r = c.Check(t.Context(), "example.test")
	if r.Verdict != TempFail || !errors.Is(r.Err, dnsclient.ErrServFail) {
		t.Errorf("verdict %v, err %v", r.Verdict, r.Err)
	}
}

func TestCheckTCPFallback(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "example.test", "mx1.example.test")
	// Enough SHA-512 records (about 90 bytes each) to overflow the 1232
	// bytes announced over UDP.
	for i := range 20 {
		secureTLSA(s, "mx1.example.test", 3, 1, 2, sha512Hex(fmt.Sprint(i)))
	}
	r := newChecker(s).Check(t.Context(), "example.test")
	wantResult(t, r, DANEOnly, Usable)
	if n := len(r.Hosts[0].Records); n != 20 {
		t.Errorf("%d records, want 20", n)
	}
	var nets []string
	for _, q := range s.Queries() {
		if q.Type == dns.TypeTLSA {
			nets = append(nets, q.Net)
		}
	}
	if !slices.Equal(nets, []string{"udp", "tcp"}) {
		t.Errorf("TLSA queries over %v, want udp then tcp", nets)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "dane.test", "mx.dane.test")
	secureTLSA(s, "mx.dane.test", 3, 1, 1, sha256Hex("k"))
	s.AddMX("unsigned.test", 10, "mx.dane.test")
	secureDomain(s, "none.test", "mx.none.test")
	s.SetAD(tlsaName("mx.none.test"), true)
	secureDomain(s, "fail.test", "mx.fail.test")
	s.SetRcode(tlsaName("mx.fail.test"), dns.RcodeServerFailure)

	reg := prometheus.NewPedanticRegistry()
	c := newChecker(s)
	c.Metrics = NewMetrics(reg)
	for _, d := range []string{"dane.test", "dane.test", "unsigned.test", "none.test", "fail.test"} {
		c.Check(t.Context(), d)
	}
	c.CheckHost(t.Context(), "mx.dane.test", 25)
	untrusted := &Checker{Metrics: c.Metrics}
	untrusted.Check(t.Context(), "dane.test")

	want := map[string]float64{"dane_only": 3, "mixed": 0, "encrypt_only": 0, "no_dane": 1, "insecure": 2, "temp_fail": 1}
	for l, n := range want {
		if got := testutil.ToFloat64(c.Metrics.lookups.WithLabelValues(l)); got != n {
			t.Errorf("tlspolicyd_dane_lookups_total{result=%q} = %v, want %v", l, got, n)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "tlspolicyd_dane_lookups_total"); err != nil || n != len(want) {
		t.Errorf("%d series (%v), want %d, every label present from the start", n, err, len(want))
	}

	// A nil *Metrics records nothing, and does not panic.
	c.Metrics = nil
	c.Check(t.Context(), "dane.test")
}

func TestDecide(t *testing.T) {
	t.Parallel()
	host := func(s HostStatus) HostTLSA { return HostTLSA{Host: "mx." + s.String(), Status: s} }
	tests := []struct {
		hosts     []HostStatus
		unchecked int
		verdict   Verdict
		insecure  bool
	}{
		{[]HostStatus{Usable}, 0, DANEOnly, false},
		{[]HostStatus{Usable, Usable}, 0, DANEOnly, false},
		{[]HostStatus{Usable, NoAddress}, 0, DANEOnly, false},
		{[]HostStatus{Usable, Usable}, 1, MixedDANE, false},
		{[]HostStatus{Usable, NoTLSA}, 0, MixedDANE, false},
		{[]HostStatus{Usable, Insecure}, 0, MixedDANE, false},
		{[]HostStatus{Usable, Unusable}, 0, MixedDANE, false},
		{[]HostStatus{Unusable}, 0, EncryptOnly, false},
		{[]HostStatus{Unusable, NoTLSA, Insecure}, 0, EncryptOnly, false},
		{[]HostStatus{NoTLSA}, 0, NoDANE, false},
		{[]HostStatus{NoTLSA, NoTLSA}, 0, NoDANE, false},
		{[]HostStatus{NoTLSA, Insecure}, 0, NoDANE, true},
		{[]HostStatus{Insecure}, 0, NoDANE, true},
		{[]HostStatus{NoAddress}, 0, NoDANE, false},
		// A failure anywhere wins: it is never read as "no DANE".
		{[]HostStatus{Usable, Failure}, 0, TempFail, false},
		{[]HostStatus{NoTLSA, Failure}, 0, TempFail, false},
		{[]HostStatus{Failure, Insecure}, 0, TempFail, false},
	}
	for _, tc := range tests {
		var hosts []HostTLSA
		for _, s := range tc.hosts {
			hosts = append(hosts, host(s))
		}
		v, insecure, detail, _ := decide(hosts, tc.unchecked)
		if v != tc.verdict || insecure != tc.insecure || detail == "" {
			t.Errorf("decide(%v, %d) = %v, %v, %q; want %v, %v", tc.hosts, tc.unchecked, v, insecure, detail, tc.verdict, tc.insecure)
		}
	}
}

func TestStrings(t *testing.T) {
	t.Parallel()
	for v, want := range map[Verdict]string{NoDANE: "no_dane", DANEOnly: "dane_only", MixedDANE: "mixed", EncryptOnly: "encrypt_only", TempFail: "temp_fail", 99: "Verdict(99)"} {
		if got := v.String(); got != want {
			t.Errorf("Verdict %d String() = %q, want %q", v, got, want)
		}
	}
	for s, want := range map[HostStatus]string{Failure: "failure", Insecure: "insecure", NoAddress: "no_address", NoTLSA: "no_tlsa", Unusable: "unusable", Usable: "usable", 99: "HostStatus(99)"} {
		if got := s.String(); got != want {
			t.Errorf("HostStatus %d String() = %q, want %q", s, got, want)
		}
	}
}

// Domains that share an MX host share its TLSA lookups, for the TTL of
// the answers: the second domain asks no TLSA query, and after the TTL the
// records are read again (a withdrawal is seen).
func TestCheckSharesHostTLSA(t *testing.T) {
	t.Parallel()
	s := fakedns.MustStart(t)
	secureDomain(s, "a.test", "mx.provider.test")
	secureDomain(s, "b.test", "mx.provider.test")
	secureTLSA(s, "mx.provider.test", 3, 1, 1, sha256Hex("provider key"))
	s.SetTTL(tlsaName("mx.provider.test"), dns.TypeTLSA, 60)
	now := fixedNow
	c := newChecker(s)
	c.Now = func() time.Time { return now }
	c.Hosts = NewHostCache(0, c.Now)
	wantResult(t, c.Check(t.Context(), "a.test"), DANEOnly, Usable)
	wantResult(t, c.Check(t.Context(), "b.test"), DANEOnly, Usable)
	if n := s.Count(tlsaName("mx.provider.test")+".", dns.TypeTLSA); n != 1 {
		t.Errorf("%d TLSA queries for one MX host of two domains, want 1", n)
	}
	s.Remove(tlsaName("mx.provider.test"), dns.TypeTLSA)
	now = now.Add(61 * time.Second)
	if r := c.Check(t.Context(), "b.test"); r.Verdict == DANEOnly {
		t.Errorf("after the TTL: %v, want the withdrawal seen", r.Verdict)
	}
}
