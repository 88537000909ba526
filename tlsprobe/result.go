package tlsprobe

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Cause says why a probe did not show a host (or a domain) fully capable.
// It is a small closed set so that verdict reasons, logs and metric labels
// can name it.
type Cause uint8

const (
	CauseNone             Cause = iota // nothing failed
	CauseNoSTARTTLS                    // the server did not offer STARTTLS
	CauseStartTLSRefused               // STARTTLS offered but refused (not 220)
	CauseHandshake                     // the TLS handshake failed
	CauseOldTLS                        // TLS version below the minimum
	CauseExpired                       // certificate expired or not yet valid
	CauseUnknownAuthority              // chain does not reach a trust anchor (self-signed, private CA)
	CauseNameMismatch                  // certificate not valid for the MX host name
	CauseTimeout                       // a step ran past its deadline (tarpit, filtered port)
	CauseRefused                       // TCP connection refused or reset
	CauseSMTP                          // unexpected SMTP reply or broken conversation
	CauseDNS                           // DNS lookup failed (SERVFAIL, timeout)
	CauseNXDomain                      // the domain does not exist
	CauseNullMX                        // RFC 7505 null MX: the domain takes no mail
	CauseNoAddress                     // no MX host has an address
	CausePrivateAddress                // refused to connect to a non-public address
)

var causeNames = [...]string{
	CauseNone:             "none",
	CauseNoSTARTTLS:       "no_starttls",
	CauseStartTLSRefused:  "starttls_refused",
	CauseHandshake:        "handshake_failure",
	CauseOldTLS:           "old_tls",
	CauseExpired:          "expired",
	CauseUnknownAuthority: "unknown_authority",
	CauseNameMismatch:     "name_mismatch",
	CauseTimeout:          "timeout",
	CauseRefused:          "connection_refused",
	CauseSMTP:             "smtp_error",
	CauseDNS:              "dns_failure",
	CauseNXDomain:         "nxdomain",
	CauseNullMX:           "null_mx",
	CauseNoAddress:        "no_address",
	CausePrivateAddress:   "private_address",
}

// String is the cause's metric label value.
func (c Cause) String() string {
	if int(c) < len(causeNames) {
		return causeNames[c]
	}
	return fmt.Sprintf("cause(%d)", uint8(c))
}

// Causes lists every cause, for pre-creating metric series.
func Causes() []Cause {
	cs := make([]Cause, len(causeNames))
	for i := range cs {
		cs[i] = Cause(i)
	}
	return cs
}

// Answered reports whether a host with this cause took part in the SMTP
// conversation. Hosts that did not answer (unreachable, refused, tarpitted
// before EHLO) do not count in a domain's summary: a sender would move on
// to the next MX too, as it does from a host that breaks the SMTP dialogue
// before STARTTLS. Hosts that did answer all count, so a domain is only as
// capable as its weakest answering MX.
func (c Cause) Answered() bool {
	switch c {
	case CauseTimeout, CauseRefused, CausePrivateAddress, CauseDNS, CauseNoAddress, CauseSMTP:
		return false
	}
	return true
}

// Capability is what a probe showed a destination can do, weakest first.
type Capability uint8

const (
	// CapUnknown: no evidence (the probe failed or nothing answered).
	CapUnknown Capability = iota
	// CapNone: plaintext only, or TLS below the minimum version.
	CapNone
	// CapEncrypt: STARTTLS with a TLS version at or above the minimum.
	CapEncrypt
	// CapVerify: as CapEncrypt, and a certificate chain to a trust anchor,
	// valid now, for the MX host name.
	CapVerify
)

func (c Capability) String() string {
	return [...]string{"unknown", "none", "encrypt", "verify"}[c]
}

// Target is what to probe: a domain's MX hosts, or one host directly (a
// Postfix "[host]" next hop). Port 0 means the prober's default port.
type Target struct {
	Name   string // lower-case A-label domain or host name, or an IP literal
	Direct bool   // probe Name itself, skipping the MX lookup
	Port   int
	// key is what Key returns, when known without building it (see
	// KeyedBy); "" otherwise.
	key string
}

// KeyedBy returns t with s as its known key if s is what Key would build
// (checked without allocating), else t as it is. A lookup of "[host]:port"
// holds that very text already: with it, Key neither concatenates nor
// allocates on the lookup path.
func (t Target) KeyedBy(s string) Target {
	if !t.Direct && t.Port == 0 {
		return t // Key is Name: nothing to build
	}
	if t.buildsKey(s) {
		t.key = s
	}
	return t
}

// buildsKey reports whether Key, building, would return s.
func (t Target) buildsKey(s string) bool {
	if t.Direct {
		if len(s) < len(t.Name)+2 || s[0] != '[' || s[1:1+len(t.Name)] != t.Name || s[1+len(t.Name)] != ']' {
			return false
		}
		s = s[len(t.Name)+2:]
	} else {
		if len(s) < len(t.Name) || s[:len(t.Name)] != t.Name {
			return false
		}
		s = s[len(t.Name):]
	}
	if t.Port == 0 {
		return s == ""
	}
	var port [24]byte
	p := strconv.AppendInt(append(port[:0], ':'), int64(t.Port), 10)
	return s == string(p) // the comparison does not allocate
}

// Clone returns t with a copy of its name, for keeping a target whose name
// borrows a buffer that will be reused.
func (t Target) Clone() Target {
	// A new value rather than t with its Name replaced: the compiler then
	// sees that nothing of t is kept.
	return Target{Name: strings.Clone(t.Name), Direct: t.Direct, Port: t.Port}
}

// Key is the cache key of a target.
func (t Target) Key() string {
	if t.key != "" {
		return t.key
	}
	k := t.Name
	if t.Direct {
		k = "[" + k + "]"
	}
	if t.Port != 0 {
		k += ":" + strconv.Itoa(t.Port)
	}
	return k
}

// HostReport is what one probe of one MX host address found.
type HostReport struct {
	Host       string         // MX host name (or the target for direct probes)
	Preference uint16         // MX preference
	Addr       netip.AddrPort // the address probed
	STARTTLS   bool           // offered in the EHLO reply
	TLSVersion uint16         // negotiated version; 0 without a handshake
	Cipher     uint16         // negotiated cipher suite
	ChainValid bool           // chain reaches a trust anchor and is valid now
	NameValid  bool           // certificate is valid for Host
	SelfSigned bool           // leaf signed by its own key
	NotAfter   time.Time      // leaf expiry
	Subject    string         // leaf subject, for people
	Issuer     string         // leaf issuer, for people
	Capability Capability     // what this host showed
	Cause      Cause          // why it is not CapVerify; CauseNone when it is
	Detail     string         // the error text behind Cause
	Duration   time.Duration
	// ProbedAt is when this host was probed: a result shared between the
	// domains the host serves may be older than the domain's probe.
	ProbedAt time.Time
	// shared reports that this probe took the result from Hosts, with no
	// connection (for the metrics; not kept).
	shared bool
}

// Version returns the negotiated TLS version's name, e.g. "TLSv1.2".
func (h HostReport) Version() string { return VersionName(h.TLSVersion) }

// VersionName names a TLS version as Postfix does ("TLSv1.2").
func VersionName(v uint16) string {
	switch v {
	case 0:
		return "-"
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

// ParseVersion maps Postfix's protocol names to TLS versions.
func ParseVersion(s string) (uint16, error) {
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11, tls.VersionTLS12, tls.VersionTLS13} {
		if VersionName(v) == s {
			return v, nil
		}
	}
	return 0, fmt.Errorf("unknown TLS version %q", s)
}

// Report is what a probe of a target found: every host address probed,
// and a summary that is safe for whichever MX a sender ends up using.
type Report struct {
	Target     Target
	Hosts      []HostReport
	Capability Capability // the weakest capability among hosts that answered
	Cause      Cause      // why the target is not CapVerify (domain failure, or the weakest host's cause)
	Detail     string
	ProbedAt   time.Time
	Duration   time.Duration
}

// Failed reports whether the probe produced no evidence (DNS failure, no
// host answered). Such results are cached for the shorter negative TTL.
func (r Report) Failed() bool { return r.Capability == CapUnknown }

// WeakestHost returns the answering host that limits the summary, if any.
func (r Report) WeakestHost() (HostReport, bool) {
	for _, h := range r.Hosts {
		if h.Cause.Answered() && h.Capability == r.Capability && h.Cause == r.Cause {
			return h, true
		}
	}
	return HostReport{}, false
}

// Reason says in a few words why the target is not verify-capable, e.g.
// "no STARTTLS at mx.example.com" or "TLSv1 below TLSv1.2 at mx.example.com".
func (r Report) Reason(minVersion uint16) string {
	if r.Cause == CauseNone {
		return "verified TLS at every MX that answered"
	}
	h, ok := r.WeakestHost()
	if !ok {
		if r.Detail != "" {
			return r.Detail
		}
		return r.Cause.String()
	}
	switch r.Cause {
	case CauseNoSTARTTLS:
		return "no STARTTLS at " + h.Host
	case CauseOldTLS:
		return fmt.Sprintf("%s below %s at %s", h.Version(), VersionName(minVersion), h.Host)
	case CauseExpired:
		return fmt.Sprintf("certificate of %s outside its validity period (not after %s)", h.Host, h.NotAfter.UTC().Format(time.DateOnly))
	case CauseUnknownAuthority:
		if h.SelfSigned {
			return "self-signed certificate at " + h.Host
		}
		return "untrusted certificate issuer at " + h.Host
	case CauseNameMismatch:
		return "certificate not valid for " + h.Host
	case CauseHandshake:
		return "TLS handshake failed at " + h.Host
	case CauseStartTLSRefused:
		return "STARTTLS refused by " + h.Host
	}
	return fmt.Sprintf("%s at %s", r.Cause, h.Host)
}

// MarshalText writes the cause's name in JSON output.
func (c Cause) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// MarshalText writes the capability's name in JSON output.
func (c Capability) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText reads a cause's name, for stored results.
func (c *Cause) UnmarshalText(b []byte) error {
	for i, n := range causeNames {
		if n == string(b) {
			*c = Cause(i)
			return nil
		}
	}
	return fmt.Errorf("unknown probe cause %q", b)
}

// UnmarshalText reads a capability's name, for stored results.
func (c *Capability) UnmarshalText(b []byte) error {
	for i, n := range []string{"unknown", "none", "encrypt", "verify"} {
		if n == string(b) {
			*c = Capability(i)
			return nil
		}
	}
	return fmt.Errorf("unknown capability %q", b)
}
