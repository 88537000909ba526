package fakemx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/testca"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// safety bounds every client connection, so that a bug fails a test instead
// of hanging it. Nothing waits for it to pass.
const safety = 10 * time.Second

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), safety)
	t.Cleanup(cancel)
	return c
}

// dial connects net/smtp's client to s; the connection closes when the test
// ends.
func dial(t *testing.T, s *Server) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr(), safety)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(safety))
	c, err := smtp.NewClient(conn, "mx.example.test")
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// text dials s for raw SMTP; it reads the banner.
func text(t *testing.T, s *Server) *textproto.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr(), safety)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(safety))
	tc := textproto.NewConn(conn)
	t.Cleanup(func() { tc.Close() })
	if _, _, err := tc.ReadResponse(220); err != nil {
		t.Fatalf("banner: %v", err)
	}
	return tc
}

// cmd sends line and checks the reply code.
func cmd(t *testing.T, tc *textproto.Conn, line string, want int) string {
	t.Helper()
	show := line
	if len(show) > 60 {
		show = show[:60] + "..."
	}
	if err := tc.PrintfLine("%s", line); err != nil {
		t.Fatalf("%s: %v", show, err)
	}
	code, msg, err := tc.ReadResponse(0)
	if err != nil && code == 0 {
		t.Fatalf("%s: %v", show, err)
	}
	if code != want {
		t.Errorf("%s: got %d %s, want %d", show, code, msg, want)
	}
	return msg
}

// send delivers one message on c, whose Hello is done.
func send(t *testing.T, c *smtp.Client, from string, to []string, body string) {
	t.Helper()
	if err := c.Mail(from); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatalf("DATA write: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
}

func tlsServer(t *testing.T, ca *testca.CA, names ...string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{ca.MustLeaf(t, testca.LeafOptions{DNSNames: names})}}
}

const body = "Subject: test\r\n\r\nHello.\r\n.leading dot\r\n..two dots\r\n"

// What the server must record of body: net/smtp dot-stuffs, the server
// unstuffs.
const wantData = body

func TestDeliverPlain(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{})
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered without TLS configuration")
	}
	send(t, c, "sender@client.test", []string{"a@example.test", "b@example.test"}, body)
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	msgs := s.Messages() // recorded before the 250 to DATA
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.From != "sender@client.test" || !slices.Equal(m.To, []string{"a@example.test", "b@example.test"}) ||
		string(m.Data) != wantData || m.Helo != "client.test" || m.TLS || m.TLSVersion != 0 || m.ID == "" {
		t.Errorf("message %+v", m)
	}
	sess, err := s.WaitSessions(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"}
	if !slices.Equal(sess[0].Commands, want) || sess[0].StartTLS || sess[0].TLS || sess[0].Messages != 1 {
		t.Errorf("session %+v, want commands %v", sess[0], want)
	}
	st := s.Stats()
	if st.Connections != 1 || st.Messages != 1 || st.StartTLS != 0 || !slices.Equal(st.Helos, []string{"client.test"}) {
		t.Errorf("stats %+v", st)
	}
}

func TestDeliverTLS(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	s := MustStart(t, "127.0.0.1:0", Options{Hostname: "mx.example.test", TLS: tlsServer(t, ca, "mx.example.test")})
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not offered")
	}
	if err := c.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test"}); err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered again inside TLS")
	}
	send(t, c, "", []string{"a@example.test"}, body)
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	msgs, err := s.WaitMessages(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if !m.TLS || m.TLSVersion != tls.VersionTLS13 || m.ServerName != "mx.example.test" || m.CipherSuite == 0 ||
		m.From != "" || string(m.Data) != wantData {
		t.Errorf("message %+v", m)
	}
	sess, err := s.WaitSessions(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	se := sess[0]
	if !se.StartTLS || !se.TLS || se.TLSVersion != tls.VersionTLS13 || se.ServerName != "mx.example.test" ||
		!slices.Equal(se.Helos, []string{"client.test", "client.test"}) || se.HandshakeError != nil {
		t.Errorf("session %+v", se)
	}
	if st := s.Stats(); st.StartTLS != 1 || st.Handshakes != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestMultiLineBanner(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{Banner: []string{"mx.example.test ESMTP", "no UCE", "really"}})
	conn, err := net.DialTimeout("tcp", s.Addr(), safety)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(safety))
	tc := textproto.NewConn(conn)
	code, msg, err := tc.ReadResponse(220)
	if err != nil || code != 220 || msg != "mx.example.test ESMTP\nno UCE\nreally" {
		t.Errorf("banner: %d %q %v", code, msg, err)
	}
	// And net/smtp copes with it.
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Errorf("EHLO after a multi-line banner: %v", err)
	}
}

func TestEHLOReply(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	exts := []string{"PIPELINING", "SIZE 1000", "ETRN", "AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"}
	for _, last := range []bool{false, true} {
		t.Run(fmt.Sprintf("StartTLSLast=%v", last), func(t *testing.T) {
			t.Parallel()
			s := MustStart(t, "127.0.0.1:0", Options{
				Hostname:     "mx.example.test",
				Extensions:   exts,
				StartTLSLast: last,
				TLS:          tlsServer(t, ca, "mx.example.test"),
			})
			tc := text(t, s)
			lines := strings.Split(cmd(t, tc, "EHLO client.test", 250), "\n")
			want := append([]string{"mx.example.test", "STARTTLS"}, exts...)
			if last {
				want = append(append([]string{"mx.example.test"}, exts...), "STARTTLS")
			}
			if !slices.Equal(lines, want) {
				t.Errorf("EHLO reply %q, want %q", lines, want)
			}
			// net/smtp reads the whole reply.
			c := dial(t, s)
			if err := c.Hello("client.test"); err != nil {
				t.Fatal(err)
			}
			if ok, _ := c.Extension("STARTTLS"); !ok {
				t.Error("net/smtp does not see STARTTLS")
			}
		})
	}
}

func TestNoExtensions(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{Hostname: "mx.example.test", Extensions: []string{}})
	tc := text(t, s)
	if msg := cmd(t, tc, "EHLO client.test", 250); msg != "mx.example.test" {
		t.Errorf("EHLO reply %q", msg)
	}
}

func TestTarpit(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{Tarpit: true})
	conn, err := net.DialTimeout("tcp", s.Addr(), safety)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(safety))
	c, err := smtp.NewClient(conn, "mx.example.test") // reads the banner
	if err != nil {
		t.Fatalf("banner: %v", err)
	}
	// The short deadline is the client giving up: what is tested.
	conn.SetDeadline(time.Now().Add(100 * time.Millisecond))
	err = c.Hello("client.test")
	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Fatalf("EHLO to a tarpit: %v, want a timeout", err)
	}
	conn.Close()
	sess, err := s.WaitSessions(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(sess[0].Commands) != 0 {
		t.Errorf("tarpit parsed commands: %v", sess[0].Commands)
	}
}

func TestNoBanner(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{NoBanner: true})
	conn, err := net.DialTimeout("tcp", s.Addr(), safety)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(100 * time.Millisecond))
	_, err = conn.Read(make([]byte, 1))
	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Errorf("reading the banner: %v, want a timeout", err)
	}
}

func TestBreakHandshake(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{BreakHandshake: true})
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not offered")
	}
	err := c.StartTLS(&tls.Config{InsecureSkipVerify: true})
	if err == nil {
		t.Fatal("STARTTLS succeeded")
	}
	var recErr tls.RecordHeaderError
	if !errors.As(err, &recErr) {
		t.Errorf("handshake error %v (%T), want a tls.RecordHeaderError", err, err)
	}
	c.Close()
	sess, err := s.WaitSessions(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !sess[0].StartTLS || sess[0].TLS {
		t.Errorf("session %+v", sess[0])
	}
	if st := s.Stats(); st.StartTLS != 1 || st.Handshakes != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestRejectStartTLS(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{RejectStartTLS: true})
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	err := c.StartTLS(&tls.Config{InsecureSkipVerify: true})
	var tpErr *textproto.Error
	if !errors.As(err, &tpErr) || tpErr.Code != 454 {
		t.Fatalf("STARTTLS: %v, want a 454 reply", err)
	}
	// The session goes on in plaintext.
	send(t, c, "s@client.test", []string{"r@example.test"}, body)
	if m := s.Messages(); len(m) != 1 || m[0].TLS {
		t.Errorf("messages %+v", m)
	}
}

func TestHandshakeFailureRecorded(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	s := MustStart(t, "127.0.0.1:0", Options{TLS: tlsServer(t, ca, "mx.example.test")})
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	// The client does not trust the server's CA and aborts the handshake.
	if err := c.StartTLS(&tls.Config{ServerName: "mx.example.test"}); err == nil {
		t.Fatal("STARTTLS with an untrusted certificate succeeded")
	}
	sess, err := s.WaitSessions(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !sess[0].StartTLS || sess[0].TLS || sess[0].HandshakeError == nil {
		t.Errorf("session %+v", sess[0])
	}
}

// TestTLS10Only checks that a TLS 1.0-only server works with Go's crypto/tls
// when the client allows TLS 1.0, and that Go's default client refuses it.
func TestTLS10Only(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cfg := tlsServer(t, ca, "mx.example.test")
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
	s := MustStart(t, "127.0.0.1:0", Options{TLS: cfg})

	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	err := c.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test", MinVersion: tls.VersionTLS10})
	if err != nil {
		t.Fatalf("STARTTLS with a client allowing TLS 1.0: %v", err)
	}
	send(t, c, "s@client.test", []string{"r@example.test"}, body)
	msgs := s.Messages()
	if len(msgs) != 1 || msgs[0].TLSVersion != tls.VersionTLS10 {
		t.Fatalf("messages %+v, want one over TLS 1.0", msgs)
	}
	t.Logf("TLS 1.0 cipher suite: %s", tls.CipherSuiteName(msgs[0].CipherSuite))

	c2 := dial(t, s)
	if err := c2.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	err = c2.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test"})
	if err == nil {
		t.Fatal("Go's default client negotiated with a TLS 1.0-only server")
	}
	t.Logf("default client against TLS 1.0 only: %v", err)
}

// TestTLS12Max checks a server that stops at TLS 1.2, a common case.
func TestTLS12Max(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	cfg := tlsServer(t, ca, "mx.example.test")
	cfg.MaxVersion = tls.VersionTLS12
	s := MustStart(t, "127.0.0.1:0", Options{TLS: cfg})
	c := dial(t, s)
	if err := c.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	sess, err := s.WaitSessions(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if sess[0].TLSVersion != tls.VersionTLS12 {
		t.Errorf("version %s, want TLS 1.2", tls.VersionName(sess[0].TLSVersion))
	}
}

func TestRcptReply(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{RcptReply: func(rcpt string) string {
		switch rcpt {
		case "unknown@example.test":
			return "550 5.1.1 no such user"
		case "later@example.test":
			return "450 4.2.0 try again later"
		}
		return ""
	}})
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("s@client.test"); err != nil {
		t.Fatal(err)
	}
	for rcpt, want := range map[string]int{"unknown@example.test": 550, "later@example.test": 450, "ok@example.test": 0} {
		err := c.Rcpt(rcpt)
		var tpErr *textproto.Error
		switch {
		case want == 0 && err != nil:
			t.Errorf("RCPT %s: %v", rcpt, err)
		case want != 0 && (!errors.As(err, &tpErr) || tpErr.Code != want):
			t.Errorf("RCPT %s: %v, want %d", rcpt, err, want)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(body))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if m := s.Messages(); len(m) != 1 || !slices.Equal(m[0].To, []string{"ok@example.test"}) {
		t.Errorf("messages %+v", m)
	}
}

func TestStateMachine(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{})
	tc := text(t, s)
	cmd(t, tc, "MAIL FROM:<s@client.test>", 503) // before EHLO
	cmd(t, tc, "EHLO", 501)
	cmd(t, tc, "STARTTLS", 502) // not offered
	cmd(t, tc, "VRFY root", 502)
	cmd(t, tc, "NOOP", 250)
	if msg := cmd(t, tc, "HELO client.test", 250); strings.Contains(msg, "\n") {
		t.Errorf("HELO reply is multi-line: %q", msg)
	}
	cmd(t, tc, "RCPT TO:<r@example.test>", 503) // before MAIL
	cmd(t, tc, "DATA", 503)                     // before MAIL
	cmd(t, tc, "MAIL FROM:s@client.test", 501)  // no angle brackets
	cmd(t, tc, "mail from: <s@client.test> SIZE=100 BODY=8BITMIME", 250)
	cmd(t, tc, "MAIL FROM:<s@client.test>", 503) // nested
	cmd(t, tc, "DATA", 554)                      // no recipients
	cmd(t, tc, "RCPT TO:<r@example.test>", 250)
	cmd(t, tc, "RSET", 250)
	cmd(t, tc, "RCPT TO:<r@example.test>", 503) // RSET ended the transaction
	cmd(t, tc, "MAIL FROM:<> SIZE=999999999999", 552)
	cmd(t, tc, "MAIL FROM:<>", 250)
	cmd(t, tc, "RCPT TO:<r@example.test>", 250)
	cmd(t, tc, "DATA", 354)
	if err := tc.PrintfLine("line\r\n."); err != nil {
		t.Fatal(err)
	}
	if code, _, err := tc.ReadResponse(250); err != nil {
		t.Fatalf("end of DATA: %d %v", code, err)
	}
	cmd(t, tc, "QUIT", 221)
	if m := s.Messages(); len(m) != 1 || string(m[0].Data) != "line\r\n" || m[0].From != "" {
		t.Errorf("messages %+v", m)
	}
}

func TestPipelining(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{})
	tc := text(t, s)
	cmd(t, tc, "EHLO client.test", 250)
	// All at once, as Postfix does with PIPELINING; the replies come in
	// order.
	if err := tc.PrintfLine("MAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{250, 250, 250, 354} {
		if _, _, err := tc.ReadResponse(want); err != nil {
			t.Fatalf("pipelined reply: %v", err)
		}
	}
	if err := tc.PrintfLine("x\r\n.\r\nQUIT"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{250, 221} {
		if _, _, err := tc.ReadResponse(want); err != nil {
			t.Fatalf("pipelined reply: %v", err)
		}
	}
}

func TestStartTLSResetsSession(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	s := MustStart(t, "127.0.0.1:0", Options{TLS: tlsServer(t, ca, "mx.example.test")})
	conn, err := net.DialTimeout("tcp", s.Addr(), safety)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(safety))
	tc := textproto.NewConn(conn)
	if _, _, err := tc.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	cmd(t, tc, "EHLO client.test", 250)
	cmd(t, tc, "MAIL FROM:<s@client.test>", 250)
	cmd(t, tc, "STARTTLS extra", 501)
	cmd(t, tc, "STARTTLS", 220)
	tlsConn := tls.Client(conn, &tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test"})
	if err := tlsConn.Handshake(); err != nil {
		t.Fatal(err)
	}
	tc = textproto.NewConn(tlsConn)
	cmd(t, tc, "MAIL FROM:<s@client.test>", 503) // EHLO needed again
	if msg := cmd(t, tc, "EHLO client.test", 250); strings.Contains(msg, "STARTTLS") {
		t.Errorf("STARTTLS offered inside TLS: %q", msg)
	}
	cmd(t, tc, "MAIL FROM:<s@client.test>", 250) // the old transaction is gone
	cmd(t, tc, "STARTTLS", 503)
	cmd(t, tc, "QUIT", 221)
}

func TestLineTooLong(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{})
	tc := text(t, s)
	cmd(t, tc, "NOOP "+strings.Repeat("x", 3*maxLine), 500)
	cmd(t, tc, "NOOP", 250) // the session goes on
	cmd(t, tc, "NOOP "+strings.Repeat("x", maxLine-len("NOOP \r\n")), 250)
}

func TestMessageTooBig(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{MaxMessageSize: 1000})
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("s@client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("r@example.test"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(strings.Repeat("0123456789\r\n", 100) + strings.Repeat("y", 10000) + "\r\n"))
	err = w.Close()
	var tpErr *textproto.Error
	if !errors.As(err, &tpErr) || tpErr.Code != 552 {
		t.Errorf("end of a too big DATA: %v, want 552", err)
	}
	// The session goes on.
	send(t, c, "s@client.test", []string{"r@example.test"}, body)
	if m := s.Messages(); len(m) != 1 || string(m[0].Data) != wantData {
		t.Errorf("messages %+v", m)
	}
}

// TestLongDataLine checks that DATA lines longer than the read buffer are
// kept whole, and that a dot past the buffer boundary is not unstuffed.
func TestLongDataLine(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{})
	c := dial(t, s)
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("z", maxLine-1) + ".after the boundary\r\n"
	send(t, c, "s@client.test", []string{"r@example.test"}, long)
	if m := s.Messages(); len(m) != 1 || string(m[0].Data) != long {
		t.Errorf("got %d messages; data intact: %v", len(m), len(m) == 1 && string(m[0].Data) == long)
	}
}

func TestCloseWithOpenConnections(t *testing.T) {
	t.Parallel()
	s, err := Start("127.0.0.1:0", Options{Tarpit: true})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Start("127.0.0.1:0", Options{})
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for _, srv := range []*Server{s, s2} {
		conn, err := net.DialTimeout("tcp", srv.Addr(), safety)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(safety))
		if _, _, err := textproto.NewConn(conn).ReadResponse(220); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	for _, srv := range []*Server{s, s2} {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := srv.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if n := len(srv.Sessions()); n != 1 {
			t.Errorf("%d sessions recorded, want the one cut short", n)
		}
	}
	for _, conn := range conns {
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Error("connection still open after Close")
		}
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), safety); err == nil {
		t.Error("still listening after Close")
	}
}

func TestStartRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:25", "localhost:0", "127.0.0.1"} {
		if s, err := Start(addr, Options{}); err == nil {
			s.Close()
			t.Errorf("Start(%q): no error", addr)
		}
	}
	if s, err := Start("127.0.0.1:0", Options{RejectStartTLS: true, BreakHandshake: true}); err == nil {
		s.Close()
		t.Error("Start with conflicting options: no error")
	}
}

// TestStartGroup starts fake MX hosts on distinct loopback addresses and one
// port, as the acceptance tests do.
func TestStartGroup(t *testing.T) {
	t.Parallel()
	servers, err := StartGroup(
		Host{IP: "127.0.0.2", Options: Options{Hostname: "mx1.example.test"}},
		Host{IP: "127.0.0.3", Options: Options{Hostname: "mx2.example.test"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		t.Cleanup(func() { s.Close() })
	}
	_, port1, _ := net.SplitHostPort(servers[0].Addr())
	_, port2, _ := net.SplitHostPort(servers[1].Addr())
	if !strings.HasPrefix(servers[0].Addr(), "127.0.0.2:") || !strings.HasPrefix(servers[1].Addr(), "127.0.0.3:") || port1 != port2 {
		t.Fatalf("addresses %s, %s", servers[0].Addr(), servers[1].Addr())
	}
	for i, s := range servers {
		tc := text(t, s)
		if msg := cmd(t, tc, "EHLO client.test", 250); !strings.HasPrefix(msg, fmt.Sprintf("mx%d.example.test", i+1)) {
			t.Errorf("%s: EHLO reply %q", s.Addr(), msg)
		}
	}
	if _, err := StartGroup(Host{IP: "127.0.0.2"}, Host{IP: "192.0.2.1"}); err == nil {
		t.Error("StartGroup with a non-loopback address: no error")
	}
	if _, err := StartGroup(); err == nil {
		t.Error("StartGroup with no hosts: no error")
	}
}

// TestConcurrentDeliveries delivers in parallel while reading the records;
// run with -race.
func TestConcurrentDeliveries(t *testing.T) {
	t.Parallel()
	ca := testca.MustNew(t)
	s := MustStart(t, "127.0.0.1:0", Options{TLS: tlsServer(t, ca, "mx.example.test")})
	const n = 10
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c := dial(t, s)
			if err := c.Hello(fmt.Sprintf("client%d.test", i)); err != nil {
				t.Error(err)
				return
			}
			if i%2 == 0 {
				if err := c.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test"}); err != nil {
					t.Error(err)
					return
				}
			}
			send(t, c, "s@client.test", []string{fmt.Sprintf("r%d@example.test", i)}, body)
			c.Quit()
		})
		wg.Go(func() {
			s.Messages()
			s.Sessions()
			s.Stats()
		})
	}
	msgs, err := s.WaitMessages(ctx(t), n)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	tlsCount := 0
	for _, m := range msgs {
		if m.TLS {
			tlsCount++
		}
	}
	if len(msgs) != n || tlsCount != n/2 {
		t.Errorf("%d messages, %d over TLS; want %d and %d", len(msgs), tlsCount, n, n/2)
	}
	if _, err := s.WaitSessions(ctx(t), n); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Connections != n || st.Handshakes != n/2 || len(st.Helos) != n+n/2 {
		t.Errorf("stats %+v", st)
	}
}

func TestWaitContext(t *testing.T) {
	t.Parallel()
	s := MustStart(t, "127.0.0.1:0", Options{})
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.WaitMessages(c, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitMessages: %v", err)
	}
	if _, err := s.WaitSessions(c, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitSessions: %v", err)
	}
}

func TestLogf(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var log []string
	s := MustStart(t, "127.0.0.1:0", Options{Logf: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		log = append(log, fmt.Sprintf(format, args...))
	}})
	tc := text(t, s)
	cmd(t, tc, "QUIT", 221)
	if _, err := s.WaitSessions(ctx(t), 1); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	joined := strings.Join(log, "\n")
	for _, want := range []string{"C: QUIT", "S: 221 2.0.0 Bye", "S: 220 fakemx.test ESMTP fakemx"} {
		if !strings.Contains(joined, want) {
			t.Errorf("log lacks %q:\n%s", want, joined)
		}
	}
}
