package acceptance

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// The addresses of TestPostfixFailsClosed: the stripping proxy that
// Postfix's hosts file names for every destination, and the fake MX behind
// it.
const (
	failProxyIP   = "127.0.0.91"
	failBackendIP = "127.0.0.92"
)

// failClosedRules are the daemon's rules in TestPostfixFailsClosed: the
// destinations of the three failures must be encrypted; plain.test has no
// rule (may). No evidence is consulted (upgrade none), so the answers are
// the rules' and the daemon needs no DNS.
const failClosedRules = `defaults:
  level: may
  upgrade: none
destinations:
  - match: down.test
    level: encrypt
  - match: temp.test
    level: encrypt
  - match: perm.test
    level: encrypt
`

// The maillog parts of a delivery that Postfix deferred because the TLS
// policy lookup failed: it made no connection (relay=none).
var policyLookupDeferred = []string{"relay=none", "dsn=4.7.5", "status=deferred (client TLS configuration problem)"}

// TestPostfixFailsClosed shows that when the daemon cannot give Postfix an
// answer (it is down, it answers TEMP, it answers PERM), the real Postfix
// smtp client defers the mail instead of falling back to its own
// smtp_tls_security_level (may) and sending it in plaintext; and that once
// the daemon answers again, postqueue -f delivers the queued mail over TLS.
//
// Every destination is, for Postfix, the stripping proxy of mitm_test.go in
// front of a fake MX that offers STARTTLS: while the proxy strips, the
// destination takes plaintext, so a delivery under any answer weaker than
// the rules' encrypt would arrive in the clear. The first message (to
// plain.test, may) shows that it does. Each failure then has a message of
// its own, and the fake MX must receive nothing: Postfix makes no
// connection at all when the policy lookup fails. Last, the proxy stops
// stripping (the attacker is gone), the daemon answers encrypt, and the
// three queued messages arrive over TLS.
//
// The phases run in order on one Postfix, whose smtp_tls_policy_maps is
// changed with postconf -e and postfix reload, as an operator would. Mail
// deferred in one phase is retried (every second or two) in the later
// ones, and is deferred again there, as it must be.
func TestPostfixFailsClosed(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", net.JoinHostPort(failProxyIP, "0"))
	if err != nil {
		t.Fatalf("proxy listener: %v", err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	backend := fakemx.MustStart(t, net.JoinHostPort(failBackendIP, port), fakemx.Options{
		Hostname: "mx.failclosed.test",
		TLS:      selfSignedTLS(t, "mx.failclosed.test"),
		Timeout:  30 * time.Second,
		Logf: func(format string, args ...any) {
			t.Logf("fakemx (behind the proxy): "+format, args...)
		},
	})
	proxy := startMITM(t, l, backend.Addr())
	proxy.setMode(mitmStrip)
	smtpPort, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}

	config := "listen:\n  socketmap: @SOCKETMAP@\n  http: @HTTP@\n" + hermetic + failClosedRules
	first := startDaemon(t, config)
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: first.socketmap(t, "tlspolicy"),
		SMTPPort:   smtpPort,
		Hosts: map[string]string{
			"plain.test": failProxyIP,
			"down.test":  failProxyIP,
			"temp.test":  failProxyIP,
			"perm.test":  failProxyIP,
		},
	})
	sender := "sender@" + pf.hostname

	// nothingDelivered checks that, since the control message, no
	// connection went through the proxy and the fake MX accepted nothing
	// more.
	var connsAfterControl int64
	nothingDelivered := func(t *testing.T, phase string) {
		t.Helper()
		if n := proxy.connections(mitmStrip) + proxy.connections(mitmPass) - connsAfterControl; n != 0 {
			t.Errorf("%s: %d connections went through the proxy to the fake MX, want none", phase, n)
		}
		if msgs := backend.Messages(); len(msgs) != 1 {
			var got []string
			for _, m := range msgs {
				got = append(got, fmt.Sprintf("to %q TLS %v", m.To, m.TLS))
			}
			t.Errorf("%s: the fake MX accepted %d messages, want only the control message: %s", phase, len(msgs), strings.Join(got, "; "))
		}
	}

	t.Run("control: may delivers in plaintext through the stripping proxy", func(t *testing.T) {
		checkLookup(t, first.socketmap(t, "tlspolicy"), lookup{key: "plain.test", want: may}, "")
		const rcpt = "user@plain.test"
		pf.send(t, sender, rcpt, "control")
		if status := pf.delivery(t, rcpt); !strings.Contains(status, "status=sent") {
			t.Fatalf("the control message to %s was not sent: %s", rcpt, status)
		}
		m := waitSubject(t, backend, "control")
		if m.TLS {
			t.Fatalf("the control message arrived over TLS: the proxy did not strip STARTTLS, so the test could not show a plaintext delivery")
		}
		if proxy.stripped.Load() == 0 {
			t.Errorf("the proxy stripped no EHLO reply")
		}
		connsAfterControl = proxy.connections(mitmStrip) + proxy.connections(mitmPass)
	})
	if t.Failed() {
		return
	}

	t.Run("daemon down: deferred", func(t *testing.T) {
		// The daemon dies (kill -9): Postfix's connection to it breaks,
		// and new ones are refused. Its port is then held, bound but not
		// listening (connections are still refused), so that no test's
		// listener is handed it while Postfix points there.
		table := first.socketmap(t, "tlspolicy")
		addr := first.listen["socketmap"]
		first.kill()
		holdPort(t, addr)
		const rcpt = "user@down.test"
		pf.send(t, sender, rcpt, "daemon down")
		checkDeferred(t, pf, rcpt, table, "table "+table+" lookup error: Connection refused")
		nothingDelivered(t, "daemon down")
	})

	// The daemon answers TEMP only for a reply it cannot encode (see
	// wire.appendSocketmapReply), which no rule can make: its engine never
	// does. This server stands in for a daemon that cannot decide; the
	// point is what Postfix does with TEMP. It serves until the test ends.
	temp := startTempMap(t)
	t.Run("TEMP: deferred", func(t *testing.T) {
		table := "socketmap:inet:" + temp.addr() + ":tlspolicy"
		pf.setPolicyMaps(t, table)
		const rcpt = "user@temp.test"
		pf.send(t, sender, rcpt, "temp")
		temp.waitKey(t, "temp.test")
		checkDeferred(t, pf, rcpt, table, table+" socketmap server temporary error: test")
		nothingDelivered(t, "TEMP")
	})

	second := startDaemon(t, config)
	t.Run("PERM: deferred", func(t *testing.T) {
		// An unknown map name: the daemon answers PERM unknown map NAME.
		table := second.socketmap(t, "nosuchmap")
		checkLookup(t, table, lookup{key: "perm.test", res: fatal}, "unknown map nosuchmap")
		pf.setPolicyMaps(t, table)
		const rcpt = "user@perm.test"
		pf.send(t, sender, rcpt, "perm")
		checkDeferred(t, pf, rcpt, table, table+" socketmap server permanent error: unknown map nosuchmap")
		nothingDelivered(t, "PERM")
	})
	if t.Failed() {
		return
	}
	for _, rcpt := range []string{"user@down.test", "user@temp.test", "user@perm.test"} {
		if line, ok := findLine(pf.log(), "to=<"+rcpt+">", "status=", "dsn=2."); ok {
			t.Fatalf("%s was delivered while the daemon could not answer: %s", rcpt, line)
		}
	}

	t.Run("daemon back: the queue goes out over TLS", func(t *testing.T) {
		queued := []string{"user@down.test", "user@temp.test", "user@perm.test"}
		q := pf.queue(t)
		for _, rcpt := range queued {
			if !strings.Contains(q, rcpt) {
				t.Errorf("postqueue -p does not list %s:\n%s", rcpt, q)
			}
		}
		table := second.socketmap(t, "tlspolicy")
		for _, d := range []string{"down.test", "temp.test", "perm.test"} {
			checkLookup(t, table, lookup{key: d, want: encrypt}, "")
		}
		encryptAnswers := map[string]string{"map": "tlspolicy", "level": "encrypt"}
		before := second.metric(t, "tlspolicyd_answers_total", encryptAnswers)
		proxy.setMode(mitmPass)
		pf.setPolicyMaps(t, table)
		pf.flush(t)
		for _, rcpt := range queued {
			status := pf.waitLog(t, deliveryLimit, "delivery of "+rcpt, "to=<"+rcpt+">", "status=sent")
			t.Logf("maillog: %s", status)
			domain := rcpt[strings.Index(rcpt, "@")+1:]
			if line, ok := findLine(pf.log(), "TLS connection established to "+domain+"["); ok {
				t.Logf("maillog: %s", line)
			} else {
				t.Errorf("the maillog has no TLS connection to %s", domain)
			}
		}
		for _, subject := range []string{"daemon down", "temp", "perm"} {
			m := waitSubject(t, backend, subject)
			if !m.TLS || m.TLSVersion < tls.VersionTLS12 {
				t.Errorf("the message %q arrived with TLS %v, version %s; want TLS 1.2 or later", subject, m.TLS, tls.VersionName(m.TLSVersion))
			}
		}
		if n := backend.Stats().Messages; n != 4 {
			t.Errorf("the fake MX accepted %d messages, want 4 (the control and the three queued)", n)
		}
		// Postfix asked the daemon for each destination and was told
		// encrypt (each smtp process asks once per destination).
		if n := second.metric(t, "tlspolicyd_answers_total", encryptAnswers) - before; n < 3 {
			t.Errorf("the daemon answered encrypt %v times during the flush, want at least 3 (one per destination)", n)
		}
	})
}

// checkDeferred checks that Postfix deferred rcpt, without connecting to
// it, because its TLS policy lookup in table failed: the first delivery
// status of rcpt says so, the queue holds it, and the maillog has the
// warnings of the failure (failure: how table failed; then the failed
// lookup of rcpt's domain in table, and the TLS policy problem it caused).
func checkDeferred(t *testing.T, pf *postfixInstance, rcpt, table, failure string) {
	t.Helper()
	status := pf.delivery(t, rcpt)
	t.Logf("maillog: %s", status)
	var missing []string
	for _, want := range policyLookupDeferred {
		if !strings.Contains(status, want) {
			missing = append(missing, want)
		}
	}
	if missing != nil {
		t.Fatalf("delivery to %s: the status line lacks %q:\n%s", rcpt, missing, status)
	}
	if q := pf.queue(t); !strings.Contains(q, rcpt) {
		t.Errorf("postqueue -p does not list %s:\n%s", rcpt, q)
	}
	domain := rcpt[strings.Index(rcpt, "@")+1:]
	t.Logf("maillog: %s", pf.waitLog(t, deliveryLimit, "the failure of "+table, failure))
	t.Logf("maillog: %s", pf.waitLog(t, deliveryLimit, "the failed lookup of "+domain,
		table+` lookup error for "`+domain+`"`))
	t.Logf("maillog: %s", pf.waitLog(t, deliveryLimit, "the TLS policy of "+domain,
		"TLS policy lookup for "+domain+"/"+domain+": client TLS configuration problem"))
}

// waitSubject waits until s has accepted a message with subject and
// returns it.
func waitSubject(t *testing.T, s *fakemx.Server, subject string) fakemx.Message {
	t.Helper()
	ctx := waitCtx(t, deliveryLimit)
	for n := 1; ; n++ {
		msgs, err := s.WaitMessages(ctx, n)
		if err != nil {
			t.Fatalf("no message with subject %q at the fake MX: %v", subject, err)
		}
		for _, m := range msgs {
			if strings.Contains(string(m.Data), "Subject: "+subject+"\r\n") {
				return m
			}
		}
		n = len(msgs)
	}
}

// setPolicyMaps points the instance's smtp_tls_policy_maps at table and
// reloads Postfix, waiting until the master has re-read its configuration.
func (pf *postfixInstance) setPolicyMaps(t *testing.T, table string) {
	t.Helper()
	reloads := strings.Count(pf.log(), "reload -- version")
	pf.postconf(t, "-e", "smtp_tls_policy_maps = "+table)
	if out, err := pf.run(t, postfixStartLimit, postfixCmd(t, "postfix"), "-c", pf.conf, "reload"); err != nil {
		t.Fatalf("postfix reload: %v\n%s", err, out)
	}
	eventually(t, postfixStartLimit, "postfix reload", func() (bool, string) {
		n := strings.Count(pf.log(), "reload -- version")
		return n > reloads, "no new \"reload -- version\" line in the maillog"
	})
}

// flush asks Postfix to attempt delivery of the whole queue (postqueue -f).
func (pf *postfixInstance) flush(t *testing.T) {
	t.Helper()
	if out, err := pf.run(t, 30*time.Second, postfixCmd(t, "postqueue"), "-c", pf.conf, "-f"); err != nil {
		t.Fatalf("postqueue -f: %v\n%s", err, out)
	}
}

// holdPort binds addr (127.0.0.1:PORT) for the rest of the test without
// listening: a connection to it is refused, as to a daemon that is down,
// and the kernel hands the port to no socket that asks for a free one
// (port 0), which is how every test here finds its ports. The socket sets
// SO_REUSEADDR, as Go's listeners do, so that it can bind while
// connections of the dead listener linger in TIME_WAIT; a process that
// binds the port by number with SO_REUSEADDR could still take it.
func holdPort(t *testing.T, addr string) {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		t.Fatalf("holdPort %q: want an IPv4 address and port (%v)", addr, err)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("holdPort: socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		t.Fatalf("holdPort: SO_REUSEADDR: %v", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		t.Fatalf("holdPort: bind %s: %v (another process took the port)", addr, err)
	}
}

// tempMap is a socketmap server that answers every request "TEMP test". It
// records the keys it was asked.
type tempMap struct {
	l  net.Listener
	wg sync.WaitGroup

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
	keys    []string
	changed chan struct{} // closed and replaced when a key is recorded
}

// startTempMap serves on a free 127.0.0.1 port until the test ends.
func startTempMap(t *testing.T) *tempMap {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &tempMap{l: l, conns: map[net.Conn]struct{}{}, changed: make(chan struct{})}
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(m.close)
	return m
}

func (m *tempMap) addr() string { return m.l.Addr().String() }

func (m *tempMap) serve() {
	defer m.wg.Done()
	for {
		c, err := m.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			c.Close()
			return
		}
		m.conns[c] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		go m.handle(c)
	}
}

// handle answers the requests of one connection, as Postfix sends them:
// one at a time, on a connection it keeps.
func (m *tempMap) handle(c net.Conn) {
	defer m.wg.Done()
	defer func() {
		m.mu.Lock()
		delete(m.conns, c)
		m.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReader(c)
	for {
		c.SetDeadline(time.Now().Add(mitmTimeout))
		req, err := readNetstring(r, 100000)
		if err != nil {
			return
		}
		_, key, _ := strings.Cut(req, " ")
		m.mu.Lock()
		m.keys = append(m.keys, key)
		close(m.changed)
		m.changed = make(chan struct{})
		m.mu.Unlock()
		if _, err := c.Write([]byte(netstring("TEMP test"))); err != nil {
			return
		}
	}
}

// waitKey waits until the server has been asked for key.
func (m *tempMap) waitKey(t *testing.T, key string) {
	t.Helper()
	ctx := waitCtx(t, deliveryLimit)
	for {
		m.mu.Lock()
		keys, changed := m.keys, m.changed
		m.mu.Unlock()
		for _, k := range keys {
			if k == key {
				return
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("the TEMP socketmap was not asked for %q within %v; asked %q", key, deliveryLimit, keys)
		}
	}
}

func (m *tempMap) close() {
	m.mu.Lock()
	m.closed = true
	m.l.Close()
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}
