package wire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
)

// The Postfix SMTP access policy delegation protocol (SMTPD_POLICY_README):
// a block of "name=value" lines ended by an empty line comes in, and
// "action=..." with an empty line goes out. One connection serves every
// session of an smtpd process, so it carries many blocks.

// Bounds on one attribute block. Postfix 3.7 sends 29 short attributes;
// newer releases add a few. Certificate subjects are the longest values.
const (
	MaxPolicyAttrs     = 100
	MaxPolicyBlockSize = 64 << 10
	maxPolicyLine      = 4096 // the connection's bufio.Reader size
)

// ErrPolicyMalformed is wrapped by every error about a bad attribute block.
var ErrPolicyMalformed = errors.New("malformed policy request")

// policyRequest holds the attributes the decision needs; the others are
// read and ignored, so newer Postfix attributes do no harm.
type policyRequest struct {
	request, state, sender, recipient string
}

// readPolicyRequest reads one attribute block from r into req. It returns
// io.EOF (unwrapped) when the peer closed cleanly before a block.
func readPolicyRequest(r *bufio.Reader, req *policyRequest) error {
	*req = policyRequest{}
	size, attrs := 0, 0
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return fmt.Errorf("%w: line longer than %d bytes", ErrPolicyMalformed, r.Size())
			}
			if size == 0 && len(line) == 0 {
				return err // clean EOF between blocks
			}
			return fmt.Errorf("%w: connection ended inside a block: %v", ErrPolicyMalformed, err)
		}
		size += len(line)
		if size > MaxPolicyBlockSize {
			return fmt.Errorf("%w: block longer than %d bytes", ErrPolicyMalformed, MaxPolicyBlockSize)
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte{'\n'}), []byte{'\r'})
		if len(line) == 0 {
			if attrs == 0 {
				return fmt.Errorf("%w: empty block", ErrPolicyMalformed)
			}
			return nil
		}
		if attrs++; attrs > MaxPolicyAttrs {
			return fmt.Errorf("%w: more than %d attributes", ErrPolicyMalformed, MaxPolicyAttrs)
		}
		name, value, ok := bytes.Cut(line, []byte{'='})
		if !ok || len(name) == 0 {
			return fmt.Errorf("%w: line without name=value", ErrPolicyMalformed)
		}
		switch string(name) { // the conversion does not allocate in a switch
		case "request":
			req.request = string(value)
		case "protocol_state":
			req.state = string(value)
		case "sender":
			req.sender = string(value)
		case "recipient":
			req.recipient = string(value)
		}
	}
}

type delegationCodec struct {
	check RcptChecker
}

// NewDelegationCodec returns the policy delegation codec: RCPT-state
// requests are answered by check, every other request with DUNNO.
func NewDelegationCodec(check RcptChecker) Codec {
	return &delegationCodec{check: check}
}

// ServeRequest reads one attribute block and writes its action. Malformed
// input closes the connection without a reply: the protocol has no way to
// say "bad request", and Postfix answers the client with its own
// temporary error ("451 4.3.5 Server configuration problem").
func (dc *delegationCodec) ServeRequest(ctx context.Context, c *Conn) error {
	var req policyRequest
	if err := readPolicyRequest(c.R, &req); err != nil {
		if errors.Is(err, ErrPolicyMalformed) {
			c.CountRequest(ResultMalformed, c.Elapsed())
			c.Logger().Warn("bad policy request; closing connection", "err", err)
		}
		return err
	}
	action := ActionDunno
	if req.request == "smtpd_access_policy" && req.state == "RCPT" {
		action = dc.check.RcptAction(ctx, req.sender, req.recipient)
		if action != ActionDunno {
			c.Logger().Info("recipient refused or rerouted", "sender", req.sender, "recipient", req.recipient,
				"action", action)
		}
	}
	c.Scratch = append(append(append(c.Scratch[:0], "action="...), action...), "\n\n"...)
	d, err := c.endRequest(ResultOK)
	if err != nil {
		return err
	}
	if c.debug {
		c.Logger().Debug("policy request", "state", req.state, "sender", req.sender,
			"recipient", req.recipient, "action", action, "duration", d)
	}
	return nil
}
