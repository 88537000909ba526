package mtasts

import (
	"fmt"
	"strings"
)

// ParseTXT parses an MTA-STS TXT record (RFC 8461 section 3.1), such as
// "v=STSv1; id=20160831085700Z;", and returns its id, which changes whenever
// the domain changes its policy.
//
// It follows the section's ABNF strictly: the record starts with "v=STSv1";
// fields are separated by one ';' with optional spaces or tabs around it, and
// a final separator is allowed; the id is 1 to 32 letters and digits;
// extension fields (name=value) are accepted and ignored. A missing id, an
// empty field (";;"), a field without '=' or stray characters make the
// record invalid; a repeated id counts only the first time, as section 3.2
// says of repeated fields. Errors wrap ErrInvalidRecord.
func ParseTXT(s string) (id string, err error) {
	invalid := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: %s in %q", ErrInvalidRecord, fmt.Sprintf(format, args...), clip(s))
	}
	rest, ok := strings.CutPrefix(s, "v="+Version)
	if !ok {
		return invalid("does not start with v=%s", Version)
	}
	fields := 0
	for {
		// sts-sep = *WSP %x3B *WSP
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			if fields == 0 {
				return invalid("no field after the version")
			}
			break
		}
		if rest[0] != ';' {
			return invalid("expected ';' before %q", clip(rest))
		}
		rest = strings.TrimLeft(rest[1:], " \t")
		if rest == "" && fields > 0 {
			break // [sts-sep] at the end
		}
		name, value, ok := strings.Cut(rest, "=")
		// sts-ext-name has the syntax of a policy field name; "id" is one.
		if !ok || !validFieldName(name) {
			return invalid("expected name=value at %q", clip(rest))
		}
		n := len(value)
		if name == "id" {
			n = spanFunc(value, func(c byte) bool { return isAlnum(c) })
			if n == 0 || n > 32 {
				return invalid("id is not 1 to 32 letters and digits")
			}
			if id == "" {
				id = value[:n]
			}
		} else {
			// sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
			n = spanFunc(value, func(c byte) bool { return c >= 0x21 && c <= 0x7e && c != ';' && c != '=' })
			if n == 0 {
				return invalid("empty value for %q", name)
			}
		}
		rest = value[n:]
		fields++
	}
	if id == "" {
		return invalid("no id")
	}
	return id, nil
}

// spanFunc returns the length of the prefix of s whose bytes satisfy ok.
func spanFunc(s string, ok func(byte) bool) int {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return i
		}
	}
	return len(s)
}

// isSTSRecord reports whether a TXT record is one of MTA-STS at all: section
// 3.1 has senders discard the records that do not begin with "v=STSv1"
// before counting. A record that begins so and is invalid is still counted,
// then refused by ParseTXT.
func isSTSRecord(txt string) bool {
	rest, ok := strings.CutPrefix(txt, "v="+Version)
	return ok && (rest == "" || rest[0] == ';' || rest[0] == ' ' || rest[0] == '\t')
}
