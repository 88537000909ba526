package policyd

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
	e := NewEngine(mustLoad(t, rcptRules+"\ndefaults: {level: may, upgrade: none}\n"), rcptEvidence())
	ws := startWireServer(t, NewEximCodec(e, e, nil), nil)
	for _, tc := range []struct{ req, want string }{
		{"tlspolicy strict.test\n", "OK encrypt protocols=>=TLSv1.2\n"},
		{"tlspolicy strict.test", "OK encrypt protocols=>=TLSv1.2\n"}, // no newline: ended by the half-close
		{"phi plain.test\n", "OK verify protocols=>=TLSv1.2\n"},
		{"tlspolicy .nothing.test\n", "NOTFOUND\n"},
		{"transport partner.test\n", "OK smtp:[gateway.partner.test]:2525\n"},
		{"sender.transport doctor@clinic.test\n", "OK smtp-phi:\n"},
		{"nosuch example.org\n", "PERM unknown map nosuch\n"},
		{"rcpt.check <doctor@clinic.test> <a@plain.test>\n", "REJECT 5.7.10 use the secure portal (no STARTTLS at mx.plain.test)\n"},
		{"rcpt.check <> <a@plain.test>\n", "HOLD recipient domain cannot receive mail with the required TLS protection (no STARTTLS at mx.plain.test)\n"},
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
