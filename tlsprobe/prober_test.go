package tlsprobe

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// Timeouts of the probers under test. Each step gets a second, so a tarpit
// costs a test one second; a whole probe gets ten, so a probe that waits for
// the whole-probe timeout where a step timeout should have ended it shows.
const (
	testStep       = time.Second
	testTimeout    = 10 * time.Second
	testDNSTimeout = 2 * time.Second
)

// startMX starts one fake MX per host, all on one port as the MX hosts of a
// destination are, closes them when the test ends and returns them with the
// port.
func startMX(t *testing.T, hosts ...fakemx.Host) ([]*fakemx.Server, int) {
	t.Helper()
	for i := range hosts {
		if hosts[i].Options.Logf == nil {
			hosts[i].Options.Logf = t.Logf
		}
	}
	servers, err := fakemx.StartGroup(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		t.Cleanup(func() { s.Close() })
	}
	_, port, _ := net.SplitHostPort(servers[0].Addr())
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return servers, n
}

// serving is the STARTTLS configuration of a fake MX that presents cert.
func serving(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// newProber returns a prober that asks d, trusts only ca (the system roots
// when ca is nil), may connect to loopback addresses and probes port.
func newProber(d *fakedns.Server, ca *testca.CA, port int) *Prober {
	var roots *x509.CertPool
	if ca != nil {
		roots = ca.Pool()
	}
	return &Prober{
		Resolver:     &dnsclient.Client{Servers: []string{d.Addr()}, Timeout: testDNSTimeout},
		Roots:        roots,
		AllowPrivate: true,
		Port:         port,
		StepTimeout:  testStep,
		Timeout:      testTimeout,
		Helo:         "probe.test",
		MinVersion:   tls.VersionTLS12,
	}
}

// runProbe probes target and logs what it found.
func runProbe(t *testing.T, p *Prober, target Target) Report {
	t.Helper()
	r := p.Probe(context.Background(), target)
	t.Logf("probe %s: %v, %v (%s) in %v", target.Key(), r.Capability, r.Cause, r.Detail, r.Duration)
	for _, h := range r.Hosts {
		t.Logf("  %s %d %v: %v, %v (%s)", h.Host, h.Preference, h.Addr, h.Capability, h.Cause, h.Detail)
	}
	return r
}

// probeOneMX probes example.test, whose one MX host mx.example.test
// (preference 10, 127.0.0.2) behaves as opts say.
func probeOneMX(t *testing.T, ca *testca.CA, opts fakemx.Options) (Report, HostReport, *fakemx.Server) {
	t.Helper()
	servers, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: opts})
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	d.AddA("mx.example.test", "127.0.0.2")
	r := runProbe(t, newProber(d, ca, port), Target{Name: "example.test"})
	if len(r.Hosts) != 1 {
		t.Fatalf("probed %d host addresses, want 1", len(r.Hosts))
	}
	return r, r.Hosts[0], servers[0]
}

// hostWant is what a test expects of one HostResult.
type hostWant struct {
	host                    string
	starttls                bool
	version                 uint16
	chain, name, selfSigned bool
	notAfter                time.Time // zero: no certificate checked
	capability              Capability
	cause                   Cause
}

func checkHost(t *testing.T, h HostReport, want hostWant) {
	t.Helper()
	got := hostWant{h.Host, h.STARTTLS, h.TLSVersion, h.ChainValid, h.NameValid, h.SelfSigned, h.NotAfter, h.Capability, h.Cause}
	if got.notAfter.Equal(want.notAfter) {
		got.notAfter = want.notAfter // same instant, maybe another location
	}
	if got != want {
		t.Errorf("host result (detail %q)\n got %+v\nwant %+v", h.Detail, got, want)
	}
}

// checkResult checks a probe's summary and, unless reason is empty, the
// reason it gives.
func checkResult(t *testing.T, r Report, c Capability, cause Cause, reason string) {
	t.Helper()
	if r.Capability != c || r.Cause != cause {
		t.Errorf("result = %v, %v (%s); want %v, %v", r.Capability, r.Cause, r.Detail, c, cause)
	}
	if got := r.Reason(tls.VersionTLS12); reason != "" && got != reason {
		t.Errorf("Reason = %q, want %q", got, reason)
	}
}

// waitSession returns the first session s recorded.
func waitSession(t *testing.T, s *fakemx.Server) fakemx.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ss, err := s.WaitSessions(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	return ss[0]
}

func TestProbeVerified(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.example.test"}})
	r, h, mx := probeOneMX(t, ca, fakemx.Options{Hostname: "mx.example.test", TLS: serving(cert)})

	checkResult(t, r, CapVerify, CauseNone, "verified TLS at every MX that answered")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS13,
		chain: true, name: true, notAfter: cert.Leaf.NotAfter, capability: CapVerify})
	if r.Failed() {
		t.Error("Failed() = true for a verified result")
	}
	if want := netip.MustParseAddrPort(mx.Addr()); h.Addr != want || h.Preference != 10 {
		t.Errorf("host address %v preference %d, want %v 10", h.Addr, h.Preference, want)
	}
	if h.Issuer != ca.Cert.Subject.String() || h.Cipher == 0 || h.Detail != "" {
		t.Errorf("issuer %q cipher %#x detail %q", h.Issuer, h.Cipher, h.Detail)
	}
	if r.Target != (Target{Name: "example.test"}) || r.ProbedAt.IsZero() || r.Duration <= 0 {
		t.Errorf("target %+v probed at %v in %v", r.Target, r.ProbedAt, r.Duration)
	}
	s := waitSession(t, mx)
	if !slices.Equal(s.Helos, []string{"probe.test"}) || !slices.Equal(s.Commands, []string{"EHLO", "STARTTLS", "QUIT"}) {
		t.Errorf("session: helos %q commands %q", s.Helos, s.Commands)
	}
	if !s.TLS || s.ServerName != "mx.example.test" {
		t.Errorf("session: TLS %v SNI %q, want SNI mx.example.test", s.TLS, s.ServerName)
	}
}

func TestProbeIntermediateCA(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	inter, err := ca.Intermediate("")
	if err != nil {
		t.Fatal(err)
	}
	cert := inter.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.example.test"}})
	r, h, _ := probeOneMX(t, ca, fakemx.Options{TLS: serving(cert)})
	checkResult(t, r, CapVerify, CauseNone, "")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS13,
		chain: true, name: true, notAfter: cert.Leaf.NotAfter, capability: CapVerify})
}

func TestProbeSelfSigned(t *testing.T) {
	t.Parallel()
	cert, err := testca.SelfSigned("mx.example.test")
	if err != nil {
		t.Fatal(err)
	}
	r, h, _ := probeOneMX(t, testca.MustNew(t), fakemx.Options{TLS: serving(cert)})
	checkResult(t, r, CapEncrypt, CauseUnknownAuthority, "self-signed certificate at mx.example.test")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS13,
		name: true, selfSigned: true, notAfter: cert.Leaf.NotAfter, capability: CapEncrypt, cause: CauseUnknownAuthority})
}

func TestProbeUntrustedIssuer(t *testing.T) {
	t.Parallel()
	other, err := testca.New("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	cert := other.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.example.test"}})
	r, h, _ := probeOneMX(t, testca.MustNew(t), fakemx.Options{TLS: serving(cert)})
	checkResult(t, r, CapEncrypt, CauseUnknownAuthority, "untrusted certificate issuer at mx.example.test")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS13,
		name: true, notAfter: cert.Leaf.NotAfter, capability: CapEncrypt, cause: CauseUnknownAuthority})
}

func TestProbeExpired(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.example.test"}, NotAfter: time.Now().Add(-48 * time.Hour)})
	r, h, _ := probeOneMX(t, ca, fakemx.Options{TLS: serving(cert)})
	checkResult(t, r, CapEncrypt, CauseExpired,
		"certificate of mx.example.test outside its validity period (not after "+cert.Leaf.NotAfter.UTC().Format(time.DateOnly)+")")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS13,
		name: true, notAfter: cert.Leaf.NotAfter, capability: CapEncrypt, cause: CauseExpired})
}

func TestProbeNotYetValid(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.example.test"}, NotBefore: time.Now().Add(48 * time.Hour)})
	r, h, _ := probeOneMX(t, ca, fakemx.Options{TLS: serving(cert)})
	checkResult(t, r, CapEncrypt, CauseExpired, "")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS13,
		name: true, notAfter: cert.Leaf.NotAfter, capability: CapEncrypt, cause: CauseExpired})
}

func TestProbeNameMismatch(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"other.example.test"}})
	r, h, _ := probeOneMX(t, ca, fakemx.Options{TLS: serving(cert)})
	checkResult(t, r, CapEncrypt, CauseNameMismatch, "certificate not valid for mx.example.test")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS13,
		chain: true, notAfter: cert.Leaf.NotAfter, capability: CapEncrypt, cause: CauseNameMismatch})
}

func TestProbeTLS10Only(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cfg := serving(ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.example.test"}}))
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
	r, h, _ := probeOneMX(t, ca, fakemx.Options{TLS: cfg})
	checkResult(t, r, CapNone, CauseOldTLS, "TLSv1 below TLSv1.2 at mx.example.test")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS10,
		capability: CapNone, cause: CauseOldTLS})
}

func TestProbeNoSTARTTLS(t *testing.T) {
	t.Parallel()
	r, h, mx := probeOneMX(t, nil, fakemx.Options{})
	checkResult(t, r, CapNone, CauseNoSTARTTLS, "no STARTTLS at mx.example.test")
	checkHost(t, h, hostWant{host: "mx.example.test", capability: CapNone, cause: CauseNoSTARTTLS})
	if s := waitSession(t, mx); !slices.Equal(s.Commands, []string{"EHLO", "QUIT"}) {
		t.Errorf("commands %q, want EHLO QUIT", s.Commands)
	}
}

func TestProbeSTARTTLSRefused(t *testing.T) {
	t.Parallel()
	r, h, _ := probeOneMX(t, nil, fakemx.Options{RejectStartTLS: true})
	checkResult(t, r, CapNone, CauseStartTLSRefused, "STARTTLS refused by mx.example.test")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, capability: CapNone, cause: CauseStartTLSRefused})
}

func TestProbeHandshakeFails(t *testing.T) {
	t.Parallel()
	r, h, _ := probeOneMX(t, nil, fakemx.Options{BreakHandshake: true})
	checkResult(t, r, CapNone, CauseHandshake, "TLS handshake failed at mx.example.test")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, capability: CapNone, cause: CauseHandshake})
}

// A server that greets and then says nothing costs one step timeout, not
// the whole probe's, and gives no evidence.
func TestProbeTarpit(t *testing.T) {
	t.Parallel()
	r, h, _ := probeOneMX(t, nil, fakemx.Options{Tarpit: true})
	checkResult(t, r, CapUnknown, CauseTimeout, "")
	checkHost(t, h, hostWant{host: "mx.example.test", capability: CapUnknown, cause: CauseTimeout})
	if !r.Failed() {
		t.Error("Failed() = false, want true: nothing answered")
	}
	if r.Duration < testStep || r.Duration >= testTimeout {
		t.Errorf("probe took %v, want about the step timeout %v (whole probe timeout %v)", r.Duration, testStep, testTimeout)
	}
	if got := r.Reason(tls.VersionTLS12); !strings.HasPrefix(got, "mx.example.test: ") || !strings.Contains(got, "timeout") {
		t.Errorf("Reason = %q, want the host and the timeout", got)
	}
}

// A tarpit that outlasts the whole probe's timeout, shorter than a step,
// is a timeout too: the probe's deadline closes the connection under the
// read, and that must not read as a broken server.
func TestProbeTarpitWholeTimeout(t *testing.T) {
	t.Parallel()
	_, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{Tarpit: true}})
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	d.AddA("mx.example.test", "127.0.0.2")
	p := newProber(d, nil, port)
	p.Timeout = 300 * time.Millisecond
	for range 5 { // the close and the read deadline race; try it a few times
		r := runProbe(t, p, Target{Name: "example.test"})
		checkResult(t, r, CapUnknown, CauseTimeout, "")
	}
}

// STARTTLS on the last line of a long EHLO reply is still found.
func TestProbeSTARTTLSLast(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.example.test"}})
	var ext []string
	for i := range 40 {
		ext = append(ext, fmt.Sprintf("X-EXTENSION-%d with some parameters", i))
	}
	r, h, _ := probeOneMX(t, ca, fakemx.Options{TLS: serving(cert), Extensions: ext, StartTLSLast: true})
	checkResult(t, r, CapVerify, CauseNone, "")
	checkHost(t, h, hostWant{host: "mx.example.test", starttls: true, version: tls.VersionTLS13,
		chain: true, name: true, notAfter: cert.Leaf.NotAfter, capability: CapVerify})
}

// probeTwoMX probes example.test with mx1 (preference 10, 127.0.0.2) and mx2
// (preference 20, 127.0.0.3).
func probeTwoMX(t *testing.T, ca *testca.CA, mx1, mx2 fakemx.Options) Report {
	t.Helper()
	_, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: mx1}, fakemx.Host{IP: "127.0.0.3", Options: mx2})
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 20, "mx2.example.test")
	d.AddMX("example.test", 10, "mx1.example.test")
	d.AddA("mx1.example.test", "127.0.0.2")
	d.AddA("mx2.example.test", "127.0.0.3")
	r := runProbe(t, newProber(d, ca, port), Target{Name: "example.test"})
	if len(r.Hosts) != 2 || r.Hosts[0].Host != "mx1.example.test" || r.Hosts[1].Host != "mx2.example.test" {
		t.Fatalf("hosts %+v, want mx1 and mx2", r.Hosts)
	}
	return r
}

// A domain is only as capable as its weakest MX that answered.
func TestProbeTwoMXOneWithoutSTARTTLS(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx1.example.test"}})
	r := probeTwoMX(t, ca, fakemx.Options{TLS: serving(cert)}, fakemx.Options{})
	checkResult(t, r, CapNone, CauseNoSTARTTLS, "no STARTTLS at mx2.example.test")
	checkHost(t, r.Hosts[0], hostWant{host: "mx1.example.test", starttls: true, version: tls.VersionTLS13,
		chain: true, name: true, notAfter: cert.Leaf.NotAfter, capability: CapVerify})
	checkHost(t, r.Hosts[1], hostWant{host: "mx2.example.test", capability: CapNone, cause: CauseNoSTARTTLS})
	if r.Hosts[0].Preference != 10 || r.Hosts[1].Preference != 20 {
		t.Errorf("preferences %d, %d; want 10, 20", r.Hosts[0].Preference, r.Hosts[1].Preference)
	}
}

func TestProbeTwoMXOneSelfSigned(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	good := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx1.example.test"}})
	self, err := testca.SelfSigned("mx2.example.test")
	if err != nil {
		t.Fatal(err)
	}
	r := probeTwoMX(t, ca, fakemx.Options{TLS: serving(good)}, fakemx.Options{TLS: serving(self)})
	checkResult(t, r, CapEncrypt, CauseUnknownAuthority, "self-signed certificate at mx2.example.test")
	if r.Hosts[0].Capability != CapVerify || r.Hosts[1].Capability != CapEncrypt {
		t.Errorf("host capabilities %v, %v; want verify, encrypt", r.Hosts[0].Capability, r.Hosts[1].Capability)
	}
}

// An MX that does not answer is left out of the summary, as a sender would
// move on to the next one.
func TestProbeUnreachableMXIgnored(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx1.example.test"}})
	_, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: serving(cert)}})
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx1.example.test")
	d.AddMX("example.test", 20, "mx2.example.test")
	d.AddA("mx1.example.test", "127.0.0.2")
	d.AddA("mx2.example.test", "127.0.0.254") // no test listens there
	r := runProbe(t, newProber(d, ca, port), Target{Name: "example.test"})
	checkResult(t, r, CapVerify, CauseNone, "")
	if len(r.Hosts) != 2 || r.Hosts[1].Cause != CauseRefused || r.Hosts[1].Capability != CapUnknown {
		t.Errorf("hosts %+v, want mx2 refused", r.Hosts)
	}
}

func TestProbeNullMX(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 0, ".")
	r := runProbe(t, newProber(d, nil, 0), Target{Name: "example.test"})
	checkResult(t, r, CapUnknown, CauseNullMX, "example.test publishes a null MX: it accepts no mail")
	if len(r.Hosts) != 0 {
		t.Errorf("probed %+v, want no host", r.Hosts)
	}
	if n := len(d.Queries()); n != 1 {
		t.Errorf("%d DNS queries %+v, want the MX query only", n, d.Queries())
	}
}

// A "." among real MX hosts breaks RFC 7505 (a null MX stands alone): the
// real hosts are probed and "." is skipped, not probed as a host name.
func TestProbeNullMXBesideRealHosts(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.example.test"}})
	_, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: serving(cert)}})
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 0, ".")
	d.AddMX("example.test", 10, "mx.example.test")
	d.AddA("mx.example.test", "127.0.0.2")
	r := runProbe(t, newProber(d, ca, port), Target{Name: "example.test"})
	checkResult(t, r, CapVerify, CauseNone, "")
	if len(r.Hosts) != 1 || r.Hosts[0].Host != "mx.example.test" {
		t.Errorf("hosts %+v, want mx.example.test only", r.Hosts)
	}
}

// A domain without MX records is its own mail server (RFC 5321, 5.1).
func TestProbeImplicitMX(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"example.test"}})
	_, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: serving(cert)}})
	d := fakedns.MustStart(t)
	d.AddA("example.test", "127.0.0.2")
	r := runProbe(t, newProber(d, ca, port), Target{Name: "example.test"})
	checkResult(t, r, CapVerify, CauseNone, "")
	if len(r.Hosts) != 1 {
		t.Fatalf("hosts %+v, want one", r.Hosts)
	}
	checkHost(t, r.Hosts[0], hostWant{host: "example.test", starttls: true, version: tls.VersionTLS13,
		chain: true, name: true, notAfter: cert.Leaf.NotAfter, capability: CapVerify})
}

func TestProbeNXDomain(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("other.test", 10, "mx.other.test")
	r := runProbe(t, newProber(d, nil, 0), Target{Name: "example.test"})
	checkResult(t, r, CapUnknown, CauseNXDomain, "example.test does not exist (NXDOMAIN)")
	if len(r.Hosts) != 0 {
		t.Errorf("probed %+v, want no host", r.Hosts)
	}
}

func TestProbeServFail(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	d.SetRcode("example.test", dns.RcodeServerFailure)
	r := runProbe(t, newProber(d, nil, 0), Target{Name: "example.test"})
	checkResult(t, r, CapUnknown, CauseDNS, "")
	if !strings.Contains(r.Detail, dnsclient.ErrServFail.Error()) || len(r.Hosts) != 0 {
		t.Errorf("detail %q hosts %+v, want a server failure and no host", r.Detail, r.Hosts)
	}
}

// The certificate must be valid for the MX host name, not for the name its
// CNAME points to.
func TestProbeCNAMEdMXHost(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mail.example.test"}})
	_, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: serving(cert)}})
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mail.example.test")
	d.AddCNAME("mail.example.test", "server.hosting.test")
	d.AddA("server.hosting.test", "127.0.0.2")
	r := runProbe(t, newProber(d, ca, port), Target{Name: "example.test"})
	checkResult(t, r, CapVerify, CauseNone, "")
	if len(r.Hosts) != 1 || r.Hosts[0].Host != "mail.example.test" || r.Hosts[0].Addr.Addr() != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("hosts %+v, want mail.example.test at 127.0.0.2", r.Hosts)
	}
}

func TestProbeDNSTimeout(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	d.SetDrop("example.test", true)
	p := newProber(d, nil, 0)
	const dnsTimeout = 300 * time.Millisecond
	p.Resolver = &dnsclient.Client{Servers: []string{d.Addr()}, Timeout: dnsTimeout}
	r := runProbe(t, p, Target{Name: "example.test"})
	checkResult(t, r, CapUnknown, CauseDNS, "")
	if !strings.Contains(r.Detail, dnsclient.ErrTimeout.Error()) {
		t.Errorf("detail %q, want a DNS timeout", r.Detail)
	}
	if r.Duration < dnsTimeout || r.Duration >= testTimeout {
		t.Errorf("probe took %v, want about the DNS timeout %v", r.Duration, dnsTimeout)
	}
}

// Without AllowPrivate, loopback MX addresses are refused before any
// connection is made.
func TestProbePrivateAddressRefused(t *testing.T) {
	t.Parallel()
	servers, port := startMX(t, fakemx.Host{IP: "127.0.0.2"})
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	d.AddA("mx.example.test", "127.0.0.2")
	d.AddAAAA("mx.example.test", "::1")
	p := newProber(d, nil, port)
	p.AllowPrivate = false
	var dials atomic.Int32
	p.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	reg := prometheus.NewRegistry()
	p.Metrics = NewMetrics(reg)
	r := runProbe(t, p, Target{Name: "example.test"})

	checkResult(t, r, CapUnknown, CausePrivateAddress, "")
	if len(r.Hosts) != 2 {
		t.Fatalf("hosts %+v, want the IPv4 and the IPv6 address", r.Hosts)
	}
	for _, h := range r.Hosts {
		checkHost(t, h, hostWant{host: "mx.example.test", capability: CapUnknown, cause: CausePrivateAddress})
		if want := h.Addr.Addr().String() + " is not a public address: refused (set probe.allow_private: true to probe such addresses)"; h.Detail != want {
			t.Errorf("host %s: detail %q, want %q (the address, and the setting that allows it)", h.Addr, h.Detail, want)
		}
	}
	if n := dials.Load(); n != 0 {
		t.Errorf("%d dials, want none", n)
	}
	if n := servers[0].Stats().Connections; n != 0 {
		t.Errorf("fake MX saw %d connections, want none", n)
	}
	if n := testutil.ToFloat64(p.Metrics.privateRefused); n != 2 {
		t.Errorf("private addresses refused metric = %v, want 2", n)
	}
	if n := testutil.ToFloat64(p.Metrics.probes.WithLabelValues("private_address")); n != 1 {
		t.Errorf("probes{cause=private_address} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(p.Metrics.inFlight); n != 0 {
		t.Errorf("probes in flight = %v, want 0", n)
	}
}

func TestProbeNoAddress(t *testing.T) {
	t.Parallel()
	d := fakedns.MustStart(t)
	d.AddMX("example.test", 10, "mx.example.test")
	d.AddTXT("mx.example.test", "exists, but has no address")
	r := runProbe(t, newProber(d, nil, 0), Target{Name: "example.test"})
	checkResult(t, r, CapUnknown, CauseNoAddress, "mx.example.test: mx.example.test has no address")
	if len(r.Hosts) != 1 {
		t.Fatalf("hosts %+v, want one", r.Hosts)
	}
	checkHost(t, r.Hosts[0], hostWant{host: "mx.example.test", capability: CapUnknown, cause: CauseNoAddress})
}

// A "[host]:port" next hop is probed as is: no MX lookup, the target's
// port.
func TestProbeDirect(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"relay.example.test"}})
	_, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: serving(cert)}})
	d := fakedns.MustStart(t)
	d.AddMX("relay.example.test", 10, "mx.elsewhere.test") // must be ignored
	d.AddA("relay.example.test", "127.0.0.2")
	p := newProber(d, ca, 0) // the target's port must win over the default
	target := Target{Name: "relay.example.test", Direct: true, Port: port}
	r := runProbe(t, p, target)
	checkResult(t, r, CapVerify, CauseNone, "")
	if len(r.Hosts) != 1 || r.Hosts[0].Host != "relay.example.test" || int(r.Hosts[0].Addr.Port()) != port {
		t.Errorf("hosts %+v, want relay.example.test port %d", r.Hosts, port)
	}
	for _, q := range d.Queries() {
		if q.Type == dns.TypeMX {
			t.Errorf("MX query %+v for a direct target", q)
		}
	}
	if r.Target != target || target.Key() != "[relay.example.test]:"+strconv.Itoa(port) {
		t.Errorf("result target %+v key %q", r.Target, target.Key())
	}
}

// An IP literal next hop needs no DNS at all, gets no SNI, and is checked
// against the certificate's IP addresses.
func TestProbeDirectIPLiteral(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{IPs: []net.IP{net.ParseIP("127.0.0.2")}})
	servers, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: serving(cert)}})
	d := fakedns.MustStart(t)
	r := runProbe(t, newProber(d, ca, port), Target{Name: "127.0.0.2", Direct: true})
	checkResult(t, r, CapVerify, CauseNone, "")
	if n := len(d.Queries()); n != 0 {
		t.Errorf("%d DNS queries, want none", n)
	}
	if s := waitSession(t, servers[0]); s.ServerName != "" {
		t.Errorf("SNI %q sent for an IP address", s.ServerName)
	}
}

// A domain listing more MX hosts than MaxHosts has only its most preferred
// ones probed.
func TestProbeMaxHosts(t *testing.T) {
	t.Parallel()
	servers, port := startMX(t,
		fakemx.Host{IP: "127.0.0.2"}, fakemx.Host{IP: "127.0.0.3"},
		fakemx.Host{IP: "127.0.0.4"}, fakemx.Host{IP: "127.0.0.5"})
	d := fakedns.MustStart(t)
	for i, pref := range []uint16{40, 10, 30, 20} { // listed out of order
		host := fmt.Sprintf("mx%d.example.test", pref)
		d.AddMX("example.test", pref, host)
		d.AddA(host, fmt.Sprintf("127.0.0.%d", 2+i))
	}
	p := newProber(d, nil, port)
	p.MaxHosts = 2
	r := runProbe(t, p, Target{Name: "example.test"})
	checkResult(t, r, CapNone, CauseNoSTARTTLS, "no STARTTLS at mx10.example.test")
	var got []string
	for _, h := range r.Hosts {
		got = append(got, h.Host)
	}
	if want := []string{"mx10.example.test", "mx20.example.test"}; !slices.Equal(got, want) {
		t.Errorf("probed %q, want %q", got, want)
	}
	for i, n := range []int{0, 1, 0, 1} {
		if got := servers[i].Stats().Connections; got != n {
			t.Errorf("server %s: %d connections, want %d", servers[i].Addr(), got, n)
		}
	}
}

func TestSummarize(t *testing.T) {
	t.Parallel()
	host := func(name string, c Capability, cause Cause) HostReport {
		h := HostReport{Host: name, Capability: c, Cause: cause}
		if cause != CauseNone {
			h.Detail = name + " " + cause.String()
		}
		return h
	}
	verify := host("a", CapVerify, CauseNone)
	selfSigned := host("b", CapEncrypt, CauseUnknownAuthority)
	expired := host("c", CapEncrypt, CauseExpired)
	plain := host("d", CapNone, CauseNoSTARTTLS)
	timeout := host("e", CapUnknown, CauseTimeout)
	refused := host("f", CapUnknown, CauseRefused)
	private := host("g", CapUnknown, CausePrivateAddress)
	noAddr := host("h", CapUnknown, CauseNoAddress)
	tests := []struct {
		name   string
		hosts  []HostReport
		cap    Capability
		cause  Cause
		detail string
	}{
		{"one verified", []HostReport{verify}, CapVerify, CauseNone, ""},
		{"weakest answering host", []HostReport{verify, selfSigned, plain, timeout}, CapNone, CauseNoSTARTTLS, "d no_starttls"},
		{"weakest host listed first", []HostReport{plain, verify}, CapNone, CauseNoSTARTTLS, "d no_starttls"},
		{"tie: first host's cause", []HostReport{expired, selfSigned}, CapEncrypt, CauseExpired, "c expired"},
		{"silent hosts do not count", []HostReport{timeout, verify, refused}, CapVerify, CauseNone, ""},
		{"a host breaking SMTP before STARTTLS does not count", []HostReport{host("s", CapUnknown, CauseSMTP), verify}, CapVerify, CauseNone, ""},
		{"none answered: first host's cause", []HostReport{timeout, refused}, CapUnknown, CauseTimeout, "e: e timeout"},
		{"none answered, no address", []HostReport{noAddr}, CapUnknown, CauseNoAddress, "h: h no_address"},
		{"all private", []HostReport{private, private}, CapUnknown, CausePrivateAddress, "g: g private_address"},
		{"some private", []HostReport{refused, private}, CapUnknown, CauseRefused, "f: f connection_refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := summarize(tt.hosts)
			if r.Capability != tt.cap || r.Cause != tt.cause || r.Detail != tt.detail {
				t.Errorf("summarize = %v, %v, %q; want %v, %v, %q", r.Capability, r.Cause, r.Detail, tt.cap, tt.cause, tt.detail)
			}
			if !slices.Equal(r.Hosts, tt.hosts) {
				t.Errorf("hosts %+v, want %+v", r.Hosts, tt.hosts)
			}
			if h, ok := r.WeakestHost(); ok != tt.cause.Answered() || ok && (h.Cause != tt.cause || h.Capability != tt.cap) {
				t.Errorf("WeakestHost = %+v, %v", h, ok)
			}
		})
	}
}

func TestPickAddrs(t *testing.T) {
	t.Parallel()
	addrs := func(s ...string) []netip.Addr {
		out := []netip.Addr{}
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	tests := []struct {
		in   []netip.Addr
		n    int
		want []netip.Addr
	}{
		{addrs(), 2, addrs()},
		{addrs("192.0.2.1"), 2, addrs("192.0.2.1")},
		{addrs("192.0.2.1", "192.0.2.2", "192.0.2.3"), 2, addrs("192.0.2.1", "192.0.2.2")},
		{addrs("2001:db8::1", "2001:db8::2", "2001:db8::3"), 2, addrs("2001:db8::1", "2001:db8::2")},
		{addrs("192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"), 2, addrs("192.0.2.1", "2001:db8::1")},
		{addrs("2001:db8::1", "192.0.2.1"), 2, addrs("192.0.2.1", "2001:db8::1")},
		{addrs("192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"), 3, addrs("192.0.2.1", "2001:db8::1", "192.0.2.2")},
		{addrs("192.0.2.1", "2001:db8::1", "2001:db8::2", "2001:db8::3"), 3, addrs("192.0.2.1", "2001:db8::1", "2001:db8::2")},
		{addrs("192.0.2.1", "2001:db8::1"), 1, addrs("192.0.2.1")},
		{addrs("2001:db8::1", "192.0.2.1"), 5, addrs("192.0.2.1", "2001:db8::1")},
	}
	for _, tt := range tests {
		if got := pickAddrs(tt.in, tt.n); !slices.Equal(got, tt.want) {
			t.Errorf("pickAddrs(%v, %d) = %v, want %v", tt.in, tt.n, got, tt.want)
		}
	}
}

// pipeDial returns a Dial function that connects the prober over net.Pipe
// to a server playing script, for server behaviour fakemx does not offer.
func pipeDial(t *testing.T, script func(r *bufio.Reader, w io.Writer)) func(context.Context, string, string) (net.Conn, error) {
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	return func(context.Context, string, string) (net.Conn, error) {
		client, server := net.Pipe()
		wg.Go(func() {
			defer server.Close()
			script(bufio.NewReader(server), server)
		})
		return client, nil
	}
}

func TestProbeMisbehavingServers(t *testing.T) {
	t.Parallel()
	// ehlo greets and answers EHLO with ext.
	ehlo := func(r *bufio.Reader, w io.Writer, ext string) {
		io.WriteString(w, "220 mx ESMTP\r\n")
		r.ReadString('\n')
		io.WriteString(w, ext)
	}
	tests := []struct {
		name     string
		script   func(r *bufio.Reader, w io.Writer)
		cap      Capability
		cause    Cause
		starttls bool
	}{
		{"banner refused", func(r *bufio.Reader, w io.Writer) {
			io.WriteString(w, "554 5.3.2 no service\r\n")
			r.ReadString('\n')
		}, CapUnknown, CauseSMTP, false},
		{"not SMTP", func(r *bufio.Reader, w io.Writer) {
			io.WriteString(w, "SSH-2.0-OpenSSH_9.2\r\n")
			r.ReadString('\n')
		}, CapUnknown, CauseSMTP, false},
		{"EHLO refused", func(r *bufio.Reader, w io.Writer) {
			ehlo(r, w, "502 5.5.2 command not recognized\r\n")
			r.ReadString('\n')
		}, CapNone, CauseNoSTARTTLS, false},
		{"closed after EHLO", func(r *bufio.Reader, w io.Writer) {
			io.WriteString(w, "220 mx ESMTP\r\n")
			r.ReadString('\n')
		}, CapUnknown, CauseSMTP, false},
		// Bytes after the STARTTLS reply, before the handshake: the
		// injection of CVE-2011-0411's class. The probe stops there.
		{"data after STARTTLS reply", func(r *bufio.Reader, w io.Writer) {
			ehlo(r, w, "250-mx\r\n250 STARTTLS\r\n")
			r.ReadString('\n')
			io.WriteString(w, "220 2.0.0 go ahead\r\n250 injected\r\n")
			r.ReadString('\n')
		}, CapNone, CauseHandshake, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := &Prober{Dial: pipeDial(t, tt.script), StepTimeout: testStep, Timeout: testTimeout, Helo: "probe.test"}
			r := runProbe(t, p, Target{Name: "192.0.2.1", Direct: true})
			checkResult(t, r, tt.cap, tt.cause, "")
			if len(r.Hosts) != 1 {
				t.Fatalf("hosts %+v, want one", r.Hosts)
			}
			checkHost(t, r.Hosts[0], hostWant{host: "192.0.2.1", starttls: tt.starttls, capability: tt.cap, cause: tt.cause})
			if r.Hosts[0].Addr != netip.MustParseAddrPort("192.0.2.1:25") {
				t.Errorf("address %v, want the default port", r.Hosts[0].Addr)
			}
		})
	}
}

// Cancelling the probe's context ends a step blocked on a silent server
// at once, not at the step timeout.
func TestProbeCancelEndsBlockedStep(t *testing.T) {
	t.Parallel()
	servers, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{Tarpit: true}})
	p := &Prober{AllowPrivate: true, Port: port, StepTimeout: time.Minute, Timeout: time.Minute, Helo: "probe.test"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Report, 1)
	go func() { done <- p.Probe(ctx, Target{Name: "127.0.0.2", Direct: true}) }()
	// Cancel once the probe is connected and stuck waiting for the tarpit.
	for deadline := time.Now().Add(10 * time.Second); servers[0].Stats().Connections == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the probe never connected")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case r := <-done:
		if r.Capability != CapUnknown {
			t.Errorf("cancelled probe = %v, want no evidence", r.Capability)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled probe kept waiting for the tarpit")
	}
}
