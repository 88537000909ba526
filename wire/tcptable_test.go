package wire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestReadLine(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		max      int
		want     string
		err      error
		consumed int
	}{
		{"line", "get example.com\n", 0, "get example.com", nil, 16},
		{"crlf", "get example.com\r\n", 0, "get example.com", nil, 17},
		{"first of two", "get a\nget b\n", 0, "get a", nil, 6},
		{"empty line", "\n", 0, "", nil, 1},
		{"exactly max", "get abc\n", 8, "get abc", nil, 8},
		{"crlf exactly max", "get ab\r\n", 8, "get ab", nil, 8},
		// Over the limit: stop reading at the limit.
		{"one over max", "get abcd\n", 8, "", ErrTCPTableTooLong, 0},
		{"no newline within max", "get abcdefghijklmnopqrstuvwxyz", 8, "", ErrTCPTableTooLong, 0},
		{"eof before anything", "", 0, "", io.EOF, 0},
		{"eof inside the line", "get exam", 0, "", io.ErrUnexpectedEOF, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			max := tc.max
			if max == 0 {
				max = MaxTCPTableLine
			}
			src := bytes.NewReader([]byte(tc.in))
			r := bufio.NewReader(src)
			got, err := readLine(r, nil, max)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if string(got) != tc.want {
				t.Errorf("line %q, want %q", got, tc.want)
			}
			if n := consumed(src, r); n != tc.consumed {
				t.Errorf("consumed %d bytes, want %d", n, tc.consumed)
			}
		})
	}
}

func TestReadLineLongerThanTheReaderBuffer(t *testing.T) {
	long := "get " + strings.Repeat("k", 3*4096) + "\n"
	src := bytes.NewReader([]byte(long + long))
	r := bufio.NewReaderSize(src, 16)
	for range 2 {
		got, err := readLine(r, nil, len(long))
		if err != nil || string(got) != long[:len(long)-1] {
			t.Fatalf("read %d bytes, %v; want the %d-byte line", len(got), err, len(long)-1)
		}
	}
	src = bytes.NewReader([]byte(long))
	r = bufio.NewReaderSize(src, 16)
	if _, err := readLine(r, nil, len(long)-1); !errors.Is(err, ErrTCPTableTooLong) {
		t.Fatalf("error %v, want ErrTCPTableTooLong", err)
	}
	if n := consumed(src, r); n > len(long)-1 {
		t.Errorf("consumed %d bytes, more than the limit", n)
	}
}

func TestHexQuote(t *testing.T) {
	for _, tc := range []struct{ raw, quoted string }{
		{"example.com", "example.com"},
		{"[192.0.2.1]:2525", "[192.0.2.1]:2525"},
		{"verify protocols=>=TLSv1.2", "verify%20protocols=>=TLSv1.2"},
		{"100%", "100%25"},
		{"tab\tnl\ncr\rnul\x00", "tab%09nl%0Acr%0Dnul%00"},
		{"del\x7f", "del%7F"},
		{"bücher.example", "b%C3%BCcher.example"},
		{"~!", "~!"},
		{"", ""},
	} {
		if got := string(appendHexQuoted(nil, tc.raw)); got != tc.quoted {
			t.Errorf("quote(%q) = %q, want %q", tc.raw, got, tc.quoted)
		}
		if got, err := appendHexUnquoted(nil, []byte(tc.quoted)); err != nil || string(got) != tc.raw {
			t.Errorf("unquote(%q) = %q, %v; want %q", tc.quoted, got, err, tc.raw)
		}
	}
	if got, err := appendHexUnquoted(nil, []byte("b%c3%bccher")); err != nil || string(got) != "bücher" {
		t.Errorf("lower-case escapes: %q, %v", got, err)
	}
	for _, bad := range []string{"%", "%4", "a%zz", "%g0", "%%41", "end%2"} {
		if got, err := appendHexUnquoted(nil, []byte(bad)); !errors.Is(err, ErrTCPTableMalformed) {
			t.Errorf("unquote(%q) = %q, %v; want ErrTCPTableMalformed", bad, got, err)
		}
	}
}

func TestTCPTable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		request string
		replies []string
		closed  bool
	}{
		{"found", "get example.com\n", []string{"200 verify%20match=example.com\n"}, false},
		{"crlf", "get example.com\r\n", []string{"200 verify%20match=example.com\n"}, false},
		{"encoded key", "get a%20b%25c\n", []string{"200 verify%20match=a%20b%25c\n"}, false},
		{"lower-case escape", "get %5bx%5d\n", []string{"200 verify%20match=[x]\n"}, false},
		{"not found", "get notfound.test\n", []string{"500 NOTFOUND\n"}, false},
		{"temporary", "get temp.test\n", []string{"400 probe%20failed\n"}, false},
		{"permanent becomes 400", "get perm.test\n", []string{"400 bad%20key\n"}, false},
		{"pipelined", "get a.test\nget notfound.test\nget b.test\n",
			[]string{"200 verify%20match=a.test\n", "500 NOTFOUND\n", "200 verify%20match=b.test\n"}, false},
		{"not get", "put a.test b\n", []string{"400 malformed%20tcp_table%20request:%20expected%20\"get%20KEY\"\n"}, true},
		{"upper-case GET", "GET a.test\n", []string{"400 malformed%20tcp_table%20request:%20expected%20\"get%20KEY\"\n"}, true},
		{"empty key", "get \n", []string{"400 malformed%20tcp_table%20request:%20empty%20key\n"}, true},
		{"bad escape", "get a%zz\n", []string{"400 malformed%20tcp_table%20request:%20invalid%20%25XX%20escape\n"}, true},
		{"truncated escape", "get a%2\n", []string{"400 malformed%20tcp_table%20request:%20truncated%20%25XX%20escape\n"}, true},
		{"bad request after a good one", "get a.test\nhello\n",
			[]string{"200 verify%20match=a.test\n", "400 malformed%20tcp_table%20request:%20expected%20\"get%20KEY\"\n"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := startWireServer(t, NewTCPTableCodec(wireLookup(fakeAnswers)), nil)
			c := dialWire(t, "tcp", ws.addr)
			c.send(tc.request)
			for _, want := range tc.replies {
				if got := c.readLine(); got != want {
					t.Errorf("reply %q, want %q", got, want)
				}
			}
			if tc.closed {
				c.expectClosed()
				return
			}
			c.send("get next.test\n")
			if got, want := c.readLine(), "200 verify%20match=next.test\n"; got != want {
				t.Errorf("connection not usable after the replies: %q, want %q", got, want)
			}
		})
	}
}

func TestTCPTableSizeLimits(t *testing.T) {
	m := newTestMetrics()
	ws := startWireServer(t, NewTCPTableCodec(wireLookup(lengthLookup)), func(s *Server) { s.Metrics = m })
	c := dialWire(t, "tcp", ws.addr)

	key := strings.Repeat("k", MaxTCPTableLine-len("get \n"))
	c.send("get " + key + "\n")
	if got, want := c.readLine(), "200 "+strconv.Itoa(len(key))+"\n"; got != want {
		t.Errorf("line of exactly %d bytes: %q, want %q", MaxTCPTableLine, got, want)
	}
	max := MaxTCPTableLine - len("200 \n")
	c.send("get reply:" + strconv.Itoa(max) + "\n")
	if got := c.readLine(); len(got) != MaxTCPTableLine {
		t.Errorf("reply of exactly %d bytes came as %d", MaxTCPTableLine, len(got))
	}
	c.send("get reply:" + strconv.Itoa(max+1) + "\n")
	if got, want := c.readLine(), "400 reply%20too%20long\n"; got != want {
		t.Errorf("reply over the limit: %q, want %q", got, want)
	}

	// One byte too many: the server answers once it has the limit's worth,
	// without waiting for the end of the line.
	c.send("get " + key + "k")
	if got, want := c.readLine(), "400 request%20longer%20than%20100000%20bytes\n"; got != want {
		t.Errorf("over-long line: %q, want %q", got, want)
	}
	c.expectClosed()
	if got := m.Count(ResultOversized); got != 1 {
		t.Errorf("oversized requests = %v, want 1", got)
	}
}

func TestTCPTableSteadyStateAllocs(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want float64
	}{
		{"x", 0},
		{"example.com", 0},
	} {
		ws := startWireServer(t, NewTCPTableCodec(constTable{}), quietServer)
		c := dialWire(t, "tcp", ws.addr)
		round := roundTripper(t, c.conn, []byte("get "+tc.key+"\n"), "200 encrypt%20protocols=>=TLSv1.2\n")
		round()
		if got := testing.AllocsPerRun(500, round); got > tc.want {
			t.Errorf("key %q: %v allocations per request, want %v", tc.key, got, tc.want)
		}
	}
}

func BenchmarkTCPTableConn(b *testing.B) {
	ws := startWireServer(b, NewTCPTableCodec(constTable{}), quietServer)
	c := dialWire(b, "tcp", ws.addr)
	c.conn.SetDeadline(time.Time{})
	round := roundTripper(b, c.conn, []byte("get example.com\n"), "200 encrypt%20protocols=>=TLSv1.2\n")
	round()
	b.ReportAllocs()
	for b.Loop() {
		round()
	}
}

// FuzzTCPTable checks line reading and %XX coding on arbitrary input (no
// panic; nothing consumed past the limit; decoding undoes encoding), then
// runs the codec over the same input and checks each reply line. The seeds
// are in testdata/fuzz/FuzzTCPTable.
func FuzzTCPTable(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		checkHexCoding(t, data)
		want := expectedTCPTableReplies(t, data)

		var out bytes.Buffer
		c := newTestConn(bytes.NewReader(data), &out)
		codec := NewTCPTableCodec(wireLookup(echoLookup))
		for {
			if _, err := c.R.Peek(1); err != nil {
				break
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
			got, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reply %d is not a line: %q, %v", i, got, err)
			}
			if w != "400 *" && got != w || w == "400 *" && !strings.HasPrefix(got, "400 ") {
				t.Fatalf("reply %d: %q, want %q", i, got, w)
			}
			for _, b := range []byte(got[4 : len(got)-1]) {
				if b <= ' ' || b >= 0x7f {
					t.Fatalf("reply %d has an unencoded byte %q: %q", i, b, got)
				}
			}
		}
		if rest, _ := io.ReadAll(r); len(rest) > 0 {
			t.Fatalf("%d bytes written after the expected replies: %q", len(rest), rest)
		}
	})
}

// checkHexCoding checks that decoding undoes encoding, and that a string
// that decodes re-encodes to printable ASCII that decodes the same.
func checkHexCoding(t *testing.T, data []byte) {
	enc := appendHexQuoted(nil, string(data))
	for _, b := range enc {
		if b <= ' ' || b >= 0x7f {
			t.Fatalf("quote(%q) = %q has an unencoded byte %q", data, enc, b)
		}
	}
	dec, err := appendHexUnquoted(nil, enc)
	if err != nil || !bytes.Equal(dec, data) {
		t.Fatalf("unquote(quote(%q)) = %q, %v", data, dec, err)
	}
	dec, err = appendHexUnquoted(nil, data)
	if err != nil {
		if !errors.Is(err, ErrTCPTableMalformed) {
			t.Fatalf("unquote(%q): unexpected error %v", data, err)
		}
		return
	}
	if len(dec) > len(data) {
		t.Fatalf("unquote(%q) = %q is longer", data, dec)
	}
	again, err := appendHexUnquoted(nil, appendHexQuoted(nil, string(dec)))
	if err != nil || !bytes.Equal(again, dec) {
		t.Fatalf("round trip of %q: %q, %v", dec, again, err)
	}
	inPlace := append([]byte(nil), data...)
	if got, _ := appendHexUnquoted(inPlace[:0], inPlace); !bytes.Equal(got, dec) {
		t.Fatalf("in-place unquote(%q) = %q, want %q", data, got, dec)
	}
}

// fuzzLineMax is a small line limit for the fuzzer to run into.
const fuzzLineMax = 64

// expectedTCPTableReplies reads data's lines, checking readLine's invariants
// under a small limit, and returns the replies the codec should write for it
// (with the real limit) and echoLookup ("400 *" for any 400).
func expectedTCPTableReplies(t *testing.T, data []byte) []string {
	src := bytes.NewReader(data)
	r := bufio.NewReaderSize(src, 16)
	for {
		before := consumed(src, r)
		line, err := readLine(r, nil, fuzzLineMax)
		n := consumed(src, r) - before
		if n > fuzzLineMax {
			t.Fatalf("consumed %d bytes for one line, limit %d", n, fuzzLineMax)
		}
		if err != nil {
			break
		}
		if bytes.IndexByte(line, '\n') >= 0 || n != len(line)+1 && n != len(line)+2 {
			t.Fatalf("line %q from %q", line, data[before:before+n])
		}
	}

	var replies []string
	r = bufio.NewReader(bytes.NewReader(data))
	for {
		line, err := readLine(r, nil, MaxTCPTableLine)
		switch {
		case err == io.EOF, err == io.ErrUnexpectedEOF:
			return replies
		case errors.Is(err, ErrTCPTableTooLong):
			return append(replies, "400 request%20longer%20than%20100000%20bytes\n")
		case err != nil:
			t.Fatalf("unexpected error %v", err)
		}
		key, err := parseTCPTableRequest(line)
		if err != nil {
			return append(replies, "400 *")
		}
		reply := "200 " + string(appendHexQuoted(nil, string(key))) + "\n"
		if len(reply) > MaxTCPTableLine {
			reply = "400 reply%20too%20long\n"
		}
		replies = append(replies, reply)
	}
}
