package mtasts

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Mode is what a policy asks of a sending MTA (RFC 8461 section 5). Modes
// are ordered by strength; the zero value, ModeNone, asks nothing.
type Mode uint8

// The modes of RFC 8461 section 3.2.
const (
	// ModeNone: treat the domain as having no policy. Domains publish it
	// to withdraw MTA-STS, so that senders replace the policy they cached
	// (RFC 8461 section 8.3).
	ModeNone Mode = iota
	// ModeTesting: check and report failures (TLS-RPT, RFC 8460), but
	// deliver anyway. It changes no answer; it is logged and counted.
	ModeTesting
	// ModeEnforce: deliver only to an MX host that matches the policy,
	// over TLS with a certificate valid for that host (RFC 8461 section 4).
	ModeEnforce
)

var modeNames = [...]string{ModeNone: "none", ModeTesting: "testing", ModeEnforce: "enforce"}

// String returns the mode as a policy writes it.
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// Modes lists the modes, weakest first (for metric labels).
func Modes() []Mode { return []Mode{ModeNone, ModeTesting, ModeEnforce} }

// Limits from RFC 8461.
const (
	// MaxPolicySize bounds a policy body. Section 3.3 lets senders limit
	// the size; 64 KiB is far beyond any real policy (a few hundred bytes)
	// and keeps a hostile server from making the daemon buffer much.
	MaxPolicySize = 64 << 10
	// MaxMaxAge is the largest max_age section 3.2 allows: 31557600
	// seconds, about a year.
	MaxMaxAge = 31557600 * time.Second
	// Version is the only policy and record version there is.
	Version = "STSv1"
)

// Policy is a domain's MTA-STS policy (RFC 8461 section 3.2).
type Policy struct {
	// Version is "STSv1".
	Version string
	// Mode is none, testing or enforce.
	Mode Mode
	// MX holds the mx patterns in lower case and in the order published,
	// without duplicates: host names, or "*.example.net" wildcards that
	// stand for exactly one more label (section 4.1).
	MX []string
	// MaxAge is how long the policy may be cached (section 3.2).
	MaxAge time.Duration
	// ID is the id of the TXT record that led to the policy (section
	// 3.1). ParsePolicy and Fetcher.Fetch leave it empty; the Cache sets
	// it, and compares it with the published id to know when to refetch.
	ID string
	// FetchedAt is when the policy was fetched; it expires MaxAge later.
	FetchedAt time.Time
	// Lines are the policy's lines as fetched, in order, repeated and
	// ignored ones included: without the line end and the white space
	// before it, blank lines left out. TLS reports quote the policy with
	// them (RFC 8460 section 4.4, "policy-string"; see ReportLines).
	// ParsePolicy sets them.
	Lines []string
}

// Expires returns when the policy stops applying: FetchedAt plus MaxAge.
func (p Policy) Expires() time.Time { return p.FetchedAt.Add(p.MaxAge) }

// Matches reports whether an MX host name is allowed by the policy (RFC 8461
// section 4.1): equal to a pattern, or one label more than a "*." pattern
// ("*.example.net" allows "mx1.example.net", not "example.net" and not
// "a.b.example.net"). Names are compared without regard to case or to a
// trailing dot, in their ASCII (A-label) form, as MX records hold them.
func (p Policy) Matches(host string) bool {
	host = strings.TrimSuffix(host, ".")
	if host == "" {
		return false
	}
	for _, pat := range p.MX {
		if parent, ok := strings.CutPrefix(pat, "*."); ok {
			label, rest, ok := strings.Cut(host, ".")
			if ok && label != "" && strings.EqualFold(rest, parent) {
				return true
			}
		} else if strings.EqualFold(host, pat) {
			return true
		}
	}
	return false
}

// PostfixMatch returns the patterns as the value of a Postfix TLS policy
// "match=" attribute: joined by ':', with each "*.example.net" written
// ".example.net", the Postfix form for "a name under example.net". The
// integrator renders an enforce policy as
//
//	secure match=<PostfixMatch()> servername=hostname
//
// (servername needs Postfix 3.4 or later). Postfix's ".example.net" also
// allows names more than one label down, so Postfix accepts a little more
// than RFC 8461 section 4.1 does; every other MTA-STS resolver for Postfix
// answers the same way, as Postfix has no one-label pattern.
func (p Policy) PostfixMatch() string {
	out := make([]string, 0, len(p.MX))
	for _, pat := range p.MX {
		if parent, ok := strings.CutPrefix(pat, "*."); ok {
			pat = "." + parent
		}
		pat = strings.ToLower(pat)
		if !slices.Contains(out, pat) {
			out = append(out, pat)
		}
	}
	return strings.Join(out, ":")
}

// String describes the policy on one line, for logs.
func (p Policy) String() string {
	return fmt.Sprintf("mode=%s mx=%s max_age=%d id=%s", p.Mode, strings.Join(p.MX, ","),
		int64(p.MaxAge/time.Second), p.ID)
}

// Text returns the policy in the format of RFC 8461 section 3.2, as a
// domain would serve it.
func (p Policy) Text() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "version: %s\nmode: %s\n", p.Version, p.Mode)
	for _, mx := range p.MX {
		fmt.Fprintf(&b, "mx: %s\n", mx)
	}
	fmt.Fprintf(&b, "max_age: %d\n", int64(p.MaxAge/time.Second))
	return b.Bytes()
}

// ReportLines returns the policy as a TLS report quotes it: Lines, or for
// a policy that has none (built in code, or stored before Lines existed)
// the lines of Text.
func (p Policy) ReportLines() []string {
	if len(p.Lines) > 0 {
		return p.Lines
	}
	return strings.Split(strings.TrimSuffix(string(p.Text()), "\n"), "\n")
}

// ParsePolicy parses a policy body (RFC 8461 section 3.2) and follows the
// section's ABNF exactly:
//
//	sts-policy-record      = sts-policy-field *WSP
//	                         *(sts-policy-term sts-policy-field *WSP)
//	                         [sts-policy-term]
//	sts-policy-term        = LF / CRLF
//	sts-policy-field-delim = ":" *WSP
//	sts-policy-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//
// Hence:
//
//   - each line is one "name:value" field, ended by LF or CRLF (both may
//     be mixed); the last line may lack its line end, but a CR that is not
//     followed by LF is refused wherever it is;
//   - spaces and tabs may follow the ':' and end a line, nowhere else: not
//     before the name, not before the ':';
//   - blank lines (an extra line end at the end of the body, say) are
//     outside the grammar but tolerated, and so is a trailing dot on an mx
//     pattern: they change nothing, and refusing the policy for them would
//     leave the domain with less protection than it asked for;
//   - version (exactly "STSv1"), mode ("none", "testing" or "enforce") and
//     max_age (1 to 10 digits, and at most MaxMaxAge as the prose says) are
//     required; names and values are case-sensitive, as the ABNF's %s says;
//   - at least one mx line is required unless the mode is none; each is
//     sts-policy-mx-value, ["*."] and an RFC 5321 Domain in ASCII:
//     "*.*.example.com", "mx*.example.com" or an empty pattern make the
//     policy invalid;
//   - a repeated version, mode or max_age is ignored, as section 3.2
//     requires ("all entries except for the first SHALL be ignored"), and
//     need only be well formed as an extension field, which every
//     "name:value" line must be; mx may repeat, and duplicates are dropped;
//   - unknown fields are ignored (section 3.2) but must be well formed: an
//     sts-policy-ext-name and an sts-policy-ext-value (see validExtValue);
//   - a body larger than MaxPolicySize is refused with ErrTooLarge.
//
// The policy keeps its non-blank lines in Lines. Other errors wrap
// ErrInvalidPolicy and name the line.
func ParsePolicy(body []byte) (Policy, error) {
	if len(body) > MaxPolicySize {
		return Policy{}, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), MaxPolicySize)
	}
	if len(body) == 0 {
		return Policy{}, fmt.Errorf("%w: empty body", ErrInvalidPolicy)
	}
	var p Policy
	var haveVersion, haveMode, haveMaxAge bool
	invalid := func(n int, format string, args ...any) (Policy, error) {
		return Policy{}, fmt.Errorf("%w: line %d: %s", ErrInvalidPolicy, n, fmt.Sprintf(format, args...))
	}
	// The optional final sts-policy-term; every other LF ends a line too.
	text, endsInLF := strings.CutSuffix(string(body), "\n")
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		n := i + 1
		if i < len(lines)-1 || endsInLF {
			line = strings.TrimSuffix(line, "\r") // CRLF
		}
		if strings.Trim(line, " \t") == "" {
			continue // blank lines change nothing (see the doc comment)
		}
		p.Lines = append(p.Lines, strings.TrimRight(line, " \t"))
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return invalid(n, "no ':' in %q", clip(line))
		}
		if !validFieldName(key) {
			return invalid(n, "invalid field name %q", clip(key))
		}
		// sts-policy-field-delim is ":" *WSP, and *WSP may end the line.
		value = strings.Trim(value, " \t")
		repeated := key == "version" && haveVersion || key == "mode" && haveMode || key == "max_age" && haveMaxAge
		switch {
		case repeated:
			if !validExtValue(value) {
				return invalid(n, "invalid value for repeated %q", key)
			}
		case key == "version":
			haveVersion = true
			if value != Version {
				return invalid(n, "version %q, want %q", clip(value), Version)
			}
			p.Version = value
		case key == "mode":
			haveMode = true
			m := slices.Index(modeNames[:], value)
			if m < 0 {
				return invalid(n, "mode %q, want none, testing or enforce", clip(value))
			}
			p.Mode = Mode(m)
		case key == "max_age":
			haveMaxAge = true
			d, err := parseMaxAge(value)
			if err != nil {
				return invalid(n, "%v", err)
			}
			p.MaxAge = d
		case key == "mx":
			pat, err := parsePattern(value)
			if err != nil {
				return invalid(n, "%v", err)
			}
			if !slices.Contains(p.MX, pat) {
				p.MX = append(p.MX, pat)
			}
		default:
			if !validExtValue(value) {
				return invalid(n, "invalid value for %q", key)
			}
		}
	}
	switch {
	case !haveVersion:
		return Policy{}, fmt.Errorf("%w: no version", ErrInvalidPolicy)
	case !haveMode:
		return Policy{}, fmt.Errorf("%w: no mode", ErrInvalidPolicy)
	case !haveMaxAge:
		return Policy{}, fmt.Errorf("%w: no max_age", ErrInvalidPolicy)
	case p.Mode != ModeNone && len(p.MX) == 0:
		return Policy{}, fmt.Errorf("%w: mode %s without mx", ErrInvalidPolicy, p.Mode)
	}
	return p, nil
}

// parseMaxAge reads sts-policy-max-age-value: 1*10 DIGIT, at most one year.
func parseMaxAge(s string) (time.Duration, error) {
	if s == "" || len(s) > 10 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("max_age %q is not 1 to 10 digits", clip(s))
	}
	secs, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("max_age %q: %w", s, err)
	}
	if secs > uint64(MaxMaxAge/time.Second) {
		return 0, fmt.Errorf("max_age %d is more than %d", secs, uint64(MaxMaxAge/time.Second))
	}
	return time.Duration(secs) * time.Second, nil
}

// parsePattern reads sts-policy-mx-value, ["*."] Domain (RFC 8461 section
// 3.2, Domain from RFC 5321 section 4.1.2), and returns it in lower case,
// without a trailing dot, which the grammar has not but some publish.
func parsePattern(s string) (string, error) {
	pat := strings.TrimSuffix(strings.ToLower(s), ".") // tolerated, see ParsePolicy
	prefix := ""
	if rest, ok := strings.CutPrefix(pat, "*."); ok {
		prefix, pat = "*.", rest
	}
	if !validHostname(pat) {
		return "", fmt.Errorf("mx pattern %q is not a host name or *. and a host name", clip(s))
	}
	return prefix + pat, nil
}

// validHostname reports whether s is an RFC 5321 Domain in ASCII: dot
// separated labels of letters, digits and inner hyphens, each at most 63
// bytes, 253 in all.
func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isAlnum(c) && c != '-' {
				return false
			}
		}
	}
	return true
}

// validFieldName reports whether s is an sts-policy-ext-name (which the
// known names are too): (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".").
func validFieldName(s string) bool {
	if s == "" || len(s) > 32 || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// validExtValue reports whether s is an sts-policy-ext-value:
//
//	sts-policy-ext-value = sts-policy-vchar
//	                       [*(%x20 / sts-policy-vchar) sts-policy-vchar]
//	sts-policy-vchar     = %x21-7E / UTF8-2 / UTF8-3 / UTF8-4
//
// that is visible ASCII or UTF-8 (RFC 3629), with plain spaces only between
// them: no tab, no other ASCII control character, no DEL, and no space at
// either end (spaces and tabs around a value belong to the line's *WSP,
// which the caller has trimmed). UTF8-2 includes U+0080 to U+009F; the
// grammar allows them, so this does too.
func validExtValue(s string) bool {
	if s == "" || s[0] == ' ' || s[len(s)-1] == ' ' || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		// Bytes of multi-byte UTF-8 sequences are all 0x80 or more.
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// clip shortens s for an error message: a hostile policy must not fill
// the logs.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
