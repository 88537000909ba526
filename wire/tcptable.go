package wire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
)

// MaxTCPTableLine is the longest tcp_table request or reply line, counting
// its line terminator. It matches the socketmap limit: a key that long is
// not a destination anyway.
const MaxTCPTableLine = 100000

// TCPTableMap is the map name tcp_table lookups are answered from: the
// protocol carries no map name, so a tcp_table listener serves the default
// class only.
const TCPTableMap = "tlspolicy"

// tcp_table errors, matchable with errors.Is. Errors for malformed input
// wrap ErrTCPTableMalformed with the reason.
var (
	ErrTCPTableTooLong   = errors.New("tcp_table line too long")
	ErrTCPTableMalformed = errors.New("malformed tcp_table request")
)

// tcpTableCodec answers Postfix tcp_table(5) lookups: "get KEY\n" requests
// and "200 VALUE\n" (found), "500 text\n" (not found) or "400 text\n"
// (temporary error) replies, KEY, VALUE and text %XX-encoded.
type tcpTableCodec struct {
	lookup TableLookup
}

// NewTCPTableCodec returns the tcp_table codec, which looks keys up in the
// TCPTableMap map of lookup.
func NewTCPTableCodec(lookup TableLookup) Codec {
	return &tcpTableCodec{lookup: lookup}
}

// ServeRequest reads one request line and writes its reply line.
func (tc *tcpTableCodec) ServeRequest(ctx context.Context, c *Conn) error {
	line, err := readLine(c.R, c.Buf, MaxTCPTableLine)
	if err != nil {
		return tc.badRequest(c, err)
	}
	c.Buf = line[:0]
	key, err := parseTCPTableRequest(line)
	if err != nil {
		return tc.badRequest(c, err)
	}
	var result RequestResult
	a := tc.lookup.LookupTable(ctx, TCPTableMap, key)
	c.countAnswer(TCPTableMap, a)
	c.Scratch, result = appendTCPTableReply(c.Scratch[:0], a)
	return c.endLookup(ctx, result, TCPTableMap, key)
}

// badRequest answers bad input with a 400 (tcp_table has no permanent
// error; a 400 makes Postfix defer, which fails closed; see
// Conn.rejectBadInput).
func (tc *tcpTableCodec) badRequest(c *Conn, err error) error {
	return c.rejectBadInput(err, ErrTCPTableTooLong, ErrTCPTableMalformed, "tcp_table", func(dst []byte, reason string) []byte {
		return appendTCPTableLine(dst, "400 ", reason)
	})
}

// parseTCPTableRequest checks a request line (without its terminator) and
// decodes its key in place.
func parseTCPTableRequest(line []byte) ([]byte, error) {
	key, ok := bytes.CutPrefix(line, []byte("get "))
	if !ok {
		return nil, fmt.Errorf("%w: expected \"get KEY\"", ErrTCPTableMalformed)
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("%w: empty key", ErrTCPTableMalformed)
	}
	// Decoding never lengthens, so it can overwrite the encoded key.
	return appendHexUnquoted(key[:0], key)
}

// appendTCPTableReply appends the reply line for a and returns the result
// label to count. A reply over MaxTCPTableLine, or a status the codec does
// not know, becomes a 400.
func appendTCPTableReply(dst []byte, a Answer) ([]byte, RequestResult) {
	var code, text string
	switch a.Status {
	case StatusOK:
		code, text = "200 ", a.Text
	case StatusNotFound:
		return append(dst, "500 NOTFOUND\n"...), ResultNotFound
	case StatusTemp, StatusPerm:
		code, text = "400 ", a.Text
		if text == "" {
			text = a.Status.String() + " failure"
		}
	default:
		return appendTCPTableLine(dst, "400 ", "invalid lookup status"), ResultTemp
	}
	n := len(dst)
	dst = appendTCPTableLine(dst, code, text)
	if len(dst)-n > MaxTCPTableLine {
		return appendTCPTableLine(dst[:n], "400 ", "reply too long"), ResultTemp
	}
	return dst, resultOf(a.Status)
}

// appendTCPTableLine appends a reply line: the code, the encoded text, '\n'.
func appendTCPTableLine(dst []byte, code, text string) []byte {
	dst = append(dst, code...)
	dst = appendHexQuoted(dst, text)
	return append(dst, '\n')
}

// readLine reads one '\n'-terminated line from r into buf's array (growing
// it if needed) and returns it without its "\n" or "\r\n". It consumes at
// most max bytes, terminator included: a longer line is ErrTCPTableTooLong,
// found while reading, before the rest of the line is buffered.
//
// Errors: io.EOF if r ends before the first byte; io.ErrUnexpectedEOF if it
// ends inside the line; ErrTCPTableTooLong; or r's own error.
func readLine(r *bufio.Reader, buf []byte, max int) ([]byte, error) {
	buf = buf[:0]
	for {
		if _, err := r.Peek(1); err != nil {
			if len(buf) == 0 && errors.Is(err, io.EOF) {
				return nil, io.EOF
			}
			return nil, unexpectedEOF(err)
		}
		chunk, _ := r.Peek(r.Buffered())
		room := max - len(buf) // bytes we may still consume
		if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
			if i+1 > room {
				return nil, ErrTCPTableTooLong
			}
			buf = append(buf, chunk[:i]...)
			r.Discard(i + 1)
			return bytes.TrimSuffix(buf, []byte{'\r'}), nil
		}
		if len(chunk) >= room { // even a '\n' next would not fit
			return nil, ErrTCPTableTooLong
		}
		buf = append(buf, chunk...)
		r.Discard(len(chunk))
	}
}

const hexDigits = "0123456789ABCDEF"

// appendHexQuoted appends s with Postfix's hex_quote() encoding: '%', space,
// controls and bytes outside printable ASCII become %XX (upper case), the
// rest is copied.
func appendHexQuoted(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if hexQuoted(b) {
			dst = append(dst, '%', hexDigits[b>>4], hexDigits[b&0xf])
		} else {
			dst = append(dst, b)
		}
	}
	return dst
}

// hexQuoted reports whether appendHexQuoted writes b as %XX.
func hexQuoted(b byte) bool { return b == '%' || b <= ' ' || b >= 0x7f }

// appendHexUnquoted appends src with %XX sequences decoded (either case, as
// Postfix's hex_unquote() accepts) to dst. dst may be src[:0]: decoding
// never writes ahead of what it has read. A '%' not followed by two hex
// digits is an error wrapping ErrTCPTableMalformed.
func appendHexUnquoted(dst, src []byte) ([]byte, error) {
	for i := 0; i < len(src); i++ {
		b := src[i]
		if b != '%' {
			dst = append(dst, b)
			continue
		}
		if i+2 >= len(src) {
			return nil, fmt.Errorf("%w: truncated %%XX escape", ErrTCPTableMalformed)
		}
		hi, ok1 := unhex(src[i+1])
		lo, ok2 := unhex(src[i+2])
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%w: invalid %%XX escape", ErrTCPTableMalformed)
		}
		dst = append(dst, hi<<4|lo)
		i += 2
	}
	return dst, nil
}

func unhex(b byte) (byte, bool) {
	switch {
	case b >= '0' && b <= '9':
		return b - '0', true
	case b >= 'a' && b <= 'f':
		return b - 'a' + 10, true
	case b >= 'A' && b <= 'F':
		return b - 'A' + 10, true
	}
	return 0, false
}
