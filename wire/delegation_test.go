package wire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"
)

// postfixRCPT is the attribute block Postfix 3.7 sends at RCPT (as
// captured from a real smtpd), with the sender and recipient to fill in.
func postfixRCPT(sender, recipient string) string {
	return "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n" +
		"client_address=127.0.0.1\nclient_name=localhost\nclient_port=36974\n" +
		"reverse_client_name=localhost\nserver_address=127.0.0.1\nserver_port=10025\n" +
		"helo_name=client.test\nsender=" + sender + "\nrecipient=" + recipient + "\n" +
		"recipient_count=0\nqueue_id=\ninstance=43b8.6b0b8489.40ca3.0\nsize=0\netrn_domain=\n" +
		"stress=\nsasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\nccert_issuer=\n" +
		"ccert_fingerprint=\nccert_pubkey_fingerprint=\nencryption_protocol=\nencryption_cipher=\n" +
		"encryption_keysize=0\npolicy_context=\n\n"
}

func TestReadPolicyRequest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in          string
		sender, recipient string
		err               error
	}{
		{"postfix 3.7 block", postfixRCPT("a@b.test", "c@d.test"), "a@b.test", "c@d.test", nil},
		{"unknown attributes ignored", "request=smtpd_access_policy\nfuture_attr=x\nrecipient=r@x.test\n\n", "", "r@x.test", nil},
		{"crlf lines", "request=smtpd_access_policy\r\nsender=s@x.test\r\n\r\n", "s@x.test", "", nil},
		{"value with =", "sender=a=b@x.test\n\n", "a=b@x.test", "", nil},
		{"clean eof", "", "", "", io.EOF},
		{"no equals", "request\n\n", "", "", ErrPolicyMalformed},
		{"empty name", "=x\n\n", "", "", ErrPolicyMalformed},
		{"empty block", "\n", "", "", ErrPolicyMalformed},
		{"eof inside block", "request=smtpd_access_policy\n", "", "", ErrPolicyMalformed},
		{"too many attributes", strings.Repeat("a=b\n", MaxPolicyAttrs+1) + "\n", "", "", ErrPolicyMalformed},
		{"line too long", "sender=" + strings.Repeat("x", 5000) + "\n\n", "", "", ErrPolicyMalformed},
		{"block too large", strings.Repeat("ccert_subject="+strings.Repeat("x", 1000)+"\n", 70) + "\n", "", "", ErrPolicyMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req policyRequest
			err := readPolicyRequest(bufio.NewReader(strings.NewReader(tc.in)), &req)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err == nil && (req.sender != tc.sender || req.recipient != tc.recipient) {
				t.Errorf("got sender %q recipient %q", req.sender, req.recipient)
			}
		})
	}
}

// fakeRcpt is the fake RcptChecker of the codec tests: it refuses
// recipients at plain.test, saying who asked, and lets the rest through.
type fakeRcpt struct{}

func (fakeRcpt) RcptAction(_ context.Context, sender, recipient string) string {
	if strings.HasSuffix(recipient, "@plain.test") {
		return "REJECT 5.7.10 no STARTTLS (sender " + sender + ")"
	}
	return ActionDunno
}

func TestDelegationServer(t *testing.T) {
	t.Parallel()
	ws := startWireServer(t, NewDelegationCodec(fakeRcpt{}), nil)
	c := dialWire(t, "tcp", ws.addr)
	// Many requests on one connection, as one smtpd process sends them.
	for _, tc := range []struct{ block, want string }{
		{postfixRCPT("doctor@clinic.test", "a@plain.test"), "action=REJECT 5.7.10 no STARTTLS (sender doctor@clinic.test)\n\n"},
		{postfixRCPT("doctor@clinic.test", "a@good.test"), "action=DUNNO\n\n"},
		{postfixRCPT("", "a@plain.test"), "action=REJECT 5.7.10 no STARTTLS (sender )\n\n"},
		{strings.Replace(postfixRCPT("doctor@clinic.test", "a@plain.test"), "protocol_state=RCPT", "protocol_state=END-OF-MESSAGE", 1), "action=DUNNO\n\n"},
		{"request=junk\nprotocol_state=RCPT\nrecipient=a@plain.test\n\n", "action=DUNNO\n\n"},
	} {
		c.send(tc.block)
		got := c.readLine() + c.readLine()
		if got != tc.want {
			t.Errorf("reply %q, want %q", got, tc.want)
		}
	}
	if !strings.Contains(ws.log.String(), "recipient refused or rerouted") {
		t.Errorf("a refusal is logged at info; log:\n%s", ws.log)
	}
	// Malformed input closes this connection only.
	bad := dialWire(t, "tcp", ws.addr)
	bad.send("this is not an attribute\n\n")
	bad.expectClosed()
	c.send(postfixRCPT("doctor@clinic.test", "a@good.test"))
	if got := c.readLine() + c.readLine(); got != "action=DUNNO\n\n" {
		t.Errorf("after another connection's bad input: %q", got)
	}
}

// echoRcpt is the RcptChecker of the fuzz test: it refuses every
// recipient, naming the sender and the recipient it was given, so that a
// reply shows what the codec parsed.
type echoRcpt struct{}

func (echoRcpt) RcptAction(_ context.Context, sender, recipient string) string {
	return "REJECT 5.7.10 from=" + sender + " to=" + recipient
}

// FuzzPolicyRequest runs the policy delegation codec over arbitrary input,
// request after request as the server core does, and checks that it writes
// exactly the replies expectedPolicyReplies works out line by line on its
// own: one action per well-formed block (echoRcpt's for an RCPT request,
// DUNNO for the rest), nothing for a malformed block, and nothing after
// it. The seeds are in testdata/fuzz/FuzzPolicyRequest.
func FuzzPolicyRequest(f *testing.F) {
	f.Add(postfixRCPT("a@b.test", "c@d.test"))
	f.Add("request=smtpd_access_policy\nprotocol_state=RCPT\n\nrequest=x\n\n")
	f.Add("a\n\n")
	f.Add("=\n")
	f.Add("\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		var out bytes.Buffer
		c := newTestConn(strings.NewReader(in), &out)
		codec := NewDelegationCodec(echoRcpt{})
		for {
			if _, err := c.R.Peek(1); err != nil {
				break // the core's wait for the next request
			}
			err := codec.ServeRequest(context.Background(), c)
			if ferr := c.W.Flush(); ferr != nil {
				t.Fatal(ferr)
			}
			if err != nil {
				if !errors.Is(err, ErrPolicyMalformed) {
					t.Fatalf("error %v, want one wrapping ErrPolicyMalformed", err)
				}
				break
			}
		}
		if want := expectedPolicyReplies(in, c.R.Size()); out.String() != want {
			t.Fatalf("input %q:\nreplies %q\nwant    %q", in, out.String(), want)
		}
	})
}

// expectedPolicyReplies is what the codec must answer to in, read with a
// buffer of bufSize bytes (the longest line it can hold, newline
// included): SMTPD_POLICY_README's blocks of name=value lines, each ended
// by an empty line, within the bounds MaxPolicyAttrs and
// MaxPolicyBlockSize; a line may end in CRLF. The last value of a
// repeated attribute counts. Input that breaks the rules ends the replies,
// as does a block the input ends inside.
func expectedPolicyReplies(in string, bufSize int) string {
	var out strings.Builder
	attrs := map[string]string{}
	size, n := 0, 0
	for in != "" {
		i := strings.IndexByte(in, '\n')
		if i < 0 || i+1 > bufSize {
			return out.String() // unterminated, or longer than a line may be
		}
		line := in[:i+1]
		in = in[i+1:]
		if size += len(line); size > MaxPolicyBlockSize {
			return out.String()
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if n == 0 {
				return out.String() // an empty block
			}
			action := ActionDunno
			if attrs["request"] == "smtpd_access_policy" && attrs["protocol_state"] == "RCPT" {
				action = echoRcpt{}.RcptAction(context.Background(), attrs["sender"], attrs["recipient"])
			}
			out.WriteString("action=" + action + "\n\n")
			clear(attrs)
			size, n = 0, 0
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if n++; n > MaxPolicyAttrs || !ok || name == "" {
			return out.String()
		}
		attrs[name] = value
	}
	return out.String()
}

// BenchmarkDelegation drives one persistent policy connection over
// loopback with Postfix's RCPT block and reports requests per CPU-second
// of the whole process (client and server together, so the server alone
// does better). The decision is a fake: this measures the protocol; the
// engine's part is in policyd's BenchmarkRcptAction.
func BenchmarkDelegation(b *testing.B) {
	ws := startWireServer(b, NewDelegationCodec(fakeRcpt{}), nil)
	c := dialWire(b, "tcp", ws.addr)
	block := postfixRCPT("doctor@clinic.test", "a@good.test")
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	for b.Loop() {
		c.send(block)
		if c.readLine() != "action=DUNNO\n" || c.readLine() != "\n" {
			b.Fatal("unexpected reply")
		}
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(b.N)/cpu.Seconds(), "req/CPU-s")
}
