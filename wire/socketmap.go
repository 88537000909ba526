package wire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MaxNetstringLen is the longest netstring payload accepted in a request or
// sent in a reply: Postfix's own limit for socketmap_table(5).
const MaxNetstringLen = 100000

// Netstring errors, matchable with errors.Is. Errors for malformed input wrap
// ErrNetstringMalformed with the reason.
var (
	ErrNetstringTooLong   = errors.New("netstring too long")
	ErrNetstringMalformed = errors.New("malformed netstring")
)

// Replies to bad input. The oversized one is fixed text so that operators can
// grep Postfix's logs for it.
const replyTooLongRequest = "request longer than 100000 bytes"

// socketmapCodec answers Postfix socketmap_table(5) lookups: each request is a
// netstring "NAME KEY", each reply a netstring "OK value", "NOTFOUND ",
// "TEMP reason" or "PERM reason". Postfix keeps a connection open and sends
// one request at a time on it.
type socketmapCodec struct {
	lookup TableLookup
}

// NewSocketmapCodec returns the socketmap codec. Every map name, including
// unknown ones, is passed to lookup: which maps exist is the engine's
// business, not the wire format's.
func NewSocketmapCodec(lookup TableLookup) Codec {
	return &socketmapCodec{lookup: lookup}
}

// ServeRequest reads one netstring request and writes its reply.
func (sc *socketmapCodec) ServeRequest(ctx context.Context, c *Conn) error {
	p, ok := bufferedNetstring(c.R)
	if !ok {
		var err error
		if p, err = readNetstring(c.R, c.Buf, MaxNetstringLen); err != nil {
			return sc.badRequest(c, err)
		}
		c.Buf = p[:0]
	}
	name, key, ok := splitSocketmapRequest(p)
	if !ok {
		return sc.badRequest(c, fmt.Errorf("%w: expected \"NAME KEY\"", ErrNetstringMalformed))
	}
	mapName := c.internName(name)
	var result RequestResult
	a := sc.lookup.LookupTable(ctx, mapName, key)
	c.countAnswer(mapName, a)
	c.Scratch, result = appendSocketmapReply(c.Scratch[:0], a)
	return c.endLookup(ctx, result, mapName, key)
}

// badRequest answers a request that could not be read with a PERM reply
// (see Conn.rejectBadInput).
func (sc *socketmapCodec) badRequest(c *Conn, err error) error {
	return c.rejectBadInput(err, ErrNetstringTooLong, ErrNetstringMalformed, "socketmap", func(dst []byte, reason string) []byte {
		return appendNetstring(dst, "PERM ", reason)
	})
}

// splitSocketmapRequest splits a request payload at its first space into the
// map name and the key. Both must be non-empty; the key may contain spaces.
func splitSocketmapRequest(p []byte) (name, key []byte, ok bool) {
	name, key, ok = bytes.Cut(p, []byte{' '})
	return name, key, ok && len(name) > 0 && len(key) > 0
}

// appendSocketmapReply appends the reply netstring for a and returns the
// result label to count. A status the codec does not know, or a reply over
// the netstring limit, becomes TEMP: Postfix then defers, which fails closed.
func appendSocketmapReply(dst []byte, a Answer) ([]byte, RequestResult) {
	word, text := "", a.Text
	switch a.Status {
	case StatusOK:
		word = "OK "
	case StatusNotFound:
		word, text = "NOTFOUND ", ""
	case StatusTemp:
		word = "TEMP "
	case StatusPerm:
		word = "PERM "
	default:
		return appendNetstring(dst, "TEMP invalid lookup status"), ResultTemp
	}
	if len(word)+len(text) > MaxNetstringLen {
		return appendNetstring(dst, "TEMP reply too long"), ResultTemp
	}
	return appendNetstring(dst, word, text), resultOf(a.Status)
}

// bufferedNetstring is the fast path of readNetstring for the usual case,
// a whole well-formed request already in r's buffer: it returns the payload
// where it lies (valid until r is next read) and consumes the netstring.
// Anything else, valid or not, is left unread for readNetstring, which
// alone says what is wrong with bad input.
func bufferedNetstring(r *bufio.Reader) ([]byte, bool) {
	b, _ := r.Peek(r.Buffered()) // cannot fail: the bytes are buffered
	n, i := 0, 0
	for ; i < len(b) && i < 6 && '0' <= b[i] && b[i] <= '9'; i++ { // 6 digits hold MaxNetstringLen
		n = n*10 + int(b[i]-'0')
	}
	if i == 0 || i == len(b) || b[i] != ':' || b[0] == '0' || n > MaxNetstringLen {
		return nil, false
	}
	end := i + 1 + n
	if end >= len(b) || b[end] != ',' {
		return nil, false
	}
	r.Discard(end + 1) // cannot fail, and leaves b's bytes where they are
	return b[i+1 : end], true
}

// readNetstring reads one netstring ("LEN:PAYLOAD,") from r and returns its
// payload, stored in buf's array when it fits (so a caller that keeps the
// result for the next call stops allocating). It rejects a length over max
// as soon as its digits say so, before reading or allocating the payload, so
// it never consumes more than len(strconv.Itoa(max))+max+2 bytes.
//
// The length follows D. J. Bernstein's netstring definition strictly: one or
// more ASCII digits with no leading zero ("0" alone for an empty payload), no
// sign, no spaces. Postfix never sends anything else, and one spelling per
// length keeps parsing and printing exact inverses.
//
// Errors: io.EOF if r ends before the first byte; io.ErrUnexpectedEOF if it
// ends inside the netstring; ErrNetstringTooLong; an error wrapping
// ErrNetstringMalformed; or r's own error (a deadline, a reset).
func readNetstring(r *bufio.Reader, buf []byte, max int) ([]byte, error) {
	n, err := readNetstringLen(r, max)
	if err != nil {
		return nil, err
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, unexpectedEOF(err)
	}
	b, err := r.ReadByte()
	if err != nil {
		return nil, unexpectedEOF(err)
	}
	if b != ',' {
		return nil, fmt.Errorf("%w: no ',' after the %d-byte payload", ErrNetstringMalformed, n)
	}
	return buf, nil
}

// readNetstringLen reads the length and its ':' terminator, digit by digit.
func readNetstringLen(r *bufio.Reader, max int) (int, error) {
	n, digits := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			if digits == 0 && errors.Is(err, io.EOF) {
				return 0, io.EOF
			}
			return 0, unexpectedEOF(err)
		}
		switch {
		case b >= '0' && b <= '9':
			if digits == 1 && n == 0 {
				return 0, fmt.Errorf("%w: leading zero in the length", ErrNetstringMalformed)
			}
			d := int(b - '0')
			if d > max || n > (max-d)/10 { // n*10+d > max, without overflow
				return 0, ErrNetstringTooLong
			}
			n = n*10 + d
			digits++
		case b == ':' && digits > 0:
			return n, nil
		case b == ':':
			return 0, fmt.Errorf("%w: no length before ':'", ErrNetstringMalformed)
		default:
			return 0, fmt.Errorf("%w: unexpected byte %q in the length", ErrNetstringMalformed, b)
		}
	}
}

// unexpectedEOF turns io.EOF inside a netstring or line into
// io.ErrUnexpectedEOF, so that only EOF between requests reads as clean.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendNetstring appends the netstring of the concatenated parts to dst.
// Taking parts saves callers building the payload in a temporary buffer.
func appendNetstring(dst []byte, parts ...string) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	dst = strconv.AppendInt(dst, int64(n), 10)
	dst = append(dst, ':')
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return append(dst, ',')
}
