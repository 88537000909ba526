package mtasts

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzParsePolicy checks that the policy parser never panics, fails only
// with its sentinels, and that what it accepts is well formed: lines ended
// by LF or CRLF with no other control character than tab, a known mode, a
// bounded max_age, valid lower-case patterns (at least one unless mode
// none), lines kept as they appear in the body, and a Text form that parses
// back to the same policy. The committed corpus is in
// testdata/fuzz/FuzzParsePolicy.
func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{
		"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n",
		"version: STSv1\r\nmode: testing\r\nmx: mx.example.org\r\nmax_age: 86400\r\n",
		"version: STSv1\nmode: none\nmax_age: 86400\n",
		"version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 31557600\nx-ext: v a l\n",
		"version: STSv1\nmode: enforce\nmx: *.*.example.com\nmax_age: 60\n",
		"\n\nversion:STSv1\t\nmode:enforce \nmx:A.EXAMPLE.\nmax_age:0\n\n",
		"version:STSv1\t\nmode:enforce \r\nmx:A.EXAMPLE\nx: a b\t\nmax_age:0",
		"version: STSv1\nmode: none\nx: a\tb\nmax_age: 60\r",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := ParsePolicy(body)
		if err != nil {
			if !errors.Is(err, ErrInvalidPolicy) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error %v matches no sentinel", err)
			}
			return
		}
		text := string(body)
		if strings.ContainsFunc(strings.ReplaceAll(text, "\r\n", "\n"), func(r rune) bool { return r < 0x20 && r != '\t' && r != '\n' || r == 0x7f }) {
			t.Fatalf("control character accepted in %q", text)
		}
		if p.Version != Version || p.Mode > ModeEnforce || p.MaxAge < 0 || p.MaxAge > MaxMaxAge || p.MaxAge%time.Second != 0 {
			t.Fatalf("accepted %+v", p)
		}
		if p.Mode != ModeNone && len(p.MX) == 0 {
			t.Fatalf("mode %v without mx accepted", p.Mode)
		}
		if len(p.Lines) < 3 {
			t.Fatalf("%d lines kept, want at least version, mode and max_age", len(p.Lines))
		}
		for _, l := range p.ReportLines() {
			if l == "" || strings.ContainsAny(l, "\r\n") || strings.TrimRight(l, " \t") != l || !strings.Contains(string(body), l) {
				t.Fatalf("line %q kept from %q", l, body)
			}
		}
		for _, pat := range p.MX {
			if pat != strings.ToLower(pat) || !validHostname(strings.TrimPrefix(pat, "*.")) {
				t.Fatalf("pattern %q accepted", pat)
			}
			if host := strings.Replace(pat, "*", "x", 1); !p.Matches(host) || !p.Matches(strings.ToUpper(host)+".") {
				t.Fatalf("policy does not match %q, made from its pattern %q", host, pat)
			}
		}
		if m := p.PostfixMatch(); strings.ContainsAny(m, " \t*,") {
			t.Fatalf("PostfixMatch %q", m)
		}
		q, err := ParsePolicy(p.Text())
		if err != nil || q.Mode != p.Mode || q.MaxAge != p.MaxAge || !slices.Equal(q.MX, p.MX) {
			t.Fatalf("round trip: %+v, %v; want %+v", q, err, p)
		}
	})
}

// FuzzParseTXT checks that the record parser never panics, fails only with
// ErrInvalidRecord, returns ids of 1 to 32 letters and digits, accepts only
// what isSTSRecord counts (records beginning with "v=STSv1;") and no record
// that ends in a space or tab after its last field. The committed corpus is
// in testdata/fuzz/FuzzParseTXT.
func FuzzParseTXT(f *testing.F) {
	for _, s := range []string{
		"v=STSv1; id=20160831085700Z;",
		"v=STSv1;id=abc",
		"v=STSv1 ; id=abc ; ext=1 ;",
		"v=STSv1; id=a; id=b",
		"v=STSv1;; id=abc",
		"id=abc; v=STSv1",
		"v=STSv1; id=" + strings.Repeat("9", 33),
		"v=STSv1",
		"v=STSv1; id=abc ",
		"v=STSv1;id=abc ;\t",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, txt string) {
		id, err := ParseTXT(txt)
		if err != nil {
			if !errors.Is(err, ErrInvalidRecord) || id != "" {
				t.Fatalf("ParseTXT = %q, %v", id, err)
			}
			return
		}
		if id == "" || len(id) > 32 || strings.IndexFunc(id, func(r rune) bool { return r > 0x7f || !isAlnum(byte(r)) }) >= 0 {
			t.Fatalf("id %q accepted", id)
		}
		if !isSTSRecord(txt) {
			t.Fatalf("%q parsed but would not be counted as an MTA-STS record", txt)
		}
		if trimmed := strings.TrimRight(txt, " \t"); trimmed != txt && !strings.HasSuffix(trimmed, ";") {
			t.Fatalf("%q parsed with spaces or tabs after its last field", txt)
		}
		if again, err := ParseTXT("v=STSv1; id=" + id); err != nil || again != id {
			t.Fatalf("id %q does not round-trip: %q, %v", id, again, err)
		}
	})
}
