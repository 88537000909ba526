package tlsprobe

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// probeAll probes every target at once and returns the reports in order.
func probeAll(p *Prober, targets []Target) []Report {
	out := make([]Report, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { out[i] = p.Probe(context.Background(), t) })
	}
	wg.Wait()
	return out
}

// sharedWorld is n domains, shared0.test to shared<n-1>.test, whose one
// MX host is mx.provider.test at 127.0.0.2, serving a certificate for that
// name, or what tlsConfig gives, if not nil.
func sharedWorld(t *testing.T, n int, tlsConfig func(*testca.CA) *tls.Config) (*fakedns.Server, *testca.CA, *fakemx.Server, int, []Target) {
	t.Helper()
	ca := testca.MustNew(t)
	cfg := serving(ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.provider.test"}}))
	if tlsConfig != nil {
		cfg = tlsConfig(ca)
	}
	servers, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{Hostname: "mx.provider.test", TLS: cfg, Logf: func(string, ...any) {}}})
	d := fakedns.MustStart(t)
	d.AddA("mx.provider.test", "127.0.0.2")
	targets := make([]Target, n)
	for i := range targets {
		name := fmt.Sprintf("shared%d.test", i)
		d.AddMX(name, 10, "mx.provider.test")
		targets[i] = Target{Name: name}
	}
	return d, ca, servers[0], port, targets
}

// Domains that share an MX host share its result: 200 domains probed at
// once cost one STARTTLS session with the host, and each is verified.
func TestHostsShareOneMX(t *testing.T) {
	d, ca, mx, port, targets := sharedWorld(t, 200, nil)
	reg := prometheus.NewRegistry()
	p := newProber(d, ca, port)
	p.Metrics = NewMetrics(reg)
	p.Hosts = NewHosts(HostsConfig{TTL: time.Hour, NegativeTTL: time.Minute, Metrics: p.Metrics})
	for i, r := range probeAll(p, targets) {
		if r.Capability != CapVerify || len(r.Hosts) != 1 || r.Hosts[0].Host != "mx.provider.test" {
			t.Fatalf("%s: %v (%s) from %d hosts, want verify from mx.provider.test", targets[i].Name, r.Capability, r.Detail, len(r.Hosts))
		}
	}
	if n := mx.Stats().Connections; n != 1 {
		t.Errorf("the MX saw %d connections for 200 domains, want 1", n)
	}
	if got := testutil.ToFloat64(p.Metrics.hostResults.WithLabelValues("shared")) + testutil.ToFloat64(p.Metrics.hostResults.WithLabelValues("probed")); got != 200 {
		t.Errorf("host results used: %v, want 200 (one per domain)", got)
	}
	if got := testutil.ToFloat64(p.Metrics.hostProbes.WithLabelValues("none")); got != 1 {
		t.Errorf("tlspolicyd_host_probes_total{cause=none} = %v, want 1", got)
	}
	if p.Hosts.Len() != 1 {
		t.Errorf("hosts known: %d, want 1", p.Hosts.Len())
	}
	if got := testutil.ToFloat64(p.Metrics.shared); got != 199 {
		t.Errorf("tlspolicyd_probes_shared_total = %v, want 199 (every domain but the one whose probe made the connection)", got)
	}
}

// The every-MX rule holds across shared results: a domain whose second MX
// host has no STARTTLS answers none, while the domains of the good host
// alone stay verified; and the bad host was asked once for all of them.
func TestHostsFailingSecondMX(t *testing.T) {
	ca := testca.MustNew(t)
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx1.provider.test"}})
	servers, port := startMX(t,
		fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: serving(cert), Logf: func(string, ...any) {}}},
		fakemx.Host{IP: "127.0.0.3", Options: fakemx.Options{Logf: func(string, ...any) {}}}, // no STARTTLS
	)
	d := fakedns.MustStart(t)
	d.AddA("mx1.provider.test", "127.0.0.2")
	d.AddA("mx2.provider.test", "127.0.0.3")
	var targets []Target
	for i := range 40 {
		name := fmt.Sprintf("d%d.test", i)
		d.AddMX(name, 10, "mx1.provider.test")
		if i%2 == 1 {
			d.AddMX(name, 20, "mx2.provider.test")
		}
		targets = append(targets, Target{Name: name})
	}
	p := newProber(d, ca, port)
	p.Hosts = NewHosts(HostsConfig{TTL: time.Hour, NegativeTTL: time.Minute})
	for i, r := range probeAll(p, targets) {
		want := CapVerify
		if i%2 == 1 {
			want = CapNone
		}
		if r.Capability != want {
			t.Errorf("%s: %v (%s), want %v", targets[i].Name, r.Capability, r.Detail, want)
		}
	}
	if n := servers[1].Stats().Connections; n != 1 {
		t.Errorf("the MX without STARTTLS saw %d connections for 20 domains, want 1", n)
	}
}

// A host's change is seen by every domain within the TTL: results are
// shared for three quarters of it (when the findings cache refreshes a
// domain), then the host is probed again.
func TestHostsCertificateChangeAfterTTL(t *testing.T) {
	// The MX serves whatever cert holds now.
	var cert atomic.Pointer[tls.Certificate]
	d, ca, mx, port, targets := sharedWorld(t, 2, func(*testca.CA) *tls.Config {
		return &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.Load(), nil }}
	})
	good := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"mx.provider.test"}})
	cert.Store(&good)
	clock := &fakeClock{now: time.Now()}
	p := newProber(d, ca, port)
	p.Now = clock.Now
	const ttl = time.Hour
	p.Hosts = NewHosts(HostsConfig{TTL: ttl, NegativeTTL: time.Minute, Now: clock.Now})

	if r := p.Probe(context.Background(), targets[0]); r.Capability != CapVerify {
		t.Fatalf("first domain: %v (%s), want verify", r.Capability, r.Detail)
	}
	wrong := ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{"other.test"}})
	cert.Store(&wrong)
	clock.Advance(ttl * 3 / 4 / 2)
	r := p.Probe(context.Background(), targets[1])
	if r.Capability != CapVerify || mx.Stats().Connections != 1 {
		t.Fatalf("second domain within the shared window: %v after %d connections, want verify from the shared result after 1",
			r.Capability, mx.Stats().Connections)
	}
	if want := clock.Now().Add(-ttl * 3 / 4 / 2); !r.ProbedAt.Equal(want) {
		t.Errorf("second domain's evidence dated %v, want its shared host result's time %v", r.ProbedAt, want)
	}
	clock.Advance(ttl * 3 / 4 / 2)
	for _, tg := range targets {
		if r := p.Probe(context.Background(), tg); r.Capability != CapEncrypt || r.Cause != CauseNameMismatch {
			t.Errorf("%s after three quarters of the TTL: %v, %v, want encrypt (the new certificate's name mismatch)", tg.Name, r.Capability, r.Cause)
		}
	}
	if n := mx.Stats().Connections; n != 2 {
		t.Errorf("the MX saw %d connections, want 2 (one per TTL window)", n)
	}
}

// countingDial counts the connections open at once to each address.
type countingDial struct {
	mu        sync.Mutex
	open, max map[string]int
}

func (c *countingDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.open[addr]++
	c.max[addr] = max(c.max[addr], c.open[addr])
	c.mu.Unlock()
	// Held open a while, so that connections allowed at once do overlap.
	time.Sleep(30 * time.Millisecond)
	return &countedConn{Conn: conn, done: func() { c.mu.Lock(); c.open[addr]--; c.mu.Unlock() }}, nil
}

type countedConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.done)
	return c.Conn.Close()
}

// Polite probing: however many host names share an address, at most
// PerAddress probes talk to it at once.
func TestHostsPerAddressLimit(t *testing.T) {
	ca := testca.MustNew(t)
	var names []string
	for i := range 12 {
		names = append(names, fmt.Sprintf("mx%d.provider.test", i))
	}
	cert := ca.MustLeaf(t, testca.LeafOptions{DNSNames: names})
	_, port := startMX(t, fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: serving(cert), Logf: func(string, ...any) {}}})
	d := fakedns.MustStart(t)
	var targets []Target
	for i, n := range names {
		d.AddA(n, "127.0.0.2")
		d.AddMX(fmt.Sprintf("d%d.test", i), 10, n)
		targets = append(targets, Target{Name: fmt.Sprintf("d%d.test", i)})
	}
	cd := &countingDial{open: map[string]int{}, max: map[string]int{}}
	p := newProber(d, ca, port)
	p.Dial = cd.dial
	p.Hosts = NewHosts(HostsConfig{TTL: time.Hour, NegativeTTL: time.Minute, PerAddress: 2})
	for i, r := range probeAll(p, targets) {
		if r.Capability != CapVerify {
			t.Errorf("%s: %v (%s), want verify", targets[i].Name, r.Capability, r.Detail)
		}
	}
	addr := fmt.Sprintf("127.0.0.2:%d", port)
	if got := cd.max[addr]; got != 2 {
		t.Errorf("at most %d connections at once to %s, want 2 (PerAddress; 12 host names waited their turn)", got, addr)
	}
}

// A host that did not answer is left alone for the negative TTL, whatever
// domain asks, then tried again.
func TestHostsBackOffAfterFailure(t *testing.T) {
	d, ca, mx, port, targets := sharedWorld(t, 3, nil)
	mx.Close() // nothing listens: connection refused
	clock := &fakeClock{now: time.Now()}
	p := newProber(d, ca, port)
	p.Now = clock.Now
	dials := 0
	p.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials++
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	p.Hosts = NewHosts(HostsConfig{TTL: time.Hour, NegativeTTL: time.Minute, Now: clock.Now})
	for _, tg := range targets[:2] {
		if r := p.Probe(context.Background(), tg); !r.Failed() {
			t.Fatalf("%s: %v, want a failed probe (nothing listens)", tg.Name, r.Capability)
		}
	}
	if dials != 1 {
		t.Errorf("%d dials for two domains of a refusing host, want 1 (backing off)", dials)
	}
	clock.Advance(time.Minute)
	p.Probe(context.Background(), targets[2])
	if dials != 2 {
		t.Errorf("%d dials after the negative TTL, want 2", dials)
	}
}

// A host's addresses are looked up once per AddrTTL, not once per domain
// it serves, and again after it.
func TestHostsAddressesShared(t *testing.T) {
	d, ca, _, port, targets := sharedWorld(t, 50, nil)
	clock := &fakeClock{now: time.Now()}
	p := newProber(d, ca, port)
	p.Now = clock.Now
	p.Hosts = NewHosts(HostsConfig{TTL: time.Hour, NegativeTTL: time.Minute, AddrTTL: time.Minute, Now: clock.Now})
	probeAll(p, targets)
	if n := d.Count("mx.provider.test.", dns.TypeA); n != 1 {
		t.Errorf("%d A queries for the MX host of 50 domains, want 1", n)
	}
	clock.Advance(time.Minute)
	p.Probe(context.Background(), Target{Name: "shared0.test"})
	if n := d.Count("mx.provider.test.", dns.TypeA); n != 2 {
		t.Errorf("%d A queries after AddrTTL, want 2", n)
	}
}
