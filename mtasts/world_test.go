package mtasts

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// Policies the fake policy hosts serve.
const (
	enforceBody = "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmx: *.mx.example.test\nmax_age: 86400\n"
	testingBody = "version: STSv1\r\nmode: testing\r\nmx: mx1.example.test\r\nmax_age: 86400\r\n"
	noneBody    = "version: STSv1\nmode: none\nmax_age: 86400\n"
)

// answer is what a fake policy host answers for one domain.
type answer struct {
	status   int    // 0: 200
	ctype    string // "": text/plain; charset=utf-8; "-": no Content-Type at all
	body     string
	location string        // for redirects
	block    bool          // wait until the client goes away
	release  chan struct{} // if set, wait for it before answering
}

// world is a small internet for one test: a fake DNS server and an HTTPS
// policy host on 127.0.0.1 with a certificate from a test CA, serving
// "mta-sts.<domain>" for each of its domains, with hits and connections
// counted.
type world struct {
	t     *testing.T
	dns   *fakedns.Server
	ca    *testca.CA
	srv   *httptest.Server
	port  int
	conns atomic.Int32
	hit   chan string // receives the domain of each request, if set before use

	mu      sync.Mutex
	answers map[string]answer // by domain
	hits    map[string]int
}

// newWorld serves domains with a certificate for their "mta-sts." names,
// the TXT record "v=STSv1; id=1" and enforceBody.
func newWorld(t *testing.T, domains ...string) *world {
	t.Helper()
	ca := testca.MustNew(t)
	var names []string
	for _, d := range domains {
		names = append(names, "mta-sts."+d)
	}
	return newWorldCert(t, ca, ca.MustLeaf(t, testca.LeafOptions{DNSNames: names}), domains...)
}

// newWorldCert is newWorld with the server's certificate chosen by the
// test; clients trust ca.
func newWorldCert(t *testing.T, ca *testca.CA, cert tls.Certificate, domains ...string) *world {
	t.Helper()
	w := &world{
		t:       t,
		dns:     fakedns.MustStart(t),
		ca:      ca,
		answers: make(map[string]answer),
		hits:    make(map[string]int),
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(w.serve))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			w.conns.Add(1)
		}
	}
	// Refused handshakes are the point of some tests; keep them quiet.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	w.srv = srv
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	w.port, _ = strconv.Atoi(port)
	for _, d := range domains {
		w.dns.AddA("mta-sts."+d, "127.0.0.1")
		w.dns.AddTXT("_mta-sts."+d, "v=STSv1; id=1")
		w.answers[d] = answer{body: enforceBody}
	}
	return w
}

func (w *world) serve(rw http.ResponseWriter, r *http.Request) {
	domain := strings.TrimPrefix(r.Host, "mta-sts.")
	w.mu.Lock()
	a := w.answers[domain]
	w.hits[domain]++
	hit := w.hit
	w.mu.Unlock()
	if hit != nil {
		hit <- domain
	}
	if r.URL.Path != "/.well-known/mta-sts.txt" {
		http.NotFound(rw, r)
		return
	}
	if a.release != nil {
		select {
		case <-a.release:
		case <-r.Context().Done():
			return
		}
	}
	if a.block {
		<-r.Context().Done()
		return
	}
	switch a.ctype {
	case "":
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	case "-":
		rw.Header()["Content-Type"] = nil // no sniffing either
	default:
		rw.Header().Set("Content-Type", a.ctype)
	}
	if a.location != "" {
		rw.Header().Set("Location", a.location)
	}
	if a.status != 0 {
		rw.WriteHeader(a.status)
	}
	io.WriteString(rw, a.body)
}

// set changes what domain's policy host answers.
func (w *world) set(domain string, a answer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.answers[domain] = a
}

// setTXT replaces domain's MTA-STS TXT records with records.
func (w *world) setTXT(domain string, records ...string) {
	w.dns.Remove("_mta-sts."+domain, dns.TypeANY)
	for _, r := range records {
		w.dns.AddTXT("_mta-sts."+domain, r)
	}
}

// hitsOf returns how many requests domain's policy host received.
func (w *world) hitsOf(domain string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.hits[domain]
}

// fetcher returns a Fetcher that resolves through the fake DNS, trusts the
// test CA, connects to the test server's port and reads clk.
func (w *world) fetcher(clk *clock) *Fetcher {
	return &Fetcher{
		Resolver:     &dnsclient.Client{Servers: []string{w.dns.Addr()}, Timeout: 2 * time.Second},
		Roots:        w.ca.Pool(),
		AllowPrivate: true, // the test server is on loopback
		Timeout:      5 * time.Second,
		Now:          clk.Now,
		Port:         w.port,
	}
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock {
	return &clock{t: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testContext is a context for one test step, with a deadline well past
// any timeout under test.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
