package tlsprobe

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// newSession wraps conn as converse does.
func newSession(ctx context.Context, conn net.Conn, step time.Duration) *session {
	return &session{conn: conn, r: bufio.NewReaderSize(io.LimitReader(conn, maxPreTLS), maxReplyLine), step: step, ctx: ctx}
}

// pipeReply has session.reply read one reply from a peer that sends input
// over net.Pipe and then closes its end, or, with hold, keeps it open.
func pipeReply(ctx context.Context, input string, hold bool, step time.Duration) (int, []string, error) {
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer server.Close()
		if input != "" {
			if _, err := server.Write([]byte(input)); err != nil {
				return // the reader gave up early and closed
			}
		}
		if hold {
			io.Copy(io.Discard, server) // until the client closes
		}
	}()
	code, lines, err := newSession(ctx, client, step).reply()
	client.Close()
	<-done
	return code, lines, err
}

// causeOf returns the Cause an error from the SMTP conversation carries.
func causeOf(err error) (Cause, bool) {
	var pe *probeError
	if !errors.As(err, &pe) {
		return 0, false
	}
	return pe.cause, true
}

func TestReply(t *testing.T) {
	t.Parallel()
	line := func(code string, sep byte, n int) string { // a reply line of n bytes, CRLF included
		return code + string(sep) + strings.Repeat("x", n-len(code)-3) + "\r\n"
	}
	tests := []struct {
		name  string
		input string
		code  int
		lines []string
		cause Cause // CauseNone: no error expected
		hold  bool
	}{
		{name: "one line", input: "220 mx.example.test ESMTP\r\n", code: 220, lines: []string{"mx.example.test ESMTP"}},
		{name: "multi-line", input: "250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
			code: 250, lines: []string{"mx.example.test", "PIPELINING", "STARTTLS"}},
		{name: "bare LF", input: "250-a\n250 b\n", code: 250, lines: []string{"a", "b"}},
		{name: "code only", input: "250\r\n", code: 250, lines: []string{""}},
		{name: "empty continuation", input: "250-\r\n250 \r\n", code: 250, lines: []string{"", ""}},
		{name: "only the first reply", input: "250 one\r\n250 two\r\n", code: 250, lines: []string{"one"}, hold: true},
		{name: "5xx", input: "554 5.7.1 go away\r\n", code: 554, lines: []string{"5.7.1 go away"}},
		{name: "longest line", input: line("250", ' ', maxReplyLine), code: 250, lines: []string{strings.Repeat("x", maxReplyLine-6)}},
		{name: "most lines", input: strings.Repeat("250-x\r\n", maxReplyLines-1) + "250 x\r\n", code: 250, lines: slices.Repeat([]string{"x"}, maxReplyLines)},

		{name: "letters in code", input: "2x0 hello\r\n", cause: CauseSMTP},
		{name: "short line", input: "25\r\n", cause: CauseSMTP},
		{name: "empty line", input: "\r\n", cause: CauseSMTP},
		{name: "code below 200", input: "199 hello\r\n", cause: CauseSMTP},
		{name: "code above 599", input: "600 hello\r\n", cause: CauseSMTP},
		{name: "signed code", input: "+25 hello\r\n", cause: CauseSMTP},
		{name: "malformed continuation", input: "250-fine\r\nnot smtp\r\n", cause: CauseSMTP},
		{name: "over-long line", input: line("250", ' ', maxReplyLine+1), cause: CauseSMTP},
		{name: "over-long line, held", input: line("250", '-', 100*maxReplyLine), cause: CauseSMTP, hold: true},
		{name: "too many lines", input: strings.Repeat("250-x\r\n", maxReplyLines) + "250 x\r\n", cause: CauseSMTP},
		{name: "endless reply", input: strings.Repeat("250-x\r\n", 10*maxReplyLines), cause: CauseSMTP, hold: true},
		{name: "more than the pre-TLS limit", input: strings.Repeat(line("250", '-', maxReplyLine), 40), cause: CauseSMTP},
		{name: "closed mid-reply", input: "250-a\r\n", cause: CauseSMTP},
		{name: "closed mid-line", input: "250 no line end", cause: CauseSMTP},
		{name: "closed at once", input: "", cause: CauseSMTP},
		{name: "silence", input: "", cause: CauseTimeout, hold: true},
		{name: "silence mid-reply", input: "250-a\r\n", cause: CauseTimeout, hold: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, lines, err := pipeReply(context.Background(), tt.input, tt.hold, 200*time.Millisecond)
			if tt.cause != CauseNone {
				if c, ok := causeOf(err); !ok || c != tt.cause {
					t.Errorf("reply = %d %q, %v; want a %v error", code, lines, err, tt.cause)
				}
				return
			}
			if err != nil || code != tt.code || !slices.Equal(lines, tt.lines) {
				t.Errorf("reply = %d %q, %v; want %d %q", code, lines, err, tt.code, tt.lines)
			}
		})
	}
}

// The probe's own deadline cuts a step short.
func TestReplyProbeDeadline(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := pipeReply(ctx, "", true, time.Hour)
	if c, _ := causeOf(err); c != CauseTimeout {
		t.Errorf("err = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("reply took %v despite a 50ms probe deadline", d)
	}
}

func TestHasExtension(t *testing.T) {
	t.Parallel()
	tests := []struct {
		lines []string
		want  bool
	}{
		{[]string{"mx.example.test", "PIPELINING", "STARTTLS", "8BITMIME"}, true},
		{[]string{"mx.example.test", "PIPELINING", "STARTTLS"}, true}, // last line
		{[]string{"mx.example.test", "starttls"}, true},
		{[]string{"mx.example.test", "  StartTLS  "}, true},
		{[]string{"mx.example.test", "STARTTLS some-parameter"}, true},
		{[]string{"STARTTLS"}, false}, // the greeting line is no extension
		{[]string{"STARTTLS", "PIPELINING"}, false},
		{[]string{"mx.example.test", "STARTTLSX"}, false},
		{[]string{"mx.example.test", "X-STARTTLS"}, false},
		{[]string{"mx.example.test", "AUTH STARTTLS"}, false},
		{[]string{"mx.example.test", ""}, false},
		{[]string{"mx.example.test"}, false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := hasExtension(tt.lines, "STARTTLS"); got != tt.want {
			t.Errorf("hasExtension(%q) = %v, want %v", tt.lines, got, tt.want)
		}
	}
}

// stubConn is the net.Conn of a session that reads from a buffer: reply
// only sets deadlines on it.
type stubConn struct{ net.Conn }

func (stubConn) SetDeadline(time.Time) error { return nil }

// FuzzReply feeds arbitrary server output to the reply parser, reading
// replies one after another as a conversation does. The parser must not
// panic, must keep to its bounds, and must give every failure a Cause.
func FuzzReply(f *testing.F) {
	for _, s := range []string{
		"220 mx.example.test ESMTP\r\n",
		"250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
		"250 a\n250-b\n250 c\n",
		"2x0 x\r\n",
		"250-" + strings.Repeat("a", maxReplyLine) + "\r\n",
		strings.Repeat("250-x\r\n", maxReplyLines+1),
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &session{
			conn: stubConn{},
			r:    bufio.NewReaderSize(io.LimitReader(bytes.NewReader(data), maxPreTLS), maxReplyLine),
			step: time.Second,
			ctx:  context.Background(),
		}
		for range 10 { // a conversation reads a few replies
			code, lines, err := s.reply()
			if err != nil {
				if c, ok := causeOf(err); !ok || c != CauseSMTP {
					t.Fatalf("error %v (%T) without the smtp_error cause", err, err)
				}
				return
			}
			if code < 200 || code > 599 {
				t.Fatalf("code %d", code)
			}
			if len(lines) == 0 || len(lines) > maxReplyLines {
				t.Fatalf("%d lines", len(lines))
			}
			for _, l := range lines {
				if len(l) >= maxReplyLine || strings.ContainsRune(l, '\n') {
					t.Fatalf("line %q", l)
				}
			}
		}
	})
}
