package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// echoTable is the TableLookup of the Exim fuzz test: its answer's status
// follows the map name and its text repeats the key, so that a reply shows
// what the codec parsed.
func echoTable(_ context.Context, mapName, key string) Answer {
	switch mapName {
	case "ok":
		return Answer{Status: StatusOK, Text: "verify key=" + key}
	case "notfound":
		return Answer{Status: StatusNotFound, Text: "ignored"}
	case "temp":
		return Answer{Status: StatusTemp, Text: "failed for " + key}
	}
	return Answer{Status: StatusPerm, Text: "unknown map " + mapName}
}

// FuzzExim runs the Exim codec over arbitrary input, as the server core
// does for one connection, and checks that it answers with exactly one
// line, the one expectedEximReply works out on its own, and then ends the
// connection; input that holds no request gets no reply. The seeds are in
// testdata/fuzz/FuzzExim.
func FuzzExim(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		c := newTestConn(bytes.NewReader(in), &out)
		codec := NewEximCodec(wireLookup(echoTable), echoRcpt{})
		if _, err := c.R.Peek(1); err != nil {
			if len(in) > 0 {
				t.Fatalf("Peek: %v", err)
			}
			return // the core closes the connection without a request
		}
		err := codec.ServeRequest(context.Background(), c)
		if ferr := c.W.Flush(); ferr != nil {
			t.Fatal(ferr)
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, ErrEximMalformed) {
			t.Fatalf("error %v, want io.EOF (one request per connection) or ErrEximMalformed", err)
		}
		want, ok := expectedEximReply(string(in), maxPolicyLine)
		got := out.String()
		if !ok {
			if got != "" {
				t.Fatalf("input %q holds no request, but got reply %q", in, got)
			}
			return
		}
		if strings.Count(got, "\n") != 1 || !strings.HasSuffix(got, "\n") || strings.Contains(got, "\r") {
			t.Fatalf("reply %q is not one line", got)
		}
		if got != want+"\n" {
			t.Fatalf("input %q:\nreply %q\nwant  %q", in, got, want+"\n")
		}
	})
}

// expectedEximReply is the reply line (without its newline) to the
// request in in, and false if in holds none: the request is the first
// line, or all of in when it has no newline (Exim half-closes after it),
// at most max bytes with the newline, surrounding white space ignored;
// "MAP KEY" asks echoTable, "rcpt.check <SENDER> <RECIPIENT>" asks
// echoRcpt. Line breaks inside a reply become spaces.
func expectedEximReply(in string, max int) (string, bool) {
	line, _, _ := strings.Cut(in, "\n")
	if len(line) < len(in) {
		line += "\n"
	}
	if line == "" {
		return "", false
	}
	oneLine := strings.NewReplacer("\r", " ", "\n", " ").Replace
	if len(line) > max {
		return fmt.Sprintf("PERM %v: request longer than %d bytes", ErrEximMalformed, max), true
	}
	req := strings.TrimSpace(line)
	name, rest, ok := strings.Cut(req, " ")
	if !ok || name == "" || rest == "" {
		return fmt.Sprintf("PERM %v: expected \"MAP KEY\" or \"%s <SENDER> <RECIPIENT>\"", ErrEximMalformed, MapRcptCheck), true
	}
	if name == MapRcptCheck {
		sender, recipient, ok := strings.Cut(rest, " ")
		if !ok {
			return fmt.Sprintf("PERM %v: expected \"%s <SENDER> <RECIPIENT>\"", ErrEximMalformed, MapRcptCheck), true
		}
		action := echoRcpt{}.RcptAction(context.Background(), strings.Trim(sender, "<>"), strings.Trim(strings.TrimSpace(recipient), "<>"))
		return oneLine(action), true
	}
	a := echoTable(context.Background(), name, rest)
	switch a.Status {
	case StatusOK:
		return oneLine("OK " + a.Text), true
	case StatusNotFound:
		return "NOTFOUND", true
	case StatusTemp:
		return oneLine("TEMP " + a.Text), true
	}
	return oneLine("PERM " + a.Text), true
}
