package acceptance

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
)

// A man in the middle between SMTP clients (the daemon's probe, Postfix's
// smtp client) and a TLS-capable fake MX: the attack that pins defend
// against. Opportunistic TLS trusts the EHLO reply; an attacker on the path
// removes STARTTLS from it (or lets STARTTLS start and breaks the
// handshake), and a client at level may falls back to plaintext.

// mitmMode is what the proxy does to a connection. The mode in force when a
// connection is accepted applies to the whole connection.
type mitmMode int32

const (
	mitmPass  mitmMode = iota // relay both ways unchanged
	mitmStrip                 // remove STARTTLS from EHLO replies
	mitmBreak                 // pass EHLO through; answer STARTTLS with 220 and garbage
)

func (m mitmMode) String() string { return [...]string{"pass-through", "strip", "break"}[m] }

// mitmProxy is a TCP proxy in front of one SMTP server.
type mitmProxy struct {
	l       net.Listener
	backend string
	logf    func(format string, args ...any)
	mode    atomic.Int32
	wg      sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool

	accepted [3]atomic.Int64 // connections, by the mode they got
	stripped atomic.Int64    // EHLO replies from which STARTTLS was removed
	refused  atomic.Int64    // STARTTLS commands refused in strip mode
	broken   atomic.Int64    // handshakes broken in break mode
}

// mitmTimeout bounds a proxied connection as a whole.
const mitmTimeout = 60 * time.Second

// startMITM serves on l, relaying to backend, in pass-through mode until
// told otherwise. It is closed when the test ends.
func startMITM(t *testing.T, l net.Listener, backend string) *mitmProxy {
	t.Helper()
	p := &mitmProxy{
		l:       l,
		backend: backend,
		conns:   map[net.Conn]struct{}{},
		logf: func(format string, args ...any) {
			t.Logf("mitm %s: "+format, append([]any{l.Addr()}, args...)...)
		},
	}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *mitmProxy) setMode(m mitmMode) {
	p.mode.Store(int32(m))
	p.logf("mode now %s", m)
}

// connections returns how many connections the proxy accepted in mode m.
func (p *mitmProxy) connections(m mitmMode) int64 { return p.accepted[m].Load() }

func (p *mitmProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.l.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// track registers a connection to close with the proxy; it reports false
// (and closes c) if the proxy is closed already.
func (p *mitmProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *mitmProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *mitmProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !p.track(c) {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			p.handle(c)
		}()
	}
}

func (p *mitmProxy) handle(client net.Conn) {
	mode := mitmMode(p.mode.Load())
	p.accepted[mode].Add(1)
	server, err := net.DialTimeout("tcp", p.backend, ioTimeout)
	if err != nil {
		p.logf("%s: dial %s: %v", client.RemoteAddr(), p.backend, err)
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	deadline := time.Now().Add(mitmTimeout)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	p.logf("%s: %s", client.RemoteAddr(), mode)

	toClient := &lockedWriter{w: client}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // client -> server
		defer wg.Done()
		defer halfClose(server)
		switch mode {
		case mitmPass:
			io.Copy(server, client)
		default:
			p.clientToServer(mode, client, server, toClient)
		}
	}()
	switch mode { // server -> client
	case mitmStrip:
		p.serverToClientStripped(server, toClient)
	default:
		io.Copy(toClient, server)
	}
	halfClose(client)
	wg.Wait()
}

// clientToServer relays commands line by line and intercepts STARTTLS: in
// strip mode a client that tries it anyway is refused (the server never
// sees it); in break mode it is answered 220, and the client's ClientHello
// gets bytes that are not TLS.
func (p *mitmProxy) clientToServer(mode mitmMode, client, server net.Conn, toClient io.Writer) {
	r := bufio.NewReader(client)
	for {
		line, err := r.ReadString('\n')
		if line != "" && strings.EqualFold(strings.TrimSpace(line), "STARTTLS") {
			switch mode {
			case mitmStrip:
				p.refused.Add(1)
				p.logf("%s: refusing STARTTLS (it was stripped from the EHLO reply)", client.RemoteAddr())
				io.WriteString(toClient, "454 4.7.0 TLS not available due to temporary reason\r\n")
				continue
			case mitmBreak:
				p.broken.Add(1)
				p.logf("%s: STARTTLS: 220, then garbage for the handshake", client.RemoteAddr())
				io.WriteString(toClient, "220 2.0.0 Ready to start TLS\r\n")
				// Wait for the ClientHello so that the garbage reaches the
				// client's TLS layer, then half-close (see
				// fakemx.Options.BreakHandshake).
				buf := make([]byte, 512)
				if r.Buffered() == 0 {
					r.Read(buf)
				}
				io.WriteString(toClient, "this is not TLS\r\n")
				halfClose(client)
				io.Copy(io.Discard, r)
				server.Close()
				return
			}
		}
		if line != "" {
			if _, werr := io.WriteString(server, line); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serverToClientStripped relays the server's replies whole (every line of
// a multi-line reply), with STARTTLS removed from 250 replies.
func (p *mitmProxy) serverToClientStripped(server net.Conn, toClient io.Writer) {
	r := bufio.NewReader(server)
	var reply []string
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			reply = append(reply, line)
		}
		if err != nil {
			io.WriteString(toClient, strings.Join(reply, ""))
			return
		}
		if len(line) >= 4 && line[3] == '-' {
			continue // more lines of this reply follow
		}
		out := reply
		if strings.HasPrefix(line, "250") {
			var removed bool
			out, removed = stripSTARTTLS(reply)
			if removed {
				p.stripped.Add(1)
				p.logf("stripped STARTTLS from %q", strings.Join(reply, ""))
			}
		}
		if _, err := io.WriteString(toClient, strings.Join(out, "")); err != nil {
			return
		}
		reply = nil
	}
}

// stripSTARTTLS removes the STARTTLS line from a multi-line reply (lines
// with their CRLF) and mends the continuation marks: every line but the
// last has "250-", the last "250 ", whichever line STARTTLS was on.
func stripSTARTTLS(reply []string) (out []string, removed bool) {
	for _, line := range reply {
		if len(line) >= 4 && strings.EqualFold(strings.TrimSpace(line[4:]), "STARTTLS") {
			removed = true
			continue
		}
		out = append(out, line)
	}
	if !removed {
		return reply, false
	}
	for i, line := range out {
		sep := byte('-')
		if i == len(out)-1 {
			sep = ' '
		}
		out[i] = setReplySep(line, sep)
	}
	return out, true
}

// setReplySep sets the character after a reply line's code.
func setReplySep(line string, sep byte) string {
	if len(line) < 3 {
		return line
	}
	if len(line) >= 4 && (line[3] == ' ' || line[3] == '-') {
		return line[:3] + string(sep) + line[4:]
	}
	return line[:3] + string(sep) + line[3:] // "250\r\n"
}

// halfClose ends the writing side of c, so that the peer sees EOF while
// what it still sends can be read.
func halfClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
		return
	}
	c.Close()
}

// lockedWriter serialises writes to a client from the two directions.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestMITMStripEHLO checks the proxy's rewriting of EHLO replies, wherever
// STARTTLS is.
func TestMITMStripEHLO(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      []string
		want    []string
		removed bool
	}{
		{
			name:    "second line",
			in:      []string{"250-mx.test\r\n", "250-STARTTLS\r\n", "250-PIPELINING\r\n", "250 8BITMIME\r\n"},
			want:    []string{"250-mx.test\r\n", "250-PIPELINING\r\n", "250 8BITMIME\r\n"},
			removed: true,
		},
		{
			name:    "last line",
			in:      []string{"250-mx.test\r\n", "250-PIPELINING\r\n", "250 STARTTLS\r\n"},
			want:    []string{"250-mx.test\r\n", "250 PIPELINING\r\n"},
			removed: true,
		},
		{
			name:    "only extension",
			in:      []string{"250-mx.test\r\n", "250 starttls\r\n"},
			want:    []string{"250 mx.test\r\n"},
			removed: true,
		},
		{
			name: "none",
			in:   []string{"250-mx.test\r\n", "250 SIZE 1000\r\n"},
			want: []string{"250-mx.test\r\n", "250 SIZE 1000\r\n"},
		},
		{
			name: "one line",
			in:   []string{"250 2.1.0 Ok\r\n"},
			want: []string{"250 2.1.0 Ok\r\n"},
		},
	}
	for _, tc := range tests {
		got, removed := stripSTARTTLS(append([]string(nil), tc.in...))
		if strings.Join(got, "") != strings.Join(tc.want, "") || removed != tc.removed {
			t.Errorf("%s: stripSTARTTLS(%q) = %q, %v; want %q, %v", tc.name, tc.in, got, removed, tc.want, tc.removed)
		}
	}
}

// TestMITMStripSTARTTLS is the attack of issue 5 against the real Postfix
// smtp client. A destination is probed clean through the proxy (in
// pass-through mode) and pinned at verify; then the proxy turns hostile.
// The daemon's next probes see less than the pin (a possible downgrade
// attack: logged, counted, shown by query), the answer stays verify, and
// Postfix, told verify, defers the message instead of sending it in
// plaintext: the fake MX behind the proxy receives nothing.
//
// Each mode has a world of its own: the fake DNS points the destination's
// MX host at the proxy, Postfix's hosts file points the destination itself
// at it, and the fake MX behind it has a certificate from the test CA for
// both names.
func TestMITMStripSTARTTLS(t *testing.T) {
	t.Parallel()
	cases := []mitmCase{
		{
			name: "strip", mode: mitmStrip, domain: "stripped.test", proxyIP: "127.0.0.61", backendIP: "127.0.0.62",
			pinned: "verify", reason: "no STARTTLS at mx.stripped.test",
			deliveryIs: []string{"status=deferred", "dsn=4.7.4", "TLS is required, but was not offered"},
		},
		{
			name: "break", mode: mitmBreak, domain: "broken.test", proxyIP: "127.0.0.63", backendIP: "127.0.0.64",
			pinned: "verify", reason: "TLS handshake failed at mx.broken.test",
			deliveryIs: []string{"status=deferred", "dsn=4.7.5", "Cannot start TLS: handshake failure"},
		},
		// A pin below the rule's upgrade (a self-signed certificate shows
		// encrypt; the rule allows verify): the daemon keeps consulting
		// its probe cache for this destination, so it probes again.
		{
			name: "strip encrypt pin", mode: mitmStrip, domain: "selfstripped.test", proxyIP: "127.0.0.65", backendIP: "127.0.0.66",
			selfSigned: true, pinned: "encrypt", reason: "no STARTTLS at mx.selfstripped.test",
			deliveryIs: []string{"status=deferred", "dsn=4.7.4", "TLS is required, but was not offered"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			runMITM(t, tc)
		})
	}
}

// mitmCase is one attack of TestMITMStripSTARTTLS.
type mitmCase struct {
	name       string
	mode       mitmMode
	domain     string
	proxyIP    string
	backendIP  string
	selfSigned bool     // the fake MX's certificate: self-signed, or from the test CA
	pinned     string   // the level the clean probe pins, and every answer after
	reason     string   // what the pin's downgrade_reason must say
	deliveryIs []string // what Postfix's status line must hold
}

// mitmProbeTTL is probe.ttl in the MITM test: short, so that the daemon
// probes the destination again soon (a lookup after 3/4 of it refreshes the
// result in the background).
const mitmProbeTTL = 2 * time.Second

// downgradeLimit bounds the wait for the daemon to notice the attack: a
// few probe TTLs and probe timeouts.
const downgradeLimit = 20 * time.Second

func runMITM(t *testing.T, tc mitmCase) {
	mode, domain, proxyIP, backendIP := tc.mode, tc.domain, tc.proxyIP, tc.backendIP
	w := newWorld(t)
	mxName := "mx." + domain
	serverTLS := w.verifiedTLS(t, mxName, domain)
	if tc.selfSigned {
		serverTLS = selfSignedTLS(t, mxName, domain)
	}
	want := verify
	if tc.pinned == "encrypt" {
		want = encrypt
	}

	// The proxy takes a port first; the fake MX behind it listens on the
	// same port on its own address, as the world's MX hosts do.
	l, err := net.Listen("tcp", net.JoinHostPort(proxyIP, "0"))
	if err != nil {
		t.Fatalf("proxy listener: %v", err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	backend := fakemx.MustStart(t, net.JoinHostPort(backendIP, port), fakemx.Options{
		Hostname: mxName,
		TLS:      serverTLS,
		Timeout:  30 * time.Second,
		Logf: func(format string, args ...any) {
			t.Logf("fakemx %s (behind the proxy): "+format, append([]any{mxName}, args...)...)
		},
	})
	proxy := startMITM(t, l, backend.Addr())
	if w.port, err = strconv.Atoi(port); err != nil {
		t.Fatal(err)
	}
	w.dns.AddMX(domain, 10, mxName)
	w.dns.AddA(mxName, proxyIP)

	config := w.probeConfig(t, fmt.Sprintf(`defaults:
  level: may
  upgrade: encrypt
destinations:
  - match: %s
    upgrade: verify
`, domain))
	config = strings.Replace(config, "probe:\n", fmt.Sprintf("probe:\n  ttl: %s\n  negative_ttl: %s\n", mitmProbeTTL, mitmProbeTTL/2), 1)
	d := startDaemon(t, config)
	table := d.socketmap(t, "tlspolicy")

	// 1. Clean: probed through the proxy, raised and pinned.
	waitAnswer(t, table, domain, want, []string{may}, probeSettle)
	waitMetric(t, d, "tlspolicyd_pins", map[string]string{"level": tc.pinned}, 1, probeSettle)
	pin, ok := pinsByKey(t, d.configPath)[domain]
	if !ok || pin.Level != tc.pinned || pin.Source != "probe" {
		t.Fatalf("pins list -json: pin of %s = %+v (present %v), want level %s, source probe", domain, pin, ok, tc.pinned)
	}
	if n := proxy.connections(mitmPass); n < 1 {
		t.Fatalf("the probe did not go through the proxy (%d pass-through connections)", n)
	}
	t.Logf("pinned: %+v", pin)

	// 2. The attack starts. Lookups go on; the cached result expires and
	// the daemon probes again, through the hostile proxy. Every answer
	// meanwhile must stay at the pinned level.
	proxy.setMode(mode)
	const downgrades = "tlspolicyd_downgrades_total"
	detected := false
	deadline := time.Now().Add(downgradeLimit)
	lookups := 0
	for !detected && time.Now().Before(deadline) {
		out, code, stderr := postmap(t, domain, table)
		lookups++
		if code != 0 || out != want {
			t.Fatalf("during the attack, postmap -q %s: exit %d, %q (stderr %q), want %q",
				domain, code, out, strings.TrimSpace(stderr), want)
		}
		detected = d.metric(t, downgrades, map[string]string{"level": tc.pinned}) >= 1
		if !detected {
			time.Sleep(lookupStep)
		}
	}
	if !detected {
		t.Errorf("DAEMON: no downgrade detected: %s{level=%q} stayed 0 for %v of lookups (%d lookups, all answered %q) "+
			"after the proxy started to %s. Evidence: probes %v (by cause: no_starttls %v, handshake_failure %v), "+
			"probe cache requests hit %v / stale %v / miss %v, connections through the proxy in %s mode %d "+
			"(0: the daemon never probed again while pinned)",
			downgrades, tc.pinned, downgradeLimit, lookups, want, mode,
			d.metric(t, "tlspolicyd_probes_total", nil),
			d.metric(t, "tlspolicyd_probes_total", map[string]string{"cause": "no_starttls"}),
			d.metric(t, "tlspolicyd_probes_total", map[string]string{"cause": "handshake_failure"}),
			d.metric(t, "tlspolicyd_probe_cache_requests_total", map[string]string{"result": "hit"}),
			d.metric(t, "tlspolicyd_probe_cache_requests_total", map[string]string{"result": "stale"}),
			d.metric(t, "tlspolicyd_probe_cache_requests_total", map[string]string{"result": "miss"}),
			mode, proxy.connections(mode))
	} else {
		t.Logf("downgrade detected after %d lookups; %d connections through the proxy in %s mode", lookups, proxy.connections(mode), mode)
		checkDowngradeShown(t, d, domain, want, pin, tc.reason)
	}
	checkLookup(t, table, lookup{key: domain, want: want}, "")

	// 3. The real Postfix smtp client delivers through the hostile proxy.
	pf := startPostfix(t, postfixOptions{
		PolicyMaps: table,
		CAFile:     w.caFile,
		SMTPPort:   w.port,
		Hosts:      map[string]string{domain: proxyIP},
	})
	before := proxy.connections(mode)
	rcpt := "user@" + domain
	pf.send(t, "sender@"+pf.hostname, rcpt, "must not go out in plaintext")
	status := pf.delivery(t, rcpt)
	t.Logf("maillog: %s", status)
	var missing []string
	for _, part := range tc.deliveryIs {
		if !strings.Contains(status, part) {
			missing = append(missing, part)
		}
	}
	if len(missing) > 0 {
		t.Errorf("delivery to %s through the %s proxy: the status line lacks %q:\n%s", rcpt, mode, missing, status)
	}
	if n := proxy.connections(mode) - before; n < 1 {
		t.Errorf("Postfix did not connect through the proxy (%d new %s connections)", n, mode)
	}
	// Let every session so far end, then look at what the real server got.
	sessions, err := backend.WaitSessions(waitCtx(t, deliveryLimit), backend.Stats().Connections)
	if err != nil {
		t.Fatalf("sessions at the fake MX did not end: %v", err)
	}
	if n := backend.Stats().Messages; n != 0 {
		t.Errorf("the fake MX behind the proxy received %d messages, want none: %+v", n, backend.Messages())
	}
	postfixSessions := 0
	for _, s := range sessions {
		for _, h := range s.Helos {
			if h == pf.hostname {
				postfixSessions++
				break
			}
		}
		for _, c := range s.Commands {
			if c == "MAIL" || c == "RCPT" || c == "DATA" || c == "BDAT" {
				t.Errorf("a session at the fake MX (from %s, EHLO %q) sent %s: %q", s.RemoteAddr, s.Helos, c, s.Commands)
				break
			}
		}
	}
	if postfixSessions == 0 {
		t.Errorf("no session at the fake MX came from Postfix (EHLO %s): the delivery did not reach it through the proxy", pf.hostname)
	}
	if n := proxy.refused.Load(); mode == mitmStrip && n != 0 {
		t.Errorf("%d clients sent STARTTLS although it was stripped", n)
	}
	if q := pf.queue(t); !strings.Contains(q, rcpt) {
		t.Errorf("postqueue -p does not list %s:\n%s", rcpt, q)
	}
	t.Logf("proxy: %d EHLO replies stripped, %d handshakes broken; Postfix sessions at the fake MX: %d, messages: 0",
		proxy.stripped.Load(), proxy.broken.Load(), postfixSessions)

	// The pin stood through it all.
	if p := pinsByKey(t, d.configPath)[domain]; p.Level != tc.pinned || !p.Expires.After(time.Now()) {
		t.Errorf("after the attack the pin of %s is %+v, want level %s and in force (before: %+v)", domain, p, tc.pinned, pin)
	}
	checkLookup(t, table, lookup{key: domain, want: want}, "")
}

// checkDowngradeShown checks what the daemon says of a detected downgrade:
// the pin records it without moving, query shows it, the log warns.
func checkDowngradeShown(t *testing.T, d *daemon, domain, answer string, before pinJSON, reason string) {
	t.Helper()
	p := pinsByKey(t, d.configPath)[domain]
	if p.Level != before.Level || p.LastDowngrade.IsZero() || !strings.Contains(p.DowngradeReason, reason) {
		t.Errorf("pin of %s after the downgrade: %+v; want level %s, last_downgrade set, downgrade_reason with %q", domain, p, before.Level, reason)
	}
	if !p.Expires.Equal(before.Expires) || !p.LastSeen.Equal(before.LastSeen) || !p.FirstSeen.Equal(before.FirstSeen) {
		t.Errorf("the downgrade moved the pin of %s: before %+v, after %+v", domain, before, p)
	}
	code, out := runCLI(t, d.dir, "query", "-config", d.configPath, domain)
	t.Logf("tlspolicyd query %s:\n%s", domain, out)
	if code != 0 || !strings.Contains(out, domain+": "+answer) || !strings.Contains(strings.ToLower(out), "downgrade") ||
		!strings.Contains(out, reason) {
		t.Errorf("tlspolicyd query %s: exit %d; want exit 0, the answer %q, and the downgrade with %q", domain, code, answer, reason)
	}
	log, _ := os.ReadFile(d.logPath)
	if line, ok := findLine(string(log), "possible downgrade attack", domain); !ok {
		t.Errorf("the daemon log has no line with \"possible downgrade attack\" for %s", domain)
	} else {
		t.Logf("daemon log: %s", line)
	}
}

// pinJSON is one pin as `tlspolicyd pins list -json` prints it.
type pinJSON struct {
	Destination     string    `json:"destination"`
	Level           string    `json:"level"`
	FirstSeen       time.Time `json:"first_seen"`
	LastSeen        time.Time `json:"last_seen"`
	Expires         time.Time `json:"expires"`
	Source          string    `json:"source"`
	LastDowngrade   time.Time `json:"last_downgrade"`
	DowngradeReason string    `json:"downgrade_reason"`
}
