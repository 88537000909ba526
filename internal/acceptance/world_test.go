package acceptance

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// world is the part of the internet a probing test needs, in the test's
// own process: a fake DNS server, a test CA, and a group of fake MX hosts
// that all listen on one port, each on its own 127.0.0.x address (the
// daemon's probe.port and Postfix's smtp_tcp_port are one port for every
// MX host). Tests that do not share a world do not share anything.
type world struct {
	dns    *fakedns.Server
	ca     *testca.CA
	dir    string // world-readable (0755): the CA file, Postfix's files
	caFile string // ca.PEM, readable by Postfix's unprivileged processes
	port   int    // the one port of every fake MX host; 0 before startMX
	mx     map[string]*fakemx.Server
	// tlsa holds the TLSA records of MX hosts (by host name) that
	// startMX publishes once the port is known (see daneMX).
	tlsa map[string]daneRecord
}

// mxHost is one MX host of a destination: the fake DNS gets domain MX host
// and host A ip, and a fake MX with opts listens on ip.
type mxHost struct {
	domain string // the destination, such as "good.test"
	host   string // its MX host name, such as "mx.good.test"
	ip     string // a 127.0.0.x address of its own
	opts   fakemx.Options
}

// newWorld starts a fake DNS server and mints a CA whose certificate is
// written to a world-readable directory (t.TempDir is 0700, and Postfix's
// smtp processes read smtp_tls_CAfile as the postfix user). Everything is
// closed and removed when the test ends.
func newWorld(t *testing.T) *world {
	t.Helper()
	return newWorldDNS(t, "127.0.0.1:0")
}

// newWorldDNS is newWorld with the fake DNS server on dnsAddr. A world
// that Postfix resolves in (postfixOptions.DNS) needs "127.0.0.X:53" with
// an address no other test uses: Postfix asks through the C library's
// resolver, which knows no port but 53.
func newWorldDNS(t *testing.T, dnsAddr string) *world {
	t.Helper()
	w := &world{
		dns:  fakedns.MustStartAt(t, dnsAddr),
		ca:   testca.MustNew(t),
		dir:  sharedTempDir(t),
		mx:   map[string]*fakemx.Server{},
		tlsa: map[string]daneRecord{},
	}
	f, err := w.ca.WritePEM(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	w.caFile = f
	return w
}

// sharedTempDir makes a temporary directory that other users may read and
// search, and removes it when the test ends.
func sharedTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tlspolicyd-acc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startMX starts one fake MX per host, all on one port, and publishes them
// in the fake DNS: an MX record per host (preferences 10, 20, ... in the
// order given for each domain) and an A record per host name. It can be
// called once per world.
func (w *world) startMX(t *testing.T, hosts ...mxHost) {
	t.Helper()
	if w.port != 0 {
		t.Fatal("world.startMX called twice")
	}
	group := make([]fakemx.Host, len(hosts))
	for i, h := range hosts {
		opts := h.opts
		if opts.Logf == nil {
			prefix := fmt.Sprintf("fakemx %s (%s): ", h.host, h.ip)
			opts.Logf = func(format string, args ...any) { t.Logf(prefix+format, args...) }
		}
		if opts.Timeout == 0 {
			opts.Timeout = 30 * time.Second
		}
		group[i] = fakemx.Host{IP: h.ip, Options: opts}
	}
	servers, err := fakemx.StartGroup(group...)
	if err != nil {
		t.Fatalf("starting the fake MX hosts: %v", err)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Close()
		}
	})
	_, port, _ := net.SplitHostPort(servers[0].Addr())
	if w.port, err = strconv.Atoi(port); err != nil {
		t.Fatalf("fake MX address %s: %v", servers[0].Addr(), err)
	}
	pref := map[string]uint16{}
	for i, h := range hosts {
		pref[h.domain] += 10
		w.dns.AddMX(h.domain, pref[h.domain], h.host)
		w.dns.AddA(h.host, h.ip)
		w.mx[h.host] = servers[i]
		if r, ok := w.tlsa[h.host]; ok {
			w.publishTLSA(t, h.domain, h.host, r.cert, r.ad)
		}
	}
}

// server returns the fake MX started for host.
func (w *world) server(t *testing.T, host string) *fakemx.Server {
	t.Helper()
	s := w.mx[host]
	if s == nil {
		t.Fatalf("no fake MX for %s", host)
	}
	return s
}

// verifiedTLS is a server TLS configuration with a certificate from the
// world's CA for names: what the daemon classifies as verify when the MX
// host name is among them, and Postfix reports as "Verified".
func (w *world) verifiedTLS(t *testing.T, names ...string) *tls.Config {
	t.Helper()
	cert := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: names})
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// selfSignedTLS is a server TLS configuration with a self-signed
// certificate for names: encrypt, never verify.
func selfSignedTLS(t *testing.T, names ...string) *tls.Config {
	t.Helper()
	cert, err := testca.SelfSigned(names...)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}

// probeConfig is the daemon configuration of a probing test: the
// socketmap and HTTP listeners, the world's DNS server, probes of the
// world's MX port (loopback allowed, the world's CA trusted), and rules
// (a YAML fragment holding at least the defaults) after it.
func (w *world) probeConfig(t *testing.T, rules string) string {
	t.Helper()
	if w.port == 0 {
		t.Fatal("world.probeConfig before startMX: the probe port is not known")
	}
	return fmt.Sprintf(`listen:
  socketmap: @SOCKETMAP@
  http: @HTTP@
dns:
  servers: [%q]
  timeout: 2s
probe:
  port: %d
  helo: probe.test
  timeout: %s
  wait: %s
  ca_file: %q
  allow_private: true
state:
  path: @DIR@/state.db
mtasts:
  enabled: false
minimum_tls: TLSv1.2
`, w.dns.Addr(), w.port, probeTimeout, probeWait, w.caFile) + rules
}

// The probe settings of every probing test.
const (
	probeWait    = time.Second     // probe.wait: a lookup waits this long for a probe
	probeTimeout = 5 * time.Second // probe.timeout: a whole probe of one domain
	// probeSettle bounds how long a test waits for a probe's evidence to
	// change an answer: well over probeTimeout, so that a slow machine
	// does not fail the test, yet bounded.
	probeSettle = 10 * time.Second
)

// lookupStep is how often the polling helpers below ask again: each ask is
// a postmap process, so not as often as pollStep.
const lookupStep = 100 * time.Millisecond

// waitAnswer asks table for key with postmap until the answer is want. Every
// answer seen before it must be one of allowed (the floor, typically): an
// answer outside want and allowed, a not-found or an error fails the test
// at once, as does not reaching want within timeout. It returns the
// answers seen, in order, without repeats.
func waitAnswer(t *testing.T, table, key, want string, allowed []string, timeout time.Duration) []string {
	t.Helper()
	var seen []string
	deadline := time.Now().Add(timeout)
	for {
		out, code, stderr := postmap(t, key, table)
		if code != 0 {
			t.Fatalf("postmap -q %s %s: exit %d, stdout %q, stderr %q (answers so far %q)",
				key, table, code, out, strings.TrimSpace(stderr), seen)
		}
		if len(seen) == 0 || seen[len(seen)-1] != out {
			seen = append(seen, out)
		}
		if out == want {
			return seen
		}
		ok := false
		for _, a := range allowed {
			ok = ok || out == a
		}
		if !ok {
			t.Fatalf("postmap -q %s %s: got %q, want %q (or, while probing, one of %q); answers so far %q",
				key, table, out, want, allowed, seen)
		}
		if time.Now().After(deadline) {
			t.Fatalf("postmap -q %s %s: still %q after %v, want %q; answers so far %q",
				key, table, out, timeout, want, seen)
		}
		time.Sleep(lookupStep)
	}
}

// waitMetric polls the daemon's /metrics until name{labels} is at least
// min, and fails the test if it is not within timeout.
func waitMetric(t *testing.T, d *daemon, name string, labels map[string]string, min float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := d.metric(t, name, labels)
		if v >= min {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metric %s%v: %v after %v, want at least %v", name, labels, v, timeout, min)
		}
		time.Sleep(lookupStep)
	}
}

// waitCtx is a context for the fake servers' Wait methods, bounded by
// timeout and cancelled when the test ends.
func waitCtx(t *testing.T, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// writeShared writes a world-readable file in dir and returns its path.
func writeShared(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
