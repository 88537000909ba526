package tlsprobe

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
)

// Bounds on what a probed server may send: a hostile MX must not make the
// prober buffer without limit or loop forever.
const (
	maxReplyLine  = 2048 // RFC 5321 allows 512; be generous
	maxReplyLines = 100
	maxPreTLS     = 64 << 10 // bytes read before the handshake
)

// privateRefusedDetail follows a refused address in HostReport.Detail. It
// names the setting that allows such addresses, so that a postmaster who
// sees the refusal (probe command, status page, log) knows it was a choice
// and where it is made: an MX at a private address is usually a test
// set-up or a DNS record pointing somewhere it should not (SSRF).
const privateRefusedDetail = " is not a public address: refused (set probe.allow_private: true to probe such addresses)"

// probeError carries a Cause with the error behind it.
type probeError struct {
	cause Cause
	err   error
}

func (e *probeError) Error() string { return e.err.Error() }
func (e *probeError) Unwrap() error { return e.err }

func fail(c Cause, format string, args ...any) error {
	return &probeError{cause: c, err: fmt.Errorf(format, args...)}
}

// netCause classifies a network error: a deadline is a timeout, a refusal or
// reset means nobody answered.
func netCause(err error) Cause {
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return CauseTimeout
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return CauseRefused
	}
	return CauseSMTP
}

// session is one SMTP conversation with one MX address.
type session struct {
	conn net.Conn
	r    *bufio.Reader
	step time.Duration
	ctx  context.Context
}

// deadline arms the connection for one step: the step timeout, or the
// whole probe's deadline if that comes first.
func (s *session) deadline() {
	d := time.Now().Add(s.step)
	if dl, ok := s.ctx.Deadline(); ok && dl.Before(d) {
		d = dl
	}
	s.conn.SetDeadline(d)
}

// reply reads one whole SMTP reply, multi-line included ("250-..." lines
// until "250 ..."), and returns its code and text lines.
func (s *session) reply() (int, []string, error) {
	s.deadline()
	var lines []string
	for len(lines) < maxReplyLines {
		line, err := s.r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return 0, nil, fail(CauseSMTP, "reply line longer than %d bytes", maxReplyLine)
			}
			return 0, nil, &probeError{cause: netCause(err), err: err}
		}
		text := strings.TrimRight(string(line), "\r\n")
		if len(text) < 3 {
			return 0, nil, fail(CauseSMTP, "malformed reply line %q", text)
		}
		code, err := strconv.Atoi(text[:3])
		if err != nil || code < 200 || code > 599 {
			return 0, nil, fail(CauseSMTP, "malformed reply line %q", text)
		}
		rest := text[3:]
		if len(rest) > 0 && rest[0] == '-' {
			lines = append(lines, rest[1:])
			continue
		}
		return code, append(lines, strings.TrimPrefix(rest, " ")), nil
	}
	return 0, nil, fail(CauseSMTP, "reply longer than %d lines", maxReplyLines)
}

func (s *session) command(cmd string) (int, []string, error) {
	s.deadline()
	if _, err := io.WriteString(s.conn, cmd+"\r\n"); err != nil {
		return 0, nil, &probeError{cause: netCause(err), err: err}
	}
	return s.reply()
}

// hasExtension reports whether an EHLO reply lists keyword. The first line
// is the greeting; STARTTLS may be on any later line, the last included.
func hasExtension(lines []string, keyword string) bool {
	for _, l := range lines[min(1, len(lines)):] {
		word, _, _ := strings.Cut(strings.TrimSpace(l), " ")
		if strings.EqualFold(word, keyword) {
			return true
		}
	}
	return false
}

// probeAddr runs the STARTTLS conversation with one address and records
// what held: banner, EHLO, STARTTLS, the full handshake, then QUIT. The
// handshake accepts any certificate; the chain and the name are checked
// afterwards, so that one result says both "TLS works" and "why it would
// not verify".
func (p *Prober) probeAddr(ctx context.Context, host string, pref uint16, addr netip.AddrPort) (h HostReport) {
	start := p.now()
	h = HostReport{Host: host, Preference: pref, Addr: addr, ProbedAt: start}
	defer func() { h.Duration = p.now().Sub(start) }()
	if !p.AllowPrivate && !dnsclient.IsPublic(addr.Addr()) {
		h.Cause, h.Detail = CausePrivateAddress, addr.Addr().String()+privateRefusedDetail
		p.Metrics.refusedPrivate()
		return h
	}
	err := p.converse(ctx, &h, addr)
	if err != nil {
		var pe *probeError
		switch {
		case ctx.Err() != nil && errors.Is(err, net.ErrClosed):
			// The probe's deadline (or its cancellation) closed the
			// connection under a read: a timeout, not a broken server.
			err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
			h.Cause = netCause(err)
		case errors.As(err, &pe):
			h.Cause = pe.cause
		default:
			h.Cause = netCause(err)
		}
		h.Detail = err.Error()
	}
	return h
}

func (p *Prober) converse(ctx context.Context, h *HostReport, addr netip.AddrPort) error {
	dctx, cancel := context.WithTimeout(ctx, p.step())
	conn, err := p.dial(dctx, "tcp", addr.String())
	cancel()
	if err != nil {
		return &probeError{cause: netCause(err), err: err}
	}
	defer conn.Close()
	// Deadlines bound each step; closing on cancellation ends a blocked
	// read at once, so that shutting the daemon down does not wait for a
	// tarpit's step timeout.
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	s := &session{conn: conn, r: bufio.NewReaderSize(io.LimitReader(conn, maxPreTLS), maxReplyLine), step: p.step(), ctx: ctx}

	code, _, err := s.reply()
	if err != nil {
		return err
	}
	if code != 220 {
		return fail(CauseSMTP, "banner: %d", code)
	}
	code, ext, err := s.command("EHLO " + p.helo())
	if err != nil {
		return err
	}
	if code != 250 {
		h.Capability = CapNone
		return fail(CauseNoSTARTTLS, "EHLO refused with %d: no ESMTP, so no STARTTLS", code)
	}
	h.STARTTLS = hasExtension(ext, "STARTTLS")
	if !h.STARTTLS {
		h.Capability = CapNone
		s.command("QUIT")
		return fail(CauseNoSTARTTLS, "STARTTLS not offered")
	}
	code, _, err = s.command("STARTTLS")
	if err != nil {
		return err
	}
	if code != 220 {
		h.Capability = CapNone
		return fail(CauseStartTLSRefused, "STARTTLS answered %d", code)
	}
	if s.r.Buffered() > 0 {
		// Bytes after "220" before the handshake: a command-injection
		// attempt or a broken server (CVE-2011-0411 class). Do not go on.
		h.Capability = CapNone
		return fail(CauseHandshake, "unexpected data after the STARTTLS reply, before the handshake")
	}

	tc := tls.Client(conn, p.tlsConfig(h.Host))
	hctx, cancel := context.WithTimeout(ctx, p.step())
	err = p.withCPU(hctx, func() error { return tc.HandshakeContext(hctx) })
	cancel()
	if err != nil {
		h.Capability = CapNone
		if c := netCause(err); c == CauseTimeout {
			return &probeError{cause: c, err: err}
		}
		return &probeError{cause: CauseHandshake, err: err}
	}
	st := tc.ConnectionState()
	h.TLSVersion, h.Cipher = st.Version, st.CipherSuite
	p.quit(tc)

	if st.Version < p.minVersion() {
		h.Capability = CapNone
		return fail(CauseOldTLS, "negotiated %s, below %s", VersionName(st.Version), VersionName(p.minVersion()))
	}
	h.Capability = CapEncrypt
	if err := p.withCPU(ctx, func() error { return p.checkCertificate(h, st.PeerCertificates) }); err != nil {
		return err
	}
	h.Capability = CapVerify
	return nil
}

// withCPU runs the CPU-heavy step f (a handshake, a chain check) in one of
// the handshake slots that Hosts bounds, so that probes never take every
// CPU from lookups; without Hosts, at once.
func (p *Prober) withCPU(ctx context.Context, f func() error) error {
	release, err := p.Hosts.handshake(ctx)
	if err != nil {
		return &probeError{cause: netCause(err), err: fmt.Errorf("waiting for a handshake slot: %w", err)}
	}
	defer release()
	return f()
}

// quit ends the TLS session politely; its outcome does not matter.
func (p *Prober) quit(tc *tls.Conn) {
	tc.SetDeadline(time.Now().Add(min(p.step(), 2*time.Second)))
	if _, err := io.WriteString(tc, "QUIT\r\n"); err == nil {
		bufio.NewReaderSize(io.LimitReader(tc, maxReplyLine), maxReplyLine).ReadSlice('\n')
	}
}

// tlsConfig accepts every certificate and every protocol version and
// cipher suite the Go library can speak, so that the probe learns what the
// server offers; verification is done afterwards by checkCertificate.
func (p *Prober) tlsConfig(host string) *tls.Config {
	var suites []uint16
	for _, cs := range tls.CipherSuites() {
		suites = append(suites, cs.ID)
	}
	for _, cs := range tls.InsecureCipherSuites() {
		suites = append(suites, cs.ID)
	}
	cfg := &tls.Config{
		InsecureSkipVerify: true, // verified by checkCertificate, after the handshake
		MinVersion:         tls.VersionTLS10,
		CipherSuites:       suites,
	}
	if _, err := netip.ParseAddr(host); err != nil {
		cfg.ServerName = host // SNI, as Postfix sends it
	}
	return cfg
}

// checkCertificate verifies the chain against the trust anchors and the
// leaf against the MX host name, recording each result.
func (p *Prober) checkCertificate(h *HostReport, certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return fail(CauseHandshake, "server sent no certificate")
	}
	leaf := certs[0]
	h.NotAfter, h.Subject, h.Issuer = leaf.NotAfter, leaf.Subject.String(), leaf.Issuer.String()
	// Not CheckSignatureFrom(leaf): it refuses a parent that is not a CA,
	// and many self-signed server certificates are not CAs.
	h.SelfSigned = bytes.Equal(leaf.RawIssuer, leaf.RawSubject) &&
		leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature) == nil
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         p.Roots,
		Intermediates: inter,
		CurrentTime:   p.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	h.ChainValid = err == nil
	h.NameValid = leaf.VerifyHostname(h.Host) == nil
	now := p.now()
	switch {
	case now.After(leaf.NotAfter) || now.Before(leaf.NotBefore):
		return fail(CauseExpired, "certificate valid %s to %s", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	case err != nil:
		return fail(CauseUnknownAuthority, "certificate chain: %v", err)
	case !h.NameValid:
		return fail(CauseNameMismatch, "certificate is for %s, not %s", strings.Join(leaf.DNSNames, ", "), h.Host)
	}
	return nil
}
