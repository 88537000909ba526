package acceptance

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// What the published-policy tests add to a world: MTA-STS policy hosts
// (HTTPS on 127.0.0.x:443 with a certificate from the world's CA, found
// through the fake DNS), DANE records with or without the AD bit, and the
// daemon configuration that turns both sources on.

// publishedConfig is the daemon configuration of a published-policy test:
// as world.probeConfig, plus MTA-STS (the world's CA trusted for policy
// fetches) and DANE (the fake DNS server on 127.0.0.1 is loopback, so its AD
// bit is trusted), with probe.ttl ttl (negative_ttl a third of it),
// probe.wait 2s and dns.min_ttl 1s (records re-read as soon as their TTL
// runs out).
func (w *world) publishedConfig(t *testing.T, ttl time.Duration, rules string) string {
	t.Helper()
	if w.port == 0 {
		t.Fatal("world.publishedConfig before startMX: the probe port is not known")
	}
	return fmt.Sprintf(`listen:
  socketmap: @SOCKETMAP@
  http: @HTTP@
dns:
  servers: [%q]
  timeout: 2s
  min_ttl: 1s
probe:
  port: %d
  helo: probe.test
  timeout: %s
  wait: %s
  ttl: %s
  negative_ttl: %s
  ca_file: %q
  allow_private: true
state:
  path: @DIR@/state.db
mtasts:
  enabled: true
  ca_file: %q
dane:
  enabled: true
postfix_version: "3.7"
minimum_tls: TLSv1.2
`, w.dns.Addr(), w.port, probeTimeout, publishedWait, ttl, max(ttl/3, time.Second), w.caFile, w.caFile) + rules
}

// Settings of the published-policy tests.
const (
	publishedWait = 2 * time.Second // probe.wait
	longTTL       = 6 * time.Hour   // probe.ttl where nothing is refreshed
	// shortTTL is probe.ttl where a test waits for a refresh: a lookup
	// past three quarters of it (2.25 s) gathers again in the background,
	// MTA-STS discovery included.
	shortTTL = 3 * time.Second
	// refreshSettle bounds a wait for a background refresh to change
	// something: a few TTLs.
	refreshSettle = 20 * time.Second
)

// stsPolicy is the text of an MTA-STS policy with max_age one day.
func stsPolicy(mode string, mx ...string) string {
	var b strings.Builder
	b.WriteString("version: STSv1\nmode: " + mode + "\n")
	for _, m := range mx {
		b.WriteString("mx: " + m + "\n")
	}
	b.WriteString("max_age: 86400\n")
	return b.String()
}

// stsSecure is the answer an enforced MTA-STS policy gives with Postfix
// 3.7: matches are the policy's patterns in Postfix form (".x" for "*.x").
func stsSecure(matches ...string) string {
	return "secure match=" + strings.Join(matches, ":") + " servername=hostname protocols=>=TLSv1.2"
}

// daneOnly is the answer for a destination whose every MX host has usable,
// validated TLSA records.
const daneOnly = "dane-only protocols=>=TLSv1.2"

// policyHost is a fake MTA-STS policy host: an HTTPS server on ip:443
// answering https://mta-sts.<domain>/.well-known/mta-sts.txt for its
// domains, with a certificate from the world's CA for every
// "mta-sts.<domain>" name. It counts requests per domain.
type policyHost struct {
	ip        string
	srv       *http.Server
	closeOnce sync.Once

	mu      sync.Mutex
	answers map[string]policyAnswer // by domain
	hits    map[string]int          // requests for the policy, by domain
}

// policyAnswer is what a policy host answers for a domain.
type policyAnswer struct {
	status int // 0: 200, with Content-Type text/plain
	body   string
}

// startPolicyHost serves policies (domain -> policy text) on ip:443 and
// publishes, for each domain, "mta-sts.<domain>" A ip and the TXT record
// "_mta-sts.<domain>" with id 1. The server stops when the test ends.
func (w *world) startPolicyHost(t *testing.T, ip string, policies map[string]string) *policyHost {
	t.Helper()
	h := &policyHost{ip: ip, answers: map[string]policyAnswer{}, hits: map[string]int{}}
	var names []string
	for d, body := range policies {
		names = append(names, "mta-sts."+d)
		h.answers[d] = policyAnswer{body: body}
	}
	sort.Strings(names)
	cert := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: names})
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "443"))
	if err != nil {
		t.Fatalf("MTA-STS policy host on %s:443: %v (binding port 443 needs root)", ip, err)
	}
	h.srv = &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: ioTimeout,
		// Handshake errors from probes of the daemon are not news, and
		// the server may log after the test has ended.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go h.srv.ServeTLS(l, "", "")
	t.Cleanup(h.close)
	for d := range policies {
		w.dns.AddA("mta-sts."+d, ip)
		w.setSTSID(d, "1")
	}
	return h
}

func (h *policyHost) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	host := r.Host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	domain := strings.TrimPrefix(strings.ToLower(host), "mta-sts.")
	if r.URL.Path != "/.well-known/mta-sts.txt" {
		http.NotFound(rw, r)
		return
	}
	h.mu.Lock()
	a, ok := h.answers[domain]
	h.hits[domain]++
	h.mu.Unlock()
	if !ok {
		http.NotFound(rw, r)
		return
	}
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if a.status != 0 {
		rw.WriteHeader(a.status)
	}
	io.WriteString(rw, a.body)
}

// set changes what the host answers for domain.
func (h *policyHost) set(domain string, a policyAnswer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.answers[domain] = a
}

// hitsOf returns how many policy requests for domain the host received.
func (h *policyHost) hitsOf(domain string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hits[domain]
}

// close stops the server: later connections to ip:443 are refused.
func (h *policyHost) close() {
	h.closeOnce.Do(func() { h.srv.Close() })
}

// setSTSID replaces the MTA-STS TXT record of domain with one for id.
func (w *world) setSTSID(domain, id string) {
	w.dns.Remove("_mta-sts."+domain, dns.TypeTXT)
	w.dns.AddTXT("_mta-sts."+domain, "v=STSv1; id="+id+";")
}

// verifiedMX is an MX host "mx.<domain>" on ip with STARTTLS and a
// certificate from the world's CA for its name: the probe finds verify.
func (w *world) verifiedMX(t *testing.T, domain, ip string) mxHost {
	t.Helper()
	host := "mx." + domain
	return mxHost{domain, host, ip, fakemx.Options{Hostname: host, TLS: w.verifiedTLS(t, host)}}
}

// daneMX is verifiedMX, and has startMX publish "_PORT._tcp.mx.<domain>"
// TLSA 3 1 1, PORT being the world's port, with the SHA-256 digest of the
// certificate's public key (a usable DANE-EE record that the server's
// certificate matches); see publishTLSA.
func (w *world) daneMX(t *testing.T, domain, ip string, ad bool) mxHost {
	t.Helper()
	host := "mx." + domain
	cert := w.ca.MustLeaf(t, testca.LeafOptions{DNSNames: []string{host}})
	w.tlsa[host] = daneRecord{cert, ad}
	return mxHost{domain, host, ip, fakemx.Options{Hostname: host,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}}
}

// daneRecord is the TLSA record an MX host publishes: one that cert
// matches, with or without the AD bit.
type daneRecord struct {
	cert tls.Certificate
	ad   bool
}

// tlsaName is the TLSA owner name of host at the world's port: the name
// the daemon (probe.port) and Postfix (smtp_tcp_port) both look up.
func (w *world) tlsaName(host string) string { return fmt.Sprintf("_%d._tcp.%s", w.port, host) }

// publishTLSA publishes "_PORT._tcp.<host>" TLSA 3 1 1, PORT being the
// world's port, with the SHA-256 digest of cert's public key. With ad,
// domain's MX, host's addresses and the TLSA records are answered with the
// AD bit, as a validating resolver answers DNSSEC-signed records.
func (w *world) publishTLSA(t *testing.T, domain, host string, cert tls.Certificate, ad bool) {
	t.Helper()
	if w.port == 0 {
		t.Fatal("world.publishTLSA before startMX: the port is not known")
	}
	tlsa := w.tlsaName(host)
	w.dns.AddTLSA(tlsa, 3, 1, 1, spkiSHA256(t, cert))
	names := []string{domain, host, tlsa}
	if ad {
		for _, name := range names {
			w.dns.SetAD(name, true)
		}
	}
}

// spkiSHA256 is the SHA-256 digest of the public key of cert's leaf, in
// hexadecimal: the data of a TLSA 3 1 1 record (DANE-EE, SubjectPublicKeyInfo,
// SHA-256) that cert matches.
func spkiSHA256(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	spki := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(spki[:])
}

// holdAnswer asks table for key with postmap until done holds, and fails
// the test at the first answer that is not want (a not-found or an error
// included), or when done does not hold within timeout. It returns how
// many lookups it made.
func holdAnswer(t *testing.T, table, key, want string, timeout time.Duration, what string, done func() (bool, string)) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for n := 1; ; n++ {
		out, code, stderr := postmap(t, key, table)
		if code != 0 || out != want {
			t.Fatalf("%s: postmap -q %s %s (lookup %d): exit %d, %q (stderr %q), want %q throughout",
				what, key, table, n, code, out, strings.TrimSpace(stderr), want)
		}
		ok, status := done()
		if ok {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (answer %q all along); last: %s", what, timeout, want, status)
		}
		time.Sleep(lookupStep)
	}
}

// metricAtLeast is a condition for holdAnswer: name{labels} >= atLeast.
func metricAtLeast(t *testing.T, d *daemon, name string, labels map[string]string, atLeast float64) func() (bool, string) {
	return func() (bool, string) {
		v := d.metric(t, name, labels)
		return v >= atLeast, fmt.Sprintf("%s%v = %v, want at least %v", name, labels, v, atLeast)
	}
}

// wantMetric checks that name{labels} is want now.
func wantMetric(t *testing.T, d *daemon, name string, labels map[string]string, want float64) {
	t.Helper()
	if got := d.metric(t, name, labels); got != want {
		t.Errorf("metric %s%v = %v, want %v", name, labels, got, want)
	}
}
