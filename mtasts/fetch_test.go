package mtasts

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

func TestFetchModes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "enforce.test", "testing.test", "none.test")
	w.set("testing.test", answer{body: testingBody, ctype: "text/plain"})
	w.set("none.test", answer{body: noneBody, ctype: "TEXT/PLAIN; charset=us-ascii"})
	clk := newClock()
	f := w.fetcher(clk)
	tests := []struct {
		domain string
		mode   Mode
		mx     []string
	}{
		{"enforce.test", ModeEnforce, []string{"mx1.example.test", "*.mx.example.test"}},
		{"Testing.TEST.", ModeTesting, []string{"mx1.example.test"}},
		{"none.test", ModeNone, nil},
	}
	for _, tt := range tests {
		p, err := f.Fetch(testContext(t), tt.domain)
		if err != nil {
			t.Errorf("Fetch(%s): %v", tt.domain, err)
			continue
		}
		if p.Mode != tt.mode || !slices.Equal(p.MX, tt.mx) || p.MaxAge != 24*time.Hour || !p.FetchedAt.Equal(clk.Now()) || p.ID != "" {
			t.Errorf("Fetch(%s) = %+v", tt.domain, p)
		}
	}
}

// checkFetchError checks that err is a *FetchError with result r that
// matches the result's sentinel.
func checkFetchError(t *testing.T, err error, r FetchResult, sentinel error) {
	t.Helper()
	var fe *FetchError
	if !errors.As(err, &fe) || fe.Result != r || FetchResultOf(err) != r {
		t.Fatalf("err = %v (%T), want a *FetchError with result %v", err, err, r)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("err = %v does not match %v", err, sentinel)
	}
}

// Everything a policy host may answer instead of a good policy is refused.
func TestFetchRefusesAnswers(t *testing.T) {
	t.Parallel()
	big := "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmax_age: 60\nx: " + strings.Repeat("a", MaxPolicySize)
	tests := []struct {
		name     string
		answer   answer
		result   FetchResult
		sentinel error
	}{
		{"oversized", answer{body: big}, FetchTooLarge, ErrTooLarge},
		{"malformed", answer{body: "version: STSv1\nmode: enforce\nmx: mx*.example.test\nmax_age: 60\n"}, FetchInvalid, ErrInvalidPolicy},
		{"html", answer{body: "<html>hello</html>"}, FetchInvalid, ErrInvalidPolicy},
		{"empty", answer{}, FetchInvalid, ErrInvalidPolicy},
		{"redirect", answer{status: http.StatusMovedPermanently, location: "https://mta-sts.other.test/.well-known/mta-sts.txt", body: enforceBody}, FetchRedirect, ErrRedirect},
		{"temporary redirect", answer{status: http.StatusTemporaryRedirect, location: "/elsewhere"}, FetchRedirect, ErrRedirect},
		{"not found", answer{status: http.StatusNotFound, body: enforceBody}, FetchHTTPError, ErrHTTP},
		{"server error", answer{status: http.StatusInternalServerError}, FetchHTTPError, ErrHTTP},
		{"no content", answer{status: http.StatusNoContent}, FetchHTTPError, ErrHTTP},
		{"html type", answer{ctype: "text/html", body: enforceBody}, FetchHTTPError, ErrContentType},
		{"no type", answer{ctype: "-", body: enforceBody}, FetchHTTPError, ErrContentType},
		{"bad type", answer{ctype: "text/plain;;;", body: enforceBody}, FetchHTTPError, ErrContentType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, "example.test", "other.test")
			w.set("example.test", tt.answer)
			_, err := w.fetcher(newClock()).Fetch(testContext(t), "example.test")
			checkFetchError(t, err, tt.result, tt.sentinel)
			if n := w.hitsOf("other.test"); n != 0 {
				t.Errorf("redirect followed: %d requests to its target", n)
			}
			if n := w.hitsOf("example.test"); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
		})
	}
}

// A body over the limit is refused by its Content-Length before reading,
// or while reading when it is sent chunked.
func TestFetchTooLargeDeclared(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	w.srv.Config.Handler = http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/plain")
		rw.Header().Set("Content-Length", "1000000")
		rw.WriteHeader(http.StatusOK)
		rw.Write([]byte(enforceBody)) // short: the client must not wait for the rest
	})
	_, err := w.fetcher(newClock()).Fetch(testContext(t), "example.test")
	checkFetchError(t, err, FetchTooLarge, ErrTooLarge)
}

func TestFetchCertificates(t *testing.T) {
	t.Parallel()
	const name = "mta-sts.example.test"
	ca := testca.MustNew(t)
	selfSigned, err := testca.SelfSigned(name)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		serve   func(t *testing.T) *world
		wantErr any // a pointer to the x509 error type expected in the chain
	}{
		{"self-signed", func(t *testing.T) *world {
			return newWorldCert(t, ca, selfSigned, "example.test")
		}, new(x509.UnknownAuthorityError)},
		{"other CA", func(t *testing.T) *world {
			return newWorldCert(t, ca, testca.MustNew(t).MustLeaf(t, testca.LeafOptions{DNSNames: []string{name}}), "example.test")
		}, new(x509.UnknownAuthorityError)},
		{"wrong name", func(t *testing.T) *world {
			return newWorldCert(t, ca, ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"example.test", "www.example.test"}}), "example.test")
		}, new(x509.HostnameError)},
		{"expired", func(t *testing.T) *world {
			return newWorldCert(t, ca, ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{name}, NotAfter: time.Now().Add(-time.Hour)}), "example.test")
		}, new(x509.CertificateInvalidError)},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := tt.serve(t)
			_, err := w.fetcher(newClock()).Fetch(testContext(t), "example.test")
			checkFetchError(t, err, FetchTLSError, ErrTLS)
			if !errors.As(err, tt.wantErr) {
				t.Errorf("err = %v, want a %T in the chain", err, tt.wantErr)
			}
			if n := w.hitsOf("example.test"); n != 0 {
				t.Errorf("%d requests sent over an unverified connection", n)
			}
		})
	}
}

// Without AllowPrivate, a policy host on loopback is refused before any
// connection; with it, it is fetched.
func TestFetchPrivateAddress(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	f := w.fetcher(newClock())
	f.AllowPrivate = false
	_, err := f.Fetch(testContext(t), "example.test")
	checkFetchError(t, err, FetchPrivateAddress, ErrPrivateAddress)
	if n := w.conns.Load(); n != 0 {
		t.Errorf("%d connections to a private address", n)
	}
	f.AllowPrivate = true
	if _, err := f.Fetch(testContext(t), "example.test"); err != nil {
		t.Errorf("with AllowPrivate: %v", err)
	}
}

// Of mixed addresses only the public ones are dialled, through the injected
// Dial, on the configured port.
func TestFetchDialsPublicOnly(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	w.dns.AddA("mta-sts.example.test", "192.0.2.10")
	w.dns.AddAAAA("mta-sts.example.test", "2001:db8::10")
	w.dns.AddAAAA("mta-sts.example.test", "fd00::1")
	var mu sync.Mutex
	var dialled []string
	f := w.fetcher(newClock())
	f.AllowPrivate = false
	f.Port = 8443
	f.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		dialled = append(dialled, network+" "+addr)
		return nil, errors.New("unreachable")
	}
	_, err := f.Fetch(testContext(t), "example.test")
	checkFetchError(t, err, FetchConnectError, ErrConnect)
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"tcp 192.0.2.10:8443", "tcp [2001:db8::10]:8443"}; !slices.Equal(dialled, want) {
		t.Errorf("dialled %q, want %q", dialled, want)
	}
}

func TestFetchDNSFailures(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	w.dns.AddTXT("_mta-sts.nohost.test", "v=STSv1; id=1")
	w.dns.SetRcode("mta-sts.broken.test", dns.RcodeServerFailure)
	w.dns.AddTXT("mta-sts.noaddr.test", "exists, without addresses")
	f := w.fetcher(newClock())
	for _, d := range []string{"nohost.test", "broken.test", "noaddr.test"} {
		_, err := f.Fetch(testContext(t), d)
		checkFetchError(t, err, FetchDNSError, ErrDNS)
	}
	_, err := f.Fetch(testContext(t), "nohost.test")
	if !errors.Is(err, dnsclient.ErrNXDomain) {
		t.Errorf("err = %v, want the resolver's cause kept", err)
	}
}

func TestFetchConnectionRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := w.fetcher(newClock())
	f.Port = l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens there now
	_, err = f.Fetch(testContext(t), "example.test")
	checkFetchError(t, err, FetchConnectError, ErrConnect)
}

// A policy host that never answers costs Timeout, not more.
func TestFetchTimeout(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	w.set("example.test", answer{block: true})
	f := w.fetcher(newClock())
	f.Timeout = 300 * time.Millisecond
	start := time.Now()
	_, err := f.Fetch(testContext(t), "example.test")
	checkFetchError(t, err, FetchTimeout, ErrTimeout)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v with a timeout of %v", took, f.Timeout)
	}
}

// The caller's context bounds the fetch too.
func TestFetchContextCanceled(t *testing.T) {
	t.Parallel()
	w := newWorld(t, "example.test")
	w.set("example.test", answer{block: true})
	w.hit = make(chan string, 1)
	ctx, cancel := context.WithCancel(testContext(t))
	go func() {
		<-w.hit
		cancel()
	}()
	_, err := w.fetcher(newClock()).Fetch(ctx, "example.test")
	checkFetchError(t, err, FetchTimeout, ErrTimeout)
}

func TestFetchInvalidDomain(t *testing.T) {
	t.Parallel()
	f := &Fetcher{Resolver: nilResolver{}}
	for _, d := range []string{"", "[192.0.2.1]", "example.test:25", "a..b", "-x.test", ".", strings.Repeat("a.", 130) + "test"} {
		if _, err := f.Fetch(context.Background(), d); !errors.Is(err, ErrInvalidDomain) {
			t.Errorf("Fetch(%q): %v, want ErrInvalidDomain", d, err)
		}
		if rec, err := f.Discover(context.Background(), d); rec.Found || !errors.Is(err, ErrInvalidDomain) {
			t.Errorf("Discover(%q): %+v, %v; want ErrInvalidDomain", d, rec, err)
		}
	}
}

// nilResolver fails the test run if it is ever asked anything.
type nilResolver struct{}

func (nilResolver) LookupTXT(context.Context, string) ([]string, time.Duration, error) {
	panic("unexpected TXT lookup")
}

func (nilResolver) LookupAddrs(context.Context, string) ([]netip.Addr, error) {
	panic("unexpected address lookup")
}

func TestDiscover(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	add := func(domain string, records ...string) {
		for _, r := range records {
			w.dns.AddTXT("_mta-sts."+domain, r)
		}
	}
	add("plain.test", "v=STSv1; id=20160831085700Z;")
	w.dns.AddTXT("_mta-sts.split.test", "v=STSv1; ", "id=abc123") // one record, two strings
	add("others.test", "v=spf1 -all", "v=STSv1; id=xyz", "v=STSv10; id=future")
	add("nonsts.test", "v=spf1 -all", "hello")
	add("several.test", "v=STSv1; id=one", "v=STSv1; id=two")
	add("invalid.test", "v=STSv1; id=not-alnum")
	add("invalid2.test", "v=STSv1; id=abc ") // counted, then invalid
	// Records that do not begin with "v=STSv1;" are discarded before
	// counting (section 3.1), so they neither hide a valid one nor count.
	add("bare.test", "v=STSv1", "v=STSv1; id=valid")
	add("spacedsep.test", "v=STSv1 ; id=spaced", "v=STSv1; id=valid")
	add("nosep.test", "v=STSv1 id=abc")
	w.dns.AddA("nodata.test", "192.0.2.1")
	w.dns.AddA("_mta-sts.nodata2.test", "192.0.2.1")
	w.dns.SetRcode("_mta-sts.servfail.test", dns.RcodeServerFailure)
	w.dns.SetRcode("_mta-sts.refused.test", dns.RcodeRefused)
	w.dns.AddCNAME("_mta-sts.alias.test", "_mta-sts.plain.test")
	add("xn--bcher-kva.test", "v=STSv1; id=idn") // bücher.test
	// Intermediate names of the TXT owner exist, so the NXDOMAIN case is
	// a name under an existing domain.
	w.dns.AddA("gone.test", "192.0.2.1")

	tests := []struct {
		domain string
		id     string
		found  bool
		err    error
	}{
		{"plain.test", "20160831085700Z", true, nil},
		{"PLAIN.test.", "20160831085700Z", true, nil},
		{"split.test", "abc123", true, nil},
		{"others.test", "xyz", true, nil},
		{"alias.test", "20160831085700Z", true, nil},
		{"Bücher.test", "idn", true, nil}, // looked up by its A-label
		{"nonsts.test", "", false, nil},
		{"nodata.test", "", false, nil},
		{"nodata2.test", "", false, nil},
		{"gone.test", "", false, nil},
		{"nowhere.test", "", false, nil},
		{"several.test", "", false, ErrMultipleRecords},
		{"invalid.test", "", false, ErrInvalidRecord},
		{"invalid2.test", "", false, ErrInvalidRecord},
		{"bare.test", "valid", true, nil},
		{"spacedsep.test", "valid", true, nil},
		{"nosep.test", "", false, nil},
		{"servfail.test", "", false, ErrDNS},
		{"refused.test", "", false, ErrDNS},
	}
	f := w.fetcher(newClock())
	for _, tt := range tests {
		rec, err := f.Discover(testContext(t), tt.domain)
		if rec.ID != tt.id || rec.Found != tt.found || (tt.err == nil) != (err == nil) || tt.err != nil && !errors.Is(err, tt.err) {
			t.Errorf("Discover(%s) = %+v, %v; want %q, %v, %v", tt.domain, rec, err, tt.id, tt.found, tt.err)
		}
	}
	// The DNS failure keeps its cause.
	_, err := f.Discover(testContext(t), "servfail.test")
	if !errors.Is(err, dnsclient.ErrServFail) {
		t.Errorf("err = %v, want it to wrap dnsclient.ErrServFail", err)
	}
}

// Discover reports how long the record's answer may be kept, as DNS
// says: the TXT's own TTL, or the negative TTL of an absent record.
func TestDiscoverTTL(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	if err := w.dns.Add(`_mta-sts.short.test. 90 IN TXT "v=STSv1; id=1"`, `_mta-sts.bad.test. 45 IN TXT "v=STSv1; id=not-alnum"`); err != nil {
		t.Fatal(err)
	}
	f := w.fetcher(newClock())
	for domain, want := range map[string]time.Duration{
		"short.test":   90 * time.Second,
		"bad.test":     45 * time.Second, // invalid, and still as long-lived
		"nowhere.test": 60 * time.Second, // fakedns's negative TTL
	} {
		if rec, _ := f.Discover(testContext(t), domain); rec.TTL != want {
			t.Errorf("Discover(%s).TTL = %v, want %v", domain, rec.TTL, want)
		}
	}
}

// A TXT lookup that gets no answer is a DNS failure within the Timeout.
func TestDiscoverTimeout(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.dns.SetDrop("_mta-sts.slow.test", true)
	f := w.fetcher(newClock())
	f.Timeout = 300 * time.Millisecond
	start := time.Now()
	rec, err := f.Discover(testContext(t), "slow.test")
	if rec.Found || !errors.Is(err, ErrDNS) || !errors.Is(err, dnsclient.ErrTimeout) {
		t.Errorf("Discover = %+v, %v; want a DNS timeout", rec, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v", took)
	}
}

func TestFetchResultNames(t *testing.T) {
	t.Parallel()
	want := []string{"ok", "dns_error", "private_address", "connect_error", "tls_error", "timeout", "redirect", "http_error", "too_large", "invalid"}
	var got []string
	for _, r := range FetchResults() {
		got = append(got, r.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("FetchResults() = %q, want %q", got, want)
	}
	if FetchResultOf(nil) != FetchOK || FetchResultOf(errors.New("x")) != FetchHTTPError {
		t.Error("FetchResultOf of nil or a foreign error")
	}
}
