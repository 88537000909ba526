package mtasts

import (
	"fmt"
	"strings"
)

// recordPrefix is how an MTA-STS TXT record begins: RFC 8461 section 3.1
// discards, before counting, every record that does not begin so.
const recordPrefix = "v=" + Version + ";"

// ParseTXT parses an MTA-STS TXT record (RFC 8461 section 3.1), such as
// "v=STSv1; id=20160831085700Z;", and returns its id, which changes whenever
// the domain changes its policy. Errors wrap ErrInvalidRecord.
//
// The section's ABNF is
//
//	sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
//	sts-field-delim = *WSP ";" *WSP
//	sts-version     = %s"v=STSv1"
//	sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
//	sts-extension   = sts-ext-name "=" sts-ext-value
//	sts-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//	sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)
//
// and ParseTXT follows it exactly but in one place. The grammar lets
// spaces and tabs stand between "v=STSv1" and the first ';', but the
// section's prose has senders discard "records that do not begin with
// "v=STSv1;"" before counting them, so such a record is never an MTA-STS
// record at all (RFC 8461 erratum 6285 reports the conflict). ParseTXT
// follows the prose there: a record must begin with exactly "v=STSv1;", so
// that it accepts only records that Discover counts, and a stray record
// such as a bare "v=STSv1" can neither be parsed nor hide a valid one. Every
// later separator follows the grammar: ';' with optional spaces or tabs on
// either side.
//
// Hence: at least one field; an optional ';' (and spaces or tabs) after the
// last field, but no space or tab after it without that ';'; no empty
// field (";;"); the id is 1 to 32 letters and digits and required; field
// names are case-sensitive ("ID" is an extension); extension fields
// (name=value) are accepted and ignored. A repeated id counts only the
// first time, as section 3.2 says of repeated fields; a repeat is ignored
// and need only be well formed as an sts-extension, which any name=value
// field of the record is.
func ParseTXT(s string) (id string, err error) {
	invalid := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: %s in %q", ErrInvalidRecord, fmt.Sprintf(format, args...), clip(s))
	}
	rest, ok := strings.CutPrefix(s, recordPrefix)
	if !ok {
		return invalid("does not begin with %q", recordPrefix)
	}
	fields := 0
	for {
		// rest follows a ';': the *WSP that ends an sts-field-delim, then
		// a field or, after the last field, nothing.
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			if fields == 0 {
				return invalid("no field after %q", recordPrefix)
			}
			break
		}
		name, value, ok := strings.Cut(rest, "=")
		if !ok || !validFieldName(name) {
			return invalid("expected name=value at %q", clip(rest))
		}
		var n int
		if name == "id" && id == "" {
			// sts-id: 1*32(ALPHA / DIGIT)
			n = spanFunc(value, isAlnum)
			if n == 0 || n > 32 {
				return invalid("id is not 1 to 32 letters and digits")
			}
			id = value[:n]
		} else {
			// sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
			n = spanFunc(value, isTXTExtValueChar)
			if n == 0 {
				return invalid("empty or invalid value for %q", name)
			}
		}
		fields++
		if rest = value[n:]; rest == "" {
			break
		}
		// A field ends the record or is followed by *WSP ";": spaces or
		// tabs after the last field without that ';' are outside the
		// grammar.
		after := strings.TrimLeft(rest, " \t")
		if after == "" || after[0] != ';' {
			return invalid("expected ';' before %q", clip(rest))
		}
		rest = after[1:]
	}
	if id == "" {
		return invalid("no id")
	}
	return id, nil
}

// isTXTExtValueChar reports whether c may appear in an sts-ext-value:
// visible ASCII but '=' and ';'.
func isTXTExtValueChar(c byte) bool {
	return c >= 0x21 && c <= 0x7e && c != ';' && c != '='
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
// 3.1 has senders discard the records that do not begin with "v=STSv1;"
// before counting, so "v=STSv1", "v=STSv1 ; id=1" and "v=STSv10; id=1" are
// not counted. A record that begins so and is invalid is still counted,
// then refused by ParseTXT.
func isSTSRecord(txt string) bool {
	return strings.HasPrefix(txt, recordPrefix)
}
