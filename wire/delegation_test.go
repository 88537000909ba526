package wire

import (
	"bufio"
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

func FuzzPolicyRequest(f *testing.F) {
	f.Add(postfixRCPT("a@b.test", "c@d.test"))
	f.Add("request=smtpd_access_policy\nprotocol_state=RCPT\n\nrequest=x\n\n")
	f.Add("a\n\n")
	f.Add("=\n")
	f.Add("\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		r := bufio.NewReaderSize(strings.NewReader(in), 4096)
		consumed := 0
		for {
			var req policyRequest
			err := readPolicyRequest(r, &req)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, ErrPolicyMalformed) {
					t.Fatalf("unexpected error type: %v", err)
				}
				return
			}
			// A parsed block came from the input and keeps its bounds.
			for _, v := range []string{req.request, req.state, req.sender, req.recipient} {
				if len(v) > maxPolicyLine || !strings.Contains(in, v) {
					t.Fatalf("attribute %q not from the input", v)
				}
			}
			if consumed++; consumed > len(in) {
				t.Fatal("more blocks than bytes")
			}
		}
	})
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
