// Package fakemx is a fake SMTP server (RFC 5321, with STARTTLS from RFC
// 3207) for tests: the MX host that the prober probes in unit tests, and that
// the real Postfix smtp client delivers to in acceptance tests.
//
// Each server is configured, through Options, to behave like one kind of MX
// host seen in the wild: with or without STARTTLS, with a certificate minted
// by package testca, TLS 1.0 only, STARTTLS advertised last in a long EHLO
// reply, STARTTLS advertised but refused or broken, or a tarpit. It records
// what clients did (sessions, EHLO names, STARTTLS, the negotiated TLS
// version and SNI, delivered messages) so tests can assert on it.
//
// The SMTP state machine is the part of RFC 5321 that a sending MTA uses:
// EHLO/HELO, STARTTLS (after which the client must say EHLO again), MAIL,
// RCPT, DATA with dot-unstuffing, RSET, NOOP and QUIT; other commands get 502.
// Replies are written in order as commands are read, so pipelining clients
// (Postfix with PIPELINING) work. Command lines are limited to 4096 bytes and
// messages to Options.MaxMessageSize (longer lines get 500, larger messages
// 552, and the session goes on); every read and write has a deadline.
//
// Each fake MX listens on a loopback address of its own, such as
// 127.0.0.2:2525, 127.0.0.3:2525 (all of 127.0.0.0/8 is loopback on Linux),
// so that tests can give several MX hosts the same port, as Postfix expects
// of the MX hosts of one domain. Close closes the listener and every
// connection and returns when every goroutine has.
//
// Default values are chosen for the real Postfix client: the default
// Hostname is not "localhost", because Postfix refuses to deliver to a server
// that greets it with its own name ("mail loops back to myself").
package fakemx

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// maxLine bounds a command line, CRLF included (RFC 5321 says 512;
	// this leaves room for long parameters).
	maxLine = 4096
	// maxRecipients bounds RCPT commands per message (RFC 5321 asks
	// servers to take at least 100).
	maxRecipients = 100
	// maxCommands bounds Session.Commands, so that a runaway client
	// cannot use up memory.
	maxCommands = 1000
)

// Options describe how a server behaves. The zero value is a plain SMTP
// server without STARTTLS.
type Options struct {
	// Hostname is the server's name in its banner and EHLO reply
	// (default "fakemx.test").
	Hostname string
	// Banner is the text of the 220 greeting, one entry per line; more
	// than one makes a multi-line greeting. Default: one line,
	// "<Hostname> ESMTP fakemx".
	Banner []string
	// Extensions are the EHLO keywords, with their parameters, such as
	// "SIZE 10485760". nil means PIPELINING, SIZE, 8BITMIME and
	// ENHANCEDSTATUSCODES; an empty non-nil slice means none. STARTTLS is
	// added by the server when it offers it: do not list it here.
	Extensions []string
	// StartTLSLast puts STARTTLS on the last line of the EHLO reply
	// rather than the first, to test that clients read the whole reply.
	// Give many Extensions to make the reply long.
	StartTLSLast bool

	// TLS, if not nil, makes the server offer STARTTLS and use this
	// configuration for it. It must hold a certificate (see package
	// testca). Limit protocol versions with MinVersion and MaxVersion:
	// a TLS 1.0-only server is
	//	&tls.Config{Certificates: ..., MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}
	// Go's TLS client then fails unless its own MinVersion is
	// tls.VersionTLS10 (since Go 1.22 both sides default to TLS 1.2 at
	// least); Postfix 3.7 with OpenSSL 3 (Debian 12) does negotiate it at
	// level may ("TLSv1 with cipher ECDHE-ECDSA-AES128-SHA"). The
	// configuration's SNI callbacks, if any, see the name the client sent;
	// Postfix sends none unless smtp_tls_servername is set.
	TLS *tls.Config
	// RejectStartTLS makes the server offer STARTTLS (TLS may be nil) and
	// answer it with 454 4.7.0, "TLS not available due to temporary
	// reason".
	RejectStartTLS bool
	// BreakHandshake makes the server offer STARTTLS (TLS may be nil),
	// answer it with 220 as if ready, then answer the client's first
	// handshake message with bytes that are not TLS and close the
	// connection, so that the client's handshake fails (Go:
	// tls.RecordHeaderError; OpenSSL: "wrong version number"; Postfix
	// 3.7 at level may defers the mail, dsn 4.7.5 "Cannot start TLS:
	// handshake failure", rather than retrying in plaintext).
	BreakHandshake bool

	// Tarpit makes the server send its banner and then answer nothing,
	// reading and discarding what the client sends until the client
	// closes, Timeout passes without input, or Close.
	Tarpit bool
	// NoBanner makes the server accept connections and never send a
	// banner, otherwise like Tarpit.
	NoBanner bool

	// RcptReply, if set, decides each RCPT TO: given the address (without
	// angle brackets), it returns "" to accept it or a whole reply line
	// such as "550 5.1.1 no such user" or "450 4.2.0 try again later". It
	// is called from connection goroutines, possibly concurrently.
	RcptReply func(rcpt string) string

	// MaxMessageSize bounds the DATA of a message (default 10 MiB); a
	// larger message is refused with 552 after it has been read.
	MaxMessageSize int64
	// Timeout bounds the wait for each command, each DATA line and the
	// TLS handshake, and each write (default 1 minute).
	Timeout time.Duration

	// Logf, if set, receives the SMTP transcript and connection events,
	// for example t.Logf. It must not be called after the test ends:
	// close the server first (MustStart does).
	Logf func(format string, args ...any)
}

// Message is one message the server accepted.
type Message struct {
	// ID is the queue ID given in the 250 reply to DATA.
	ID string
	// From is the MAIL FROM address without angle brackets ("" for the
	// null sender).
	From string
	// To are the accepted RCPT TO addresses, in order.
	To []string
	// Data is the message as received, dot-unstuffed, without the final
	// ".", lines ending as the client sent them (CRLF).
	Data []byte
	// Helo is the EHLO or HELO name in force for the message.
	Helo string
	// RemoteAddr is the client's address.
	RemoteAddr string
	// TLS reports whether the message came over TLS; TLSVersion (such as
	// tls.VersionTLS13), CipherSuite and ServerName (the SNI the client
	// sent, "" for none) describe it.
	TLS         bool
	TLSVersion  uint16
	CipherSuite uint16
	ServerName  string
}

// Session describes one connection, recorded when it ends.
type Session struct {
	RemoteAddr string
	// Helos are the EHLO and HELO names the client gave, in order.
	Helos []string
	// Commands are the command verbs the client sent, upper-cased, in
	// order (the first 1000).
	Commands []string
	// StartTLS reports whether the client sent STARTTLS.
	StartTLS bool
	// TLS reports whether a TLS handshake succeeded; TLSVersion,
	// CipherSuite and ServerName describe it. HandshakeError is the
	// server side's error when the handshake failed.
	TLS            bool
	TLSVersion     uint16
	CipherSuite    uint16
	ServerName     string
	HandshakeError error
	// Messages is how many messages the session delivered.
	Messages int
}

// Stats are counters updated as events happen, unlike Sessions, which are
// recorded when connections end.
type Stats struct {
	// Connections is the number of connections accepted.
	Connections int
	// StartTLS is the number of STARTTLS commands received; Handshakes
	// the number of TLS handshakes that succeeded.
	StartTLS   int
	Handshakes int
	// Messages is the number of messages accepted.
	Messages int
	// Helos are the EHLO and HELO names received, in order.
	Helos []string
}

// Server is a running fake MX. Make one with Start or MustStart.
type Server struct {
	opts Options
	l    net.Listener
	done chan struct{} // closed by Close
	wg   sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	mu       sync.Mutex
	closed   bool
	conns    map[net.Conn]struct{}
	stats    Stats
	messages []Message
	sessions []Session
	// changed is closed and replaced whenever a message or a session is
	// recorded, waking WaitMessages and WaitSessions.
	changed chan struct{}
}

// Start starts a server on addr, a loopback IP address and a port (0 picks a
// free one).
func Start(addr string, opts Options) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("fakemx: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("fakemx: %q is not a loopback address: tests must not listen on the network", host)
	}
	if opts.RejectStartTLS && opts.BreakHandshake {
		return nil, errors.New("fakemx: RejectStartTLS and BreakHandshake exclude each other")
	}
	if opts.Hostname == "" {
		opts.Hostname = "fakemx.test"
	}
	if len(opts.Banner) == 0 {
		opts.Banner = []string{opts.Hostname + " ESMTP fakemx"}
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = 10 << 20
	}
	if opts.Extensions == nil {
		opts.Extensions = []string{"PIPELINING", "SIZE " + strconv.FormatInt(opts.MaxMessageSize, 10), "8BITMIME", "ENHANCEDSTATUSCODES"}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fakemx: %w", err)
	}
	s := &Server{
		opts:    opts,
		l:       l,
		done:    make(chan struct{}),
		conns:   make(map[net.Conn]struct{}),
		changed: make(chan struct{}),
	}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// MustStart starts a server on addr, fails the test if it cannot, and closes
// the server when the test ends.
func MustStart(tb testing.TB, addr string, opts Options) *Server {
	tb.Helper()
	s, err := Start(addr, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("fakemx: close: %v", err)
		}
	})
	return s
}

// Host describes one fake MX host of a group started by StartGroup.
type Host struct {
	// IP is the host's loopback address, such as "127.0.0.2".
	IP      string
	Options Options
}

// StartGroup starts one server per host, all on one port that the kernel
// picks, as the MX hosts of a destination are for Postfix (which uses one
// port, smtp_tcp_port or the next hop's, for all of them). It retries with
// another port if one is taken on some address, and returns the servers in
// the order of hosts.
func StartGroup(hosts ...Host) ([]*Server, error) {
	if len(hosts) == 0 {
		return nil, errors.New("fakemx: StartGroup: no hosts")
	}
	const tries = 10
	var err error
	for range tries {
		var servers []*Server
		servers, err = startGroup(hosts)
		if err == nil {
			return servers, nil
		}
	}
	return nil, err
}

func startGroup(hosts []Host) ([]*Server, error) {
	first, err := Start(net.JoinHostPort(hosts[0].IP, "0"), hosts[0].Options)
	if err != nil {
		return nil, err
	}
	servers := []*Server{first}
	_, port, _ := net.SplitHostPort(first.Addr())
	for _, h := range hosts[1:] {
		s, err := Start(net.JoinHostPort(h.IP, port), h.Options)
		if err != nil {
			for _, s := range servers {
				s.Close()
			}
			return nil, err
		}
		servers = append(servers, s)
	}
	return servers, nil
}

// Addr returns the address the server listens on, such as "127.0.0.2:2525".
func (s *Server) Addr() string { return s.l.Addr().String() }

// Close stops listening, closes every connection and waits for all the
// server's goroutines to return. Sessions cut short are still recorded.
// Later calls return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.done)
		s.closeErr = s.l.Close()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s.closeErr
}

// Messages returns copies of the messages accepted so far, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cloneMessages()
}

// Sessions returns copies of the sessions that have ended, in the order they
// ended.
func (s *Server) Sessions() []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cloneSessions()
}

// cloneMessages deep-copies s.messages, so that callers may keep and change
// the result. s.mu must be held.
func (s *Server) cloneMessages() []Message {
	ms := slices.Clone(s.messages)
	for i := range ms {
		ms[i].To = slices.Clone(ms[i].To)
		ms[i].Data = bytes.Clone(ms[i].Data)
	}
	return ms
}

// cloneSessions deep-copies s.sessions. s.mu must be held.
func (s *Server) cloneSessions() []Session {
	ss := slices.Clone(s.sessions)
	for i := range ss {
		ss[i].Helos = slices.Clone(ss[i].Helos)
		ss[i].Commands = slices.Clone(ss[i].Commands)
	}
	return ss
}

// Stats returns the counters as they are now.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Helos = slices.Clone(st.Helos)
	return st
}

// WaitMessages waits until at least n messages have been accepted and returns
// them all, or returns ctx's error. A message is recorded before the client is
// told it was accepted.
func (s *Server) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	return wait(ctx, s, func() ([]Message, bool) {
		if len(s.messages) < n {
			return nil, false
		}
		return s.cloneMessages(), true
	})
}

// WaitSessions waits until at least n sessions have ended and returns them
// all, or returns ctx's error. Use it before asserting on what a client did
// that it does not wait for a reply to, such as closing the connection.
func (s *Server) WaitSessions(ctx context.Context, n int) ([]Session, error) {
	return wait(ctx, s, func() ([]Session, bool) {
		if len(s.sessions) < n {
			return nil, false
		}
		return s.cloneSessions(), true
	})
}

// wait calls get with s.mu held until it reports true, or ctx ends.
func wait[T any](ctx context.Context, s *Server, get func() (T, bool)) (T, error) {
	for {
		s.mu.Lock()
		v, ok := get()
		wake := s.changed
		s.mu.Unlock()
		if ok {
			return v, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			var zero T
			return zero, fmt.Errorf("fakemx: %w", ctx.Err())
		}
	}
}

// notify wakes waiters. s.mu must be held.
func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// serve accepts connections until Close, backing off on errors such as
// running out of file descriptors.
func (s *Server) serve() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := s.l.Accept()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.opts.Logf("fakemx %s: accept: %v; retrying in %v", s.Addr(), err, backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.stats.Connections++
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

// conn is the state of one SMTP session, owned by its goroutine.
type conn struct {
	s    *Server
	raw  net.Conn
	c    net.Conn // raw, or the TLS connection over it
	r    *bufio.Reader
	w    *bufio.Writer
	tls  *tls.ConnectionState
	sess Session

	helo string // "" until EHLO or HELO
	// The transaction: inMail from MAIL until DATA ends or RSET.
	inMail bool
	from   string
	to     []string
}

var errLineTooLong = errors.New("line too long")

func (s *Server) handle(raw net.Conn) {
	c := &conn{
		s:    s,
		raw:  raw,
		c:    raw,
		r:    bufio.NewReaderSize(raw, maxLine),
		w:    bufio.NewWriter(raw),
		sess: Session{RemoteAddr: raw.RemoteAddr().String()},
	}
	s.opts.Logf("fakemx %s: connection from %s", s.Addr(), c.sess.RemoteAddr)
	defer func() {
		raw.Close()
		s.mu.Lock()
		delete(s.conns, raw)
		s.sessions = append(s.sessions, c.sess)
		s.notify()
		s.mu.Unlock()
		s.wg.Done()
	}()
	err := c.run()
	s.opts.Logf("fakemx %s: %s: session ends: %v", s.Addr(), c.sess.RemoteAddr, err)
}

// run plays the session until QUIT or an error, which it returns.
func (c *conn) run() error {
	o := &c.s.opts
	if o.NoBanner {
		return c.discard()
	}
	if err := c.reply(220, o.Banner...); err != nil {
		return err
	}
	if o.Tarpit {
		return c.discard()
	}
	for {
		line, err := c.readLine()
		if errors.Is(err, errLineTooLong) {
			if err := c.reply(500, "5.5.2 Error: line too long"); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		arg = strings.TrimSpace(arg)
		if len(c.sess.Commands) < maxCommands {
			c.sess.Commands = append(c.sess.Commands, verb)
		}
		switch verb {
		case "EHLO", "HELO":
			err = c.hello(verb, arg)
		case "STARTTLS":
			err = c.startTLS(arg)
		case "MAIL":
			err = c.mail(arg)
		case "RCPT":
			err = c.rcpt(arg)
		case "DATA":
			err = c.data(arg)
		case "RSET":
			c.reset()
			err = c.reply(250, "2.0.0 Ok")
		case "NOOP":
			err = c.reply(250, "2.0.0 Ok")
		case "QUIT":
			c.reply(221, "2.0.0 Bye")
			return nil
		default:
			err = c.reply(502, "5.5.2 Error: command not recognized")
		}
		if err != nil {
			return err
		}
	}
}

// discard reads and drops input until an error: the tarpit.
func (c *conn) discard() error {
	buf := make([]byte, 512)
	for {
		c.raw.SetReadDeadline(time.Now().Add(c.s.opts.Timeout))
		if _, err := c.c.Read(buf); err != nil {
			return err
		}
	}
}

// readLine reads one command line, without its line ending.
func (c *conn) readLine() (string, error) {
	c.raw.SetReadDeadline(time.Now().Add(c.s.opts.Timeout))
	line, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		// Skip the rest of the line and go on, as Postfix does.
		// Closing instead, with input unread, would make the kernel
		// reset the connection and could destroy the reply.
		for errors.Is(err, bufio.ErrBufferFull) {
			c.raw.SetReadDeadline(time.Now().Add(c.s.opts.Timeout))
			_, err = c.r.ReadSlice('\n')
		}
		if err != nil {
			return "", err
		}
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(line), "\r\n")
	c.s.opts.Logf("fakemx %s: %s: C: %s", c.s.Addr(), c.sess.RemoteAddr, s)
	return s, nil
}

// reply writes a reply with one line per text, in the multi-line format for
// more than one.
func (c *conn) reply(code int, texts ...string) error {
	c.raw.SetWriteDeadline(time.Now().Add(c.s.opts.Timeout))
	for i, t := range texts {
		sep := "-"
		if i == len(texts)-1 {
			sep = " "
		}
		c.s.opts.Logf("fakemx %s: %s: S: %d%s%s", c.s.Addr(), c.sess.RemoteAddr, code, sep, t)
		fmt.Fprintf(c.w, "%d%s%s\r\n", code, sep, t)
	}
	return c.w.Flush()
}

// replyLine writes a whole reply line given by Options.RcptReply.
func (c *conn) replyLine(line string) error {
	c.raw.SetWriteDeadline(time.Now().Add(c.s.opts.Timeout))
	c.s.opts.Logf("fakemx %s: %s: S: %s", c.s.Addr(), c.sess.RemoteAddr, line)
	c.w.WriteString(strings.TrimRight(line, "\r\n") + "\r\n")
	return c.w.Flush()
}

func (c *conn) reset() {
	c.inMail, c.from, c.to = false, "", nil
}

func (c *conn) offersStartTLS() bool {
	o := &c.s.opts
	return c.tls == nil && (o.TLS != nil || o.RejectStartTLS || o.BreakHandshake)
}

func (c *conn) hello(verb, arg string) error {
	if arg == "" {
		return c.reply(501, "5.5.4 Syntax: "+verb+" hostname")
	}
	c.reset()
	c.helo = arg
	c.sess.Helos = append(c.sess.Helos, arg)
	c.s.mu.Lock()
	c.s.stats.Helos = append(c.s.stats.Helos, arg)
	c.s.mu.Unlock()
	o := &c.s.opts
	if verb == "HELO" {
		return c.reply(250, o.Hostname)
	}
	lines := append([]string{o.Hostname}, o.Extensions...)
	if c.offersStartTLS() {
		if o.StartTLSLast {
			lines = append(lines, "STARTTLS")
		} else {
			lines = slices.Insert(lines, 1, "STARTTLS")
		}
	}
	return c.reply(250, lines...)
}

func (c *conn) startTLS(arg string) error {
	o := &c.s.opts
	switch {
	case arg != "":
		return c.reply(501, "5.5.4 Syntax: STARTTLS")
	case c.tls != nil:
		return c.reply(503, "5.5.1 Error: TLS already active")
	case !c.offersStartTLS():
		return c.reply(502, "5.5.1 Error: command not implemented")
	}
	c.sess.StartTLS = true
	c.s.mu.Lock()
	c.s.stats.StartTLS++
	c.s.mu.Unlock()
	if o.RejectStartTLS {
		return c.reply(454, "4.7.0 TLS not available due to temporary reason")
	}
	if err := c.reply(220, "2.0.0 Ready to start TLS"); err != nil {
		return err
	}
	if o.BreakHandshake {
		return c.breakHandshake()
	}
	// Input the client pipelined after STARTTLS is dropped with the old
	// reader (RFC 3207, section 4.2, and CVE-2011-0411).
	tc := tls.Server(c.raw, o.TLS)
	c.raw.SetDeadline(time.Now().Add(o.Timeout))
	if err := tc.Handshake(); err != nil {
		c.sess.HandshakeError = err
		return fmt.Errorf("TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	c.tls = &st
	c.sess.TLS = true
	c.sess.TLSVersion = st.Version
	c.sess.CipherSuite = st.CipherSuite
	c.sess.ServerName = st.ServerName
	c.s.mu.Lock()
	c.s.stats.Handshakes++
	c.s.mu.Unlock()
	c.s.opts.Logf("fakemx %s: %s: TLS %s %s SNI %q", c.s.Addr(), c.sess.RemoteAddr,
		tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.ServerName)
	c.c = tc
	c.r = bufio.NewReaderSize(tc, maxLine)
	c.w = bufio.NewWriter(tc)
	c.helo = "" // RFC 3207: the client must say EHLO again.
	c.reset()
	return nil
}

// breakHandshake answers the client's ClientHello with bytes that are not
// TLS. It waits for the ClientHello so that the bytes reach the client's TLS
// layer rather than the read buffer of its SMTP layer, and half-closes rather
// than closes so that unread input cannot turn the close into a reset that
// would discard the bytes before the client reads them.
func (c *conn) breakHandshake() error {
	c.raw.SetReadDeadline(time.Now().Add(c.s.opts.Timeout))
	if _, err := c.r.Read(make([]byte, 512)); err != nil {
		return err
	}
	c.raw.SetWriteDeadline(time.Now().Add(c.s.opts.Timeout))
	if _, err := c.raw.Write([]byte("this is not TLS\r\n")); err != nil {
		return err
	}
	if tc, ok := c.raw.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.discard()
	return errors.New("handshake broken on purpose")
}

// parsePath parses "FROM:<addr> params" or "TO:<addr> params" (prefix given,
// case-insensitive, spaces allowed after the colon) and returns the address
// and the parameters.
func parsePath(prefix, arg string) (addr string, params []string, ok bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", nil, false
	}
	rest := strings.TrimSpace(arg[len(prefix):])
	if !strings.HasPrefix(rest, "<") {
		return "", nil, false
	}
	addr, rest, ok = strings.Cut(rest[1:], ">")
	if !ok {
		return "", nil, false
	}
	return addr, strings.Fields(rest), true
}

func (c *conn) mail(arg string) error {
	switch {
	case c.helo == "":
		return c.reply(503, "5.5.1 Error: send HELO/EHLO first")
	case c.inMail:
		return c.reply(503, "5.5.1 Error: nested MAIL command")
	}
	from, params, ok := parsePath("FROM:", arg)
	if !ok {
		return c.reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
	}
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		if strings.EqualFold(k, "SIZE") {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > c.s.opts.MaxMessageSize {
				return c.reply(552, "5.3.4 Message size exceeds fixed limit")
			}
		}
	}
	c.inMail, c.from = true, from
	return c.reply(250, "2.1.0 Ok")
}

func (c *conn) rcpt(arg string) error {
	if !c.inMail {
		return c.reply(503, "5.5.1 Error: need MAIL command")
	}
	to, _, ok := parsePath("TO:", arg)
	if !ok {
		return c.reply(501, "5.5.4 Syntax: RCPT TO:<address>")
	}
	if len(c.to) >= maxRecipients {
		return c.reply(452, "4.5.3 Error: too many recipients")
	}
	if f := c.s.opts.RcptReply; f != nil {
		if r := f(to); r != "" {
			return c.replyLine(r)
		}
	}
	c.to = append(c.to, to)
	return c.reply(250, "2.1.5 Ok")
}

func (c *conn) data(arg string) error {
	switch {
	case arg != "":
		return c.reply(501, "5.5.4 Syntax: DATA")
	case !c.inMail:
		return c.reply(503, "5.5.1 Error: need MAIL command")
	case len(c.to) == 0:
		return c.reply(554, "5.5.1 Error: no valid recipients")
	}
	if err := c.reply(354, "End data with <CR><LF>.<CR><LF>"); err != nil {
		return err
	}
	body, tooBig, err := c.readData()
	if err != nil {
		return err
	}
	if tooBig {
		c.reset()
		return c.reply(552, "5.3.4 Message size exceeds fixed limit")
	}
	m := Message{
		From:       c.from,
		To:         c.to,
		Data:       body,
		Helo:       c.helo,
		RemoteAddr: c.sess.RemoteAddr,
	}
	if c.tls != nil {
		m.TLS = true
		m.TLSVersion = c.tls.Version
		m.CipherSuite = c.tls.CipherSuite
		m.ServerName = c.tls.ServerName
	}
	c.reset()
	c.sess.Messages++
	c.s.mu.Lock()
	c.s.stats.Messages++
	m.ID = fmt.Sprintf("FAKE%06X", c.s.stats.Messages)
	c.s.messages = append(c.s.messages, m)
	c.s.notify()
	c.s.mu.Unlock()
	return c.reply(250, "2.0.0 Ok: queued as "+m.ID)
}

// readData reads DATA up to the line ".", undoing dot-stuffing (RFC 5321,
// section 4.5.2). Past MaxMessageSize it keeps reading but drops the data
// and reports tooBig.
func (c *conn) readData() (body []byte, tooBig bool, err error) {
	var buf bytes.Buffer
	lineStart := true
	for {
		c.raw.SetReadDeadline(time.Now().Add(c.s.opts.Timeout))
		frag, err := c.r.ReadSlice('\n')
		whole := err == nil // frag ends a line
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, false, err
		}
		if lineStart && whole && (string(frag) == ".\r\n" || string(frag) == ".\n") {
			break
		}
		if lineStart && len(frag) > 0 && frag[0] == '.' {
			frag = frag[1:]
		}
		if !tooBig {
			if int64(buf.Len()+len(frag)) > c.s.opts.MaxMessageSize {
				tooBig = true
				buf = bytes.Buffer{}
			} else {
				buf.Write(frag)
			}
		}
		lineStart = whole
	}
	c.s.opts.Logf("fakemx %s: %s: C: (%d bytes of data)", c.s.Addr(), c.sess.RemoteAddr, buf.Len())
	return buf.Bytes(), tooBig, nil
}
