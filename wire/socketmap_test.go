package wire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// consumed returns how many bytes of src's data the reader r has handed out:
// what src has given minus what r still buffers.
func consumed(src *bytes.Reader, r *bufio.Reader) int {
	return int(src.Size()) - src.Len() - r.Buffered()
}

func TestReadNetstring(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		max      int
		want     string
		err      error // nil, io.EOF, io.ErrUnexpectedEOF or a sentinel
		consumed int   // bytes taken from the stream
	}{
		{"request", "21:tlspolicy example.com,", 0, "tlspolicy example.com", nil, 25},
		{"empty payload", "0:,", 0, "", nil, 3},
		{"first of two pipelined", "3:abc,3:def,", 0, "abc", nil, 6},
		{"binary payload", "3:\x00,:,", 0, "\x00,:", nil, 6},
		{"exactly max", "5:abcde,", 5, "abcde", nil, 8},
		{"max is 100000", "100000:", MaxNetstringLen, "", io.ErrUnexpectedEOF, 7},
		// Over the limit: stop at the digit that crosses it, read nothing more.
		{"one over max", "6:abcdef,", 5, "", ErrNetstringTooLong, 1},
		{"100001", "100001:" + strings.Repeat("a", 100), MaxNetstringLen, "", ErrNetstringTooLong, 6},
		{"seven digits", "1000000:", MaxNetstringLen, "", ErrNetstringTooLong, 7},
		{"endless digits", strings.Repeat("9", 50), MaxNetstringLen, "", ErrNetstringTooLong, 6},
		// Leading zeros are refused: "0" alone is the only length starting with 0.
		{"leading zero", "03:abc,", 0, "", ErrNetstringMalformed, 2},
		{"double zero", "00:,", 0, "", ErrNetstringMalformed, 2},
		{"no digits", ":,", 0, "", ErrNetstringMalformed, 1},
		{"non-digit", "3a:abc,", 0, "", ErrNetstringMalformed, 2},
		{"leading space", " 3:abc,", 0, "", ErrNetstringMalformed, 1},
		{"sign", "+3:abc,", 0, "", ErrNetstringMalformed, 1},
		{"negative", "-1:a,", 0, "", ErrNetstringMalformed, 1},
		{"missing comma", "3:abc;", 0, "", ErrNetstringMalformed, 6},
		{"payload longer than length", "3:abcd,", 0, "", ErrNetstringMalformed, 6},
		{"eof before anything", "", 0, "", io.EOF, 0},
		{"eof in length", "12", 0, "", io.ErrUnexpectedEOF, 2},
		{"eof in payload", "3:ab", 0, "", io.ErrUnexpectedEOF, 4},
		{"eof before comma", "3:abc", 0, "", io.ErrUnexpectedEOF, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			max := tc.max
			if max == 0 {
				max = MaxNetstringLen
			}
			src := bytes.NewReader([]byte(tc.in))
			r := bufio.NewReader(src)
			got, err := readNetstring(r, nil, max)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if string(got) != tc.want {
				t.Errorf("payload %q, want %q", got, tc.want)
			}
			if n := consumed(src, r); n != tc.consumed {
				t.Errorf("consumed %d bytes, want %d", n, tc.consumed)
			}
		})
	}
}

func TestReadNetstringReusesBuffer(t *testing.T) {
	buf := make([]byte, 0, 64)
	r := bufio.NewReader(strings.NewReader("3:abc,70:" + strings.Repeat("x", 70) + ","))
	p, err := readNetstring(r, buf, MaxNetstringLen)
	if err != nil {
		t.Fatal(err)
	}
	if &p[:1][0] != &buf[:1][0] {
		t.Error("a payload that fits was not read into the caller's buffer")
	}
	if p, err = readNetstring(r, p, MaxNetstringLen); err != nil || len(p) != 70 {
		t.Fatalf("growing: %d bytes, %v", len(p), err)
	}
}

func TestAppendNetstring(t *testing.T) {
	for _, tc := range []struct {
		parts []string
		want  string
	}{
		{nil, "0:,"},
		{[]string{"NOTFOUND "}, "9:NOTFOUND ,"},
		{[]string{"OK ", "verify protocols=>=TLSv1.2"}, "29:OK verify protocols=>=TLSv1.2,"},
		{[]string{"", "", ""}, "0:,"},
	} {
		if got := string(appendNetstring([]byte("x"), tc.parts...)); got != "x"+tc.want {
			t.Errorf("appendNetstring(%q) = %q, want %q", tc.parts, got, "x"+tc.want)
		}
	}
}

func TestSocketmap(t *testing.T) {
	ns := func(s string) string { return string(appendNetstring(nil, s)) }
	for _, tc := range []struct {
		name    string
		request string
		replies []string
		closed  bool // the server must close after the replies
	}{
		{"found", ns("tlspolicy example.com"), []string{"OK verify match=example.com"}, false},
		{"not found has a trailing space and no text", ns("tlspolicy notfound.test"), []string{"NOTFOUND "}, false},
		{"temporary", ns("tlspolicy temp.test"), []string{"TEMP probe failed"}, false},
		{"permanent", ns("tlspolicy perm.test"), []string{"PERM bad key"}, false},
		{"key with spaces is split at the first", ns("tlspolicy a b c"), []string{"OK verify match=a b c"}, false},
		{"key case is kept", ns("tlspolicy CASE.Example.Test"), []string{"OK verify match=CASE.Example.Test"}, false},
		// Which maps exist is the lookup's business: the codec passes any name.
		{"unknown map", ns("other example.com"), []string{"PERM unknown map other"}, false},
		{"pipelined", ns("tlspolicy a.test") + ns("tlspolicy notfound.test") + ns("phi b.test"),
			[]string{"OK verify match=a.test", "NOTFOUND ", "PERM unknown map phi"}, false},
		{"zero length", "0:,", []string{`PERM malformed netstring: expected "NAME KEY"`}, true},
		{"no space", ns("tlspolicy"), []string{`PERM malformed netstring: expected "NAME KEY"`}, true},
		{"empty key", ns("tlspolicy "), []string{`PERM malformed netstring: expected "NAME KEY"`}, true},
		{"empty name", ns(" example.com"), []string{`PERM malformed netstring: expected "NAME KEY"`}, true},
		{"leading zero", "021:tlspolicy example.com,", []string{"PERM malformed netstring: leading zero in the length"}, true},
		{"non-digit", "2x:tlspolicy example.com,", []string{`PERM malformed netstring: unexpected byte 'x' in the length`}, true},
		{"leading junk", "\r\n21:tlspolicy example.com,", []string{`PERM malformed netstring: unexpected byte '\r' in the length`}, true},
		{"missing comma", "21:tlspolicy example.com;", []string{"PERM malformed netstring: no ',' after the 21-byte payload"}, true},
		{"too long", "100001:", []string{"PERM request longer than 100000 bytes"}, true},
		{"bad request after a good one", ns("tlspolicy a.test") + "3:abc,",
			[]string{"OK verify match=a.test", `PERM malformed netstring: expected "NAME KEY"`}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), nil)
			c := dialWire(t, "tcp", ws.addr)
			// The oversized case sends no payload: a reply proves the
			// server did not wait to read it.
			c.send(tc.request)
			for _, want := range tc.replies {
				if got := c.readNetstring(); got != want {
					t.Errorf("reply %q, want %q", got, want)
				}
			}
			if tc.closed {
				c.expectClosed()
			} else if got, want := c.query("tlspolicy", "next.test"), "OK verify match=next.test"; got != want {
				t.Errorf("connection not usable after the replies: %q, want %q", got, want)
			}
		})
	}
}

func TestSocketmapManyPipelinedRequests(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), nil)
	c := dialWire(t, "tcp", ws.addr)
	const n = 500
	var req []byte
	for i := range n {
		req = appendNetstring(req, "tlspolicy ", strconv.Itoa(i)+".test")
	}
	go c.conn.Write(req) // the server's replies may fill the socket before all is written
	for i := range n {
		if got, want := c.readNetstring(), "OK verify match="+strconv.Itoa(i)+".test"; got != want {
			t.Fatalf("reply %d: %q, want %q", i, got, want)
		}
	}
}

// lengthLookup answers OK with a reply of the length the key asks for
// ("reply:N"), or with the length of the key it got.
func lengthLookup(_ context.Context, _, key string) Answer {
	if n, ok := strings.CutPrefix(key, "reply:"); ok {
		size, _ := strconv.Atoi(n)
		return Answer{Status: StatusOK, Text: strings.Repeat("v", size)}
	}
	return Answer{Status: StatusOK, Text: strconv.Itoa(len(key))}
}

func TestSocketmapSizeLimits(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(lengthLookup)), nil)
	c := dialWire(t, "tcp", ws.addr)

	key := strings.Repeat("k", MaxNetstringLen-len("tlspolicy "))
	if got, want := c.query("tlspolicy", key), "OK "+strconv.Itoa(len(key)); got != want {
		t.Errorf("request of exactly %d bytes: %q, want %q", MaxNetstringLen, got, want)
	}
	max := MaxNetstringLen - len("OK ")
	if got := c.query("tlspolicy", "reply:"+strconv.Itoa(max)); got != "OK "+strings.Repeat("v", max) {
		t.Errorf("reply of exactly %d bytes was not sent whole (%d bytes)", MaxNetstringLen, len(got))
	}
	if got, want := c.query("tlspolicy", "reply:"+strconv.Itoa(max+1)), "TEMP reply too long"; got != want {
		t.Errorf("reply over the limit: %q, want %q", got, want)
	}
}

func TestSocketmapEOFMidRequest(t *testing.T) {
	m := newTestMetrics()
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) { s.Metrics = m })
	c := dialWire(t, "tcp", ws.addr)
	c.send("24:tlspolicy exam")
	c.conn.(*net.TCPConn).CloseWrite()
	c.expectClosed() // no reply: nobody is left to read it
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for r := RequestResult(0); r < numResults; r++ {
		if v := m.Count(r); v != 0 {
			t.Errorf("%s requests = %v, want none counted", r, v)
		}
	}
}

func TestSocketmapMetricsAndLogs(t *testing.T) {
	m := newTestMetrics()
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), func(s *Server) { s.Metrics = m })
	c := dialWire(t, "tcp", ws.addr)
	for _, key := range []string{"a.test", "b.test", "notfound.test", "temp.test", "perm.test"} {
		c.query("tlspolicy", key)
	}
	c.send("3:abc,")
	c.readNetstring()
	c.expectClosed()
	big := dialWire(t, "tcp", ws.addr)
	big.send("999999:")
	big.readNetstring()
	big.expectClosed()
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	want := map[RequestResult]uint64{ResultOK: 2, ResultNotFound: 1, ResultTemp: 1, ResultPerm: 1, ResultMalformed: 1, ResultOversized: 1}
	for r := RequestResult(0); r < numResults; r++ {
		if got := m.Count(r); got != want[r] {
			t.Errorf("%s requests = %v, want %v", r, got, want[r])
		}
	}
	// Only labelled answers are counted: a.test and b.test (closed
	// connections' counts are kept).
	if got := m.answerSnapshot(); len(got) != 1 || got[answerKey{"tlspolicy", "verify"}] != 2 {
		t.Errorf("answers = %v, want 2 tlspolicy/verify", got)
	}
	log := ws.log.String()
	if n := strings.Count(log, "level=WARN msg=\"bad socketmap request"); n != 2 {
		t.Errorf("%d bad requests logged at WARN, want 2 (once each):\n%s", n, log)
	}
	if !strings.Contains(log, "remote=127.0.0.1:") {
		t.Errorf("bad requests logged without the remote address:\n%s", log)
	}
}

// constTable answers every key with a reply prepared in advance, as the
// engine does for configured destinations, and takes the key as it comes,
// so that allocation tests see only the core and the codec.
type constTable struct{}

func (constTable) LookupTable(context.Context, string, []byte) Answer {
	return Answer{Status: StatusOK, Text: "encrypt protocols=>=TLSv1.2"}
}

// quietServer sets up a server as in production: metrics on, debug logs off.
func quietServer(s *Server) {
	s.Metrics = newTestMetrics()
	s.Logger = slog.New(slog.DiscardHandler)
}

// roundTripper sends one prepared request and reads its reply of known size
// on a persistent connection, allocating nothing itself.
func roundTripper(tb testing.TB, conn net.Conn, req []byte, wantReply string) func() {
	reply := make([]byte, len(wantReply))
	return func() {
		if _, err := conn.Write(req); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(conn, reply); err != nil {
			tb.Fatal(err)
		}
		if string(reply) != wantReply {
			tb.Fatalf("reply %q, want %q", reply, wantReply)
		}
	}
}

// TestSocketmapSteadyStateAllocs checks that a persistent connection serves
// requests without allocating: the key goes to the lookup in the
// connection's buffer.
func TestSocketmapSteadyStateAllocs(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want float64
	}{
		{"x", 0},
		{"example.com", 0},
	} {
		ws := startWireServer(t, NewSocketmapCodec(constTable{}), quietServer)
		c := dialWire(t, "tcp", ws.addr)
		round := roundTripper(t, c.conn, appendNetstring(nil, "tlspolicy ", tc.key), "30:OK encrypt protocols=>=TLSv1.2,")
		round() // grow the buffers, intern the map name
		if got := testing.AllocsPerRun(500, round); got > tc.want {
			t.Errorf("key %q: %v allocations per request, want %v", tc.key, got, tc.want)
		}
	}
}

// BenchmarkSocketmapConn measures one request and reply on a persistent
// loopback connection, core and codec included, as Postfix uses it.
func BenchmarkSocketmapConn(b *testing.B) {
	for _, key := range []string{"example.com", "x"} {
		b.Run("key="+key, func(b *testing.B) {
			ws := startWireServer(b, NewSocketmapCodec(constTable{}), quietServer)
			c := dialWire(b, "tcp", ws.addr)
			c.conn.SetDeadline(time.Time{})
			round := roundTripper(b, c.conn, appendNetstring(nil, "tlspolicy ", key), "30:OK encrypt protocols=>=TLSv1.2,")
			round()
			b.ReportAllocs()
			for b.Loop() {
				round()
			}
		})
	}
}

// echoLookup answers OK with the key, so that a fuzzer can check each reply
// against the request it parsed.
func echoLookup(_ context.Context, _, key string) Answer {
	return Answer{Status: StatusOK, Text: key}
}

// FuzzNetstring checks the netstring reader on arbitrary input (no panic;
// nothing read past the limit; every payload read is exactly what was sent,
// so that printing it gives back the bytes consumed), then runs the codec
// over the same input and checks that each reply answers its request. The
// seeds are in testdata/fuzz/FuzzNetstring.
func FuzzNetstring(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		want := expectedSocketmapReplies(t, data)

		var out bytes.Buffer
		c := newTestConn(bytes.NewReader(data), &out)
		codec := NewSocketmapCodec(wireLookup(echoLookup))
		for {
			if _, err := c.R.Peek(1); err != nil {
				break // the core's wait for the next request
			}
			err := codec.ServeRequest(context.Background(), c)
			if ferr := c.W.Flush(); ferr != nil {
				t.Fatal(ferr)
			}
			if err != nil {
				break
			}
		}
		r := bufio.NewReader(&out)
		for i, w := range want {
			got, err := readNetstring(r, nil, MaxNetstringLen)
			if err != nil {
				t.Fatalf("reply %d is not a netstring: %v", i, err)
			}
			if w != "PERM *" && string(got) != w || w == "PERM *" && !bytes.HasPrefix(got, []byte("PERM ")) {
				t.Fatalf("reply %d: %q, want %q", i, got, w)
			}
		}
		if rest, _ := io.ReadAll(r); len(rest) > 0 {
			t.Fatalf("%d bytes written after the expected replies: %q", len(rest), rest)
		}
	})
}

// expectedSocketmapReplies parses data with readNetstring, checking its
// invariants, and returns the replies the codec should write for it with
// echoLookup ("PERM *" for any PERM).
func expectedSocketmapReplies(t *testing.T, data []byte) []string {
	src := bytes.NewReader(data)
	r := bufio.NewReaderSize(src, 16) // small, to exercise refills
	var buf []byte
	var replies []string
	for {
		before := consumed(src, r)
		p, err := readNetstring(r, buf, MaxNetstringLen)
		n := consumed(src, r) - before
		switch {
		case err == nil:
		case err == io.EOF:
			if n != 0 || before != len(data) {
				t.Fatalf("io.EOF after %d of %d bytes", before+n, len(data))
			}
			return replies
		case err == io.ErrUnexpectedEOF:
			if before+n != len(data) {
				t.Fatalf("io.ErrUnexpectedEOF after %d of %d bytes", before+n, len(data))
			}
			return replies
		case errors.Is(err, ErrNetstringTooLong):
			if n > len("100000")+1 {
				t.Fatalf("read %d bytes of an oversized netstring's header", n)
			}
			return append(replies, "PERM request longer than 100000 bytes")
		case errors.Is(err, ErrNetstringMalformed):
			if n > len("100000")+1+MaxNetstringLen+1 {
				t.Fatalf("read %d bytes for one netstring", n)
			}
			return append(replies, "PERM *")
		default:
			t.Fatalf("unexpected error %v", err)
		}
		if len(p) > MaxNetstringLen {
			t.Fatalf("payload of %d bytes", len(p))
		}
		if enc := appendNetstring(nil, string(p)); !bytes.Equal(enc, data[before:before+n]) {
			t.Fatalf("read %q as %q, which prints as %q", data[before:before+n], p, enc)
		}
		buf = p
		name, key, ok := splitSocketmapRequest(p)
		switch {
		case !ok:
			return append(replies, "PERM *")
		case len(name) == 0 || len(key) == 0:
			t.Fatalf("split %q into %q and %q", p, name, key)
		case len("OK ")+len(key) > MaxNetstringLen:
			replies = append(replies, "TEMP reply too long")
		default:
			replies = append(replies, "OK "+string(key))
		}
	}
}

func TestSocketmapOversizedWithPayload(t *testing.T) {
	ws := startWireServer(t, NewSocketmapCodec(wireLookup(fakeAnswers)), nil)
	c := dialWire(t, "tcp", ws.addr)
	go c.conn.Write([]byte("100001:" + strings.Repeat("a", 100001) + ",")) // fails once the server closes
	if got, want := c.readNetstring(), "PERM request longer than 100000 bytes"; got != want {
		t.Errorf("reply %q, want %q", got, want)
	}
	c.expectClosed()
}
