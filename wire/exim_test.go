package wire

import (
	"io"
	"net"
	"strings"
	"testing"
)

// eximAsk sends one request the way ${readsocket} does (write, then
// half-close) and returns the whole reply up to the server's close.
func eximAsk(t *testing.T, addr, req string) string {
	t.Helper()
	c := dialWire(t, "tcp", addr)
	c.send(req)
	c.conn.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c.r)
	if err != nil {
		t.Fatalf("reading reply to %q: %v", req, err)
	}
	return string(b)
}

func TestEximServer(t *testing.T) {
	t.Parallel()
	ws := startWireServer(t, NewEximCodec(wireLookup(fakeAnswers), fakeRcpt{}), nil)
	for _, tc := range []struct{ req, want string }{
		{"tlspolicy strict.test\n", "OK verify match=strict.test\n"},
		{"tlspolicy strict.test", "OK verify match=strict.test\n"}, // no newline: ended by the half-close
		{"tlspolicy notfound.test\n", "NOTFOUND\n"},
		{"tlspolicy temp.test\n", "TEMP probe failed\n"},
		{"tlspolicy key with spaces\n", "OK verify match=key with spaces\n"},
		{"nosuch example.org\n", "PERM unknown map nosuch\n"},
		{"rcpt.check <doctor@clinic.test> <a@plain.test>\n", "REJECT 5.7.10 no STARTTLS (sender doctor@clinic.test)\n"},
		{"rcpt.check <> <a@plain.test>\n", "REJECT 5.7.10 no STARTTLS (sender )\n"},
		{"rcpt.check <doctor@clinic.test> <a@good.test>\n", "DUNNO\n"},
		{"rcpt.check onlyone\n", "PERM malformed exim request: expected \"rcpt.check <SENDER> <RECIPIENT>\"\n"},
		{"garbage\n", "PERM malformed exim request: expected \"MAP KEY\" or \"rcpt.check <SENDER> <RECIPIENT>\"\n"},
		{strings.Repeat("x", 5000) + "\n", "PERM malformed exim request: request longer than 4096 bytes\n"},
	} {
		if got := eximAsk(t, ws.addr, tc.req); got != tc.want {
			t.Errorf("%.40q -> %q, want %q", tc.req, got, tc.want)
		}
	}
}
