package acceptance

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// maxNetstring is the largest reply a socketmap client accepts.
const maxNetstring = 100000

// rawConn is a client connection that sends and reads with a deadline.
type rawConn struct {
	t    *testing.T
	name string
	c    net.Conn
	r    *bufio.Reader
}

func newRawConn(t *testing.T, d *daemon, listener, name string) *rawConn {
	c := d.dial(t, listener)
	return &rawConn{t: t, name: name, c: c, r: bufio.NewReader(c)}
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	rc.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatalf("%s: sending %q: %v", rc.name, s, err)
	}
}

// reply reads one netstring reply.
func (rc *rawConn) reply() string {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(ioTimeout))
	s, err := readNetstring(rc.r, maxNetstring)
	if err != nil {
		rc.t.Fatalf("%s: reading a netstring reply: %v", rc.name, err)
	}
	return s
}

// line reads one tcp_table reply line, without its newline.
func (rc *rawConn) line() string {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(ioTimeout))
	s, err := rc.r.ReadString('\n')
	if err != nil {
		rc.t.Fatalf("%s: reading a reply line: %v (read %q)", rc.name, err, s)
	}
	return strings.TrimSuffix(s, "\n")
}

// expectClosed checks that the daemon closed the connection after its last
// reply: nothing more to read, and end of file (or a reset, which also
// closes it) within the I/O timeout.
func (rc *rawConn) expectClosed() {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(ioTimeout))
	rest, err := io.ReadAll(rc.r)
	switch {
	case len(rest) > 0:
		rc.t.Errorf("%s: %q after the error reply, want the connection closed", rc.name, rest)
	case err == nil, errors.Is(err, syscall.ECONNRESET):
		// io.ReadAll reports EOF as nil.
	case errors.Is(err, os.ErrDeadlineExceeded):
		rc.t.Errorf("%s: connection still open %v after the error reply, want it closed", rc.name, ioTimeout)
	default:
		rc.t.Errorf("%s: after the error reply: %v, want end of file", rc.name, err)
	}
}

// ask sends one socketmap request on the connection and checks the reply.
func (rc *rawConn) ask(mapName, key, want string) {
	rc.t.Helper()
	rc.send(netstring(mapName + " " + key))
	if got := rc.reply(); got != want {
		rc.t.Errorf("%s: %s %s -> %q, want %q", rc.name, mapName, key, got, want)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, listenInet+hermetic+rules)

	t.Run("socketmap", func(t *testing.T) {
		t.Parallel()
		table := d.socketmap(t, "tlspolicy")
		a := newRawConn(t, d, "socketmap", "connection A")
		a.ask("tlspolicy", "example.org", "OK "+verify)

		// Each bad request gets PERM on its own connection, which is then
		// closed; A, open all along, keeps being answered.
		bad := []struct{ name, request string }{
			{"malformed length", "abc:xyz,"},
			{"oversized", "999999:"},
			{"just over the limit", "100001:"},
			{"no terminating comma", "21:tlspolicy example.orgX"},
		}
		for _, b := range bad {
			c := newRawConn(t, d, "socketmap", "connection "+b.name)
			c.send(b.request)
			if got := c.reply(); !strings.HasPrefix(got, "PERM ") {
				t.Errorf("%s: %q -> %q, want PERM <reason>", c.name, b.request, got)
			}
			c.expectClosed()

			a.ask("tlspolicy", "mx.example.org", "OK "+encrypt)
			checkLookup(t, table, lookup{key: "example.org", want: verify}, "")
		}

		// Pipelined requests on A are answered in order.
		a.send(netstring("tlspolicy .unmatched.test") + netstring("phi unmatched.test") + netstring("nosuch example.org"))
		for _, want := range []string{"NOTFOUND ", "OK " + verify, "PERM unknown map nosuch"} {
			if got := a.reply(); got != want {
				t.Errorf("%s: pipelined reply %q, want %q", a.name, got, want)
			}
		}
		// An unknown map is the client's mistake, not a broken connection.
		a.ask("tlspolicy", "unmatched.test", "OK "+may)
	})

	t.Run("tcp_table", func(t *testing.T) {
		t.Parallel()
		e := newRawConn(t, d, "tcptable", "connection E")
		get := func(key, want string) {
			t.Helper()
			e.send("get " + key + "\n")
			got := e.line()
			if dec, err := url.PathUnescape(got); err == nil {
				got = dec
			}
			if got != want {
				t.Errorf("%s: get %s -> %q (decoded), want %q", e.name, key, got, want)
			}
		}
		get("example.org", "200 "+verify)

		for _, request := range []string{"hello\n", "put example.org may\n"} {
			c := newRawConn(t, d, "tcptable", "connection "+strings.TrimSpace(request))
			c.send(request)
			if got := c.line(); !strings.HasPrefix(got, "400 ") {
				t.Errorf("%s: %q -> %q, want 400 <text>", c.name, request, got)
			}
			c.expectClosed()
			get("mx.example.org", "200 "+encrypt)
		}

		e.send("get .unmatched.test\n")
		if got := e.line(); !strings.HasPrefix(got, "500 ") {
			t.Errorf("%s: get .unmatched.test -> %q, want 500 <text>", e.name, got)
		}
		get("unmatched.test", "200 "+may)
		checkLookup(t, d.tcpTable(t), lookup{key: "example.org", want: verify}, "")
	})
}
