package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The Exim line protocol, for ${readsocket{inet:HOST:PORT}{REQUEST\n}...}:
// Exim writes one request line, half-closes, and reads until the server
// closes. So one line in, one line out, then close. The requests:
//
//	MAP KEY                      a table lookup, as over socketmap: MAP is
//	                             tlspolicy, a class name, transport or
//	                             sender.transport; the reply is
//	                             "OK value", "NOTFOUND", "TEMP why" or "PERM why"
//	rcpt.check <SENDER> <RCPT>   the RCPT-time decision, as the policy
//	                             delegation server gives it: "DUNNO",
//	                             "REJECT 5.7.10 text", "DEFER_IF_PERMIT 4.7.10 text", ...
//
// Angle brackets around the addresses let an empty sender (a bounce) be
// written as "<>". The reply never spans lines.

// MapRcptCheck is the Exim request for the RCPT-time decision. Its dot
// keeps it apart from class names.
const MapRcptCheck = "rcpt.check"

// ErrEximMalformed is wrapped by errors about a bad Exim request.
var ErrEximMalformed = errors.New("malformed exim request")

type eximCodec struct {
	lookup TableLookup
	check  RcptChecker
}

// NewEximCodec returns the Exim line codec: table lookups go to lookup,
// rcpt.check requests to check.
func NewEximCodec(lookup TableLookup, check RcptChecker) Codec {
	return &eximCodec{lookup: lookup, check: check}
}

// ServeRequest answers the one request of an Exim connection and returns
// io.EOF so that the core closes it: Exim reads until the close.
func (ec *eximCodec) ServeRequest(ctx context.Context, c *Conn) error {
	line, err := readEximLine(c.R, maxPolicyLine)
	if errors.Is(err, ErrEximMalformed) {
		if werr := ec.reply(c, ResultMalformed, "PERM "+err.Error()); werr != nil {
			return werr
		}
		return err
	}
	if err != nil {
		return err
	}
	result, reply := ec.answer(ctx, c, line)
	if err := ec.reply(c, result, reply); err != nil {
		return err
	}
	if c.debug {
		c.Logger().Debug("exim request", "request", line, "reply", reply)
	}
	return io.EOF
}

// readEximLine reads the request line, ended by a newline or by Exim's
// half-close, at most max bytes.
func readEximLine(r *bufio.Reader, max int) (string, error) {
	var b []byte
	for {
		chunk, err := r.ReadSlice('\n')
		b = append(b, chunk...)
		if len(b) > max {
			return "", fmt.Errorf("%w: request longer than %d bytes", ErrEximMalformed, max)
		}
		switch {
		case err == nil, errors.Is(err, io.EOF) && len(b) > 0:
			return strings.TrimSpace(string(b)), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		}
		return "", err
	}
}

func (ec *eximCodec) answer(ctx context.Context, c *Conn, req string) (RequestResult, string) {
	name, rest, ok := strings.Cut(req, " ")
	if !ok || name == "" || rest == "" {
		return ResultMalformed, fmt.Sprintf("PERM %v: expected \"MAP KEY\" or \"%s <SENDER> <RECIPIENT>\"", ErrEximMalformed, MapRcptCheck)
	}
	if name == MapRcptCheck {
		sender, recipient, ok := strings.Cut(rest, " ")
		if !ok {
			return ResultMalformed, fmt.Sprintf("PERM %v: expected \"%s <SENDER> <RECIPIENT>\"", ErrEximMalformed, MapRcptCheck)
		}
		return ResultOK, ec.check.RcptAction(ctx, strings.Trim(sender, "<>"), strings.Trim(strings.TrimSpace(recipient), "<>"))
	}
	a := ec.lookup.LookupTable(ctx, name, []byte(rest))
	c.countAnswer(name, a)
	switch a.Status {
	case StatusOK:
		return ResultOK, "OK " + a.Text
	case StatusNotFound:
		return ResultNotFound, "NOTFOUND"
	case StatusTemp:
		return ResultTemp, "TEMP " + a.Text
	}
	return ResultPerm, "PERM " + a.Text
}

// reply writes reply as one line: line breaks inside it become spaces,
// and every other byte is kept as it is (a key that is not UTF-8 comes
// back as it was sent).
func (ec *eximCodec) reply(c *Conn, result RequestResult, reply string) error {
	c.Scratch = append(c.Scratch[:0], reply...)
	for i, b := range c.Scratch {
		if b == '\n' || b == '\r' {
			c.Scratch[i] = ' '
		}
	}
	c.Scratch = append(c.Scratch, '\n')
	_, err := c.endRequest(result)
	if result == ResultMalformed {
		c.Logger().Warn("bad exim request", "reply", string(c.Scratch[:len(c.Scratch)-1]))
	}
	return err
}
