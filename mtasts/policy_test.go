package mtasts

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		body   string
		mode   Mode
		mx     []string
		maxAge time.Duration
		err    error // nil: valid
	}{
		{
			name: "enforce LF",
			body: "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n",
			mode: ModeEnforce, mx: []string{"mail.example.com", "*.example.net", "backupmx.example.com"}, maxAge: 604800 * time.Second,
		},
		{
			name: "enforce CRLF",
			body: "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmax_age: 86400\r\n",
			mode: ModeEnforce, mx: []string{"mail.example.com"}, maxAge: 86400 * time.Second,
		},
		{
			name: "mixed line ends, no final newline",
			body: "version: STSv1\r\nmode: testing\nmx: mail.example.com\r\nmax_age: 86400",
			mode: ModeTesting, mx: []string{"mail.example.com"}, maxAge: 86400 * time.Second,
		},
		{
			name: "testing",
			body: "version: STSv1\nmode: testing\nmx: mx.example.org\nmax_age: 3600\n",
			mode: ModeTesting, mx: []string{"mx.example.org"}, maxAge: time.Hour,
		},
		{
			name: "none without mx",
			body: "version: STSv1\nmode: none\nmax_age: 86400\n",
			mode: ModeNone, maxAge: 86400 * time.Second,
		},
		{
			name: "none with mx",
			body: "version: STSv1\nmode: none\nmx: mx.example.org\nmax_age: 86400\n",
			mode: ModeNone, mx: []string{"mx.example.org"}, maxAge: 86400 * time.Second,
		},
		{
			name: "fields in any order, whitespace after colon and at line end",
			body: "max_age:\t 0 \nmx:   MX.Example.ORG\t\nmode: enforce\nversion: STSv1  \n",
			mode: ModeEnforce, mx: []string{"mx.example.org"},
		},
		{
			name: "no space after the colon, spaces and tabs before the line end",
			body: "version:STSv1\t\r\nmode:enforce \t \r\nmx:mx.example.org \nmax_age:60\t",
			mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute,
		},
		{
			name: "extension values: inner spaces, punctuation, UTF-8 (C1 controls are UTF8-2)",
			body: "version: STSv1\nmode: enforce\nx: a  b c \t\ny: a=b;c:d!~\nz: é\u0085€📧\nmx: mx.example.org\nmax_age: 60\n",
			mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute,
		},
		{
			name: "unknown keys ignored",
			body: "version: STSv1\nmode: enforce\nx-comment: hello world, ça va\nfoo_bar.baz-1: v\nmx: mx.example.org\nmax_age: 60\n",
			mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute,
		},
		{
			name: "mx repeated, duplicates dropped",
			body: "version: STSv1\nmode: enforce\nmx: a.example.org\nmx: A.example.org\nmx: *.example.org\nmax_age: 60\n",
			mode: ModeEnforce, mx: []string{"a.example.org", "*.example.org"}, maxAge: time.Minute,
		},
		{
			name: "repeated mode: the first counts (RFC 8461 section 3.2)",
			body: "version: STSv1\nmode: enforce\nmode: none\nmode: bogus\nmx: mx.example.org\nmax_age: 60\nmax_age: 99999999999\nversion: STSv2\n",
			mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute,
		},
		{
			name: "largest max_age",
			body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 31557600\n",
			mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: MaxMaxAge,
		},
		{
			name: "max_age with leading zeros",
			body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 0000086400\n",
			mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: 86400 * time.Second,
		},
		{name: "empty", body: "", err: ErrInvalidPolicy},
		{name: "only a line end", body: "\n", err: ErrInvalidPolicy},
		{name: "only a CRLF", body: "\r\n", err: ErrInvalidPolicy},
		// sts-policy-record has a field after every line end but the last.
		{name: "blank line", body: "version: STSv1\nmode: enforce\n\nmx: mx.example.org\nmax_age: 60\n", mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute},                        // tolerated
		{name: "blank line CRLF", body: "version: STSv1\r\nmode: enforce\r\n\r\nmx: mx.example.org\r\nmax_age: 60\r\n", mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute},         // tolerated
		{name: "leading blank line", body: "\nversion: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute},                // tolerated
		{name: "whitespace-only line", body: "version: STSv1\n \t\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute},           // tolerated
		{name: "two line ends at the end", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n\n", mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute},          // tolerated
		{name: "two CRLFs at the end", body: "version: STSv1\r\nmode: enforce\r\nmx: mx.example.org\r\nmax_age: 60\r\n\r\n", mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute},    // tolerated
		{name: "whitespace after the last line end", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n ", mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute}, // tolerated
		// sts-policy-term is LF or CRLF: a CR alone ends nothing.
		{name: "bare CR at the end", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\r", err: ErrInvalidPolicy},
		{name: "CR CR LF", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\r\r\n", err: ErrInvalidPolicy},
		{name: "CR before the trailing whitespace", body: "version: STSv1\r \nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "bare CR inside an extension value", body: "version: STSv1\nmode: enforce\nx: a\rb\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "missing version", body: "mode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "missing mode", body: "version: STSv1\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "missing max_age", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\n", err: ErrInvalidPolicy},
		{name: "wrong version", body: "version: STSv2\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "version case", body: "version: stsv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "key case", body: "Version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "unknown mode", body: "version: STSv1\nmode: report\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mode case", body: "version: STSv1\nmode: Enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "max_age too large", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 31557601\n", err: ErrInvalidPolicy},
		{name: "max_age 11 digits", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 00000000001\n", err: ErrInvalidPolicy},
		{name: "max_age negative", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: -1\n", err: ErrInvalidPolicy},
		{name: "max_age plus sign", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: +60\n", err: ErrInvalidPolicy},
		{name: "max_age not numeric", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 1w\n", err: ErrInvalidPolicy},
		{name: "max_age empty", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age:\n", err: ErrInvalidPolicy},
		{name: "max_age inner space", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 6 0\n", err: ErrInvalidPolicy},
		{name: "version with more", body: "version: STSv1 x\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mode with a tab inside", body: "version: STSv1\nmode: en\tforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		// A repeat is ignored but must still be a well-formed field.
		{name: "repeated mode with a control character", body: "version: STSv1\nmode: enforce\nmode: a\x01b\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "repeated version with a tab inside", body: "version: STSv1\nversion: STS\tv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "repeated max_age empty", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\nmax_age:\n", err: ErrInvalidPolicy},
		{name: "enforce without mx", body: "version: STSv1\nmode: enforce\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "testing without mx", body: "version: STSv1\nmode: testing\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "double wildcard", body: "version: STSv1\nmode: enforce\nmx: *.*.example.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "partial wildcard", body: "version: STSv1\nmode: enforce\nmx: mx*.example.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "inner wildcard", body: "version: STSv1\nmode: enforce\nmx: mx.*.example.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "bare wildcard", body: "version: STSv1\nmode: enforce\nmx: *\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "empty mx", body: "version: STSv1\nmode: enforce\nmx:\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mx with port", body: "version: STSv1\nmode: enforce\nmx: mx.example.com:25\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mx with space", body: "version: STSv1\nmode: enforce\nmx: mx example.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mx empty label", body: "version: STSv1\nmode: enforce\nmx: mx..example.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mx hyphen at label end", body: "version: STSv1\nmode: enforce\nmx: mx-.example.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mx U-label", body: "version: STSv1\nmode: enforce\nmx: mx.exämple.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mx label too long", body: "version: STSv1\nmode: enforce\nmx: " + strings.Repeat("a", 64) + ".example.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mx trailing dot", body: "version: STSv1\nmode: enforce\nmx: mx.example.org.\nmax_age: 60\n", mode: ModeEnforce, mx: []string{"mx.example.org"}, maxAge: time.Minute},        // tolerated
		{name: "wildcard mx trailing dot", body: "version: STSv1\nmode: enforce\nmx: *.example.org.\nmax_age: 60\n", mode: ModeEnforce, mx: []string{"*.example.org"}, maxAge: time.Minute}, // tolerated
		{name: "mx root", body: "version: STSv1\nmode: enforce\nmx: .\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "mx with a tab inside", body: "version: STSv1\nmode: enforce\nmx: mx\t.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "bad mx in mode none", body: "version: STSv1\nmode: none\nmx: mx*.example.com\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "line without colon", body: "version: STSv1\nmode: enforce\nmx mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "space before colon", body: "version : STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "tab before colon", body: "version\t: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "leading whitespace", body: " version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "leading tab", body: "version: STSv1\n\tmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "comment line", body: "# policy\nversion: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "bad extension name", body: "version: STSv1\nmode: enforce\n_x: y\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "extension name too long", body: "version: STSv1\nmode: enforce\n" + strings.Repeat("x", 33) + ": y\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "empty extension value", body: "version: STSv1\nmode: enforce\nx:\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		// sts-policy-ext-value: visible characters and plain spaces only.
		{name: "tab inside an extension value", body: "version: STSv1\nmode: enforce\nx: a\tb\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "space and tab inside an extension value", body: "version: STSv1\nmode: enforce\nx: a \t b\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "vertical tab in an extension value", body: "version: STSv1\nmode: enforce\nx: a\vb\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "form feed in an extension value", body: "version: STSv1\nmode: enforce\nx: a\fb\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "escape in an extension value", body: "version: STSv1\nmode: enforce\nx: a\x1bb\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "DEL in an extension value", body: "version: STSv1\nmode: enforce\nx: a\x7fb\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "UTF-16 surrogate in an extension value", body: "version: STSv1\nmode: enforce\nx: \xed\xa0\x80\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "overlong UTF-8 in an extension value", body: "version: STSv1\nmode: enforce\nx: \xc0\xaf\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "control character", body: "version: STSv1\nmode: enforce\nx: a\x00b\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "invalid UTF-8", body: "version: STSv1\nmode: enforce\nx: \xff\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "bare CR inside a line", body: "version: STSv1\rmode: enforce\nmx: mx.example.org\nmax_age: 60\n", err: ErrInvalidPolicy},
		{name: "HTML", body: "<html><body>Not found</body></html>", err: ErrInvalidPolicy},
		{name: "oversized", body: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\nx: " + strings.Repeat("a", MaxPolicySize), err: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := ParsePolicy([]byte(tt.body))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("ParsePolicy = %+v, %v; want error %v", p, err, tt.err)
				}
				if !errors.Is(err, ErrInvalidPolicy) && !errors.Is(err, ErrTooLarge) {
					t.Errorf("error %v matches no sentinel", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePolicy: %v", err)
			}
			if p.Version != Version || p.Mode != tt.mode || !slices.Equal(p.MX, tt.mx) || p.MaxAge != tt.maxAge {
				t.Errorf("ParsePolicy = %+v, want mode %v mx %q max_age %v", p, tt.mode, tt.mx, tt.maxAge)
			}
			if p.ID != "" || !p.FetchedAt.IsZero() {
				t.Errorf("ParsePolicy set ID %q or FetchedAt %v", p.ID, p.FetchedAt)
			}
		})
	}
}

// validExtValue is sts-policy-ext-value exactly, including the ends that
// ParsePolicy trims before calling it.
func TestValidExtValue(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"a":            true,
		"a b":          true,
		"a  b":         true,
		"!~=;:#":       true,
		"ça va":        true,
		"\u0085":       true, // UTF8-2
		"\U0001F4E7":   true, // UTF8-4
		"":             false,
		" ":            false,
		" a":           false,
		"a ":           false,
		"a\tb":         false,
		"\ta":          false,
		"a\x00b":       false,
		"a\x1fb":       false,
		"a\x7fb":       false,
		"a\rb":         false,
		"a\nb":         false,
		"\xff":         false,
		"\xed\xa0\x80": false, // a surrogate: not UTF8-3
	} {
		if got := validExtValue(s); got != want {
			t.Errorf("validExtValue(%q) = %v, want %v", s, got, want)
		}
	}
}

// A body of exactly MaxPolicySize bytes is accepted; one more is not.
func TestParsePolicySizeLimit(t *testing.T) {
	t.Parallel()
	head := "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 60\nx: "
	body := head + strings.Repeat("a", MaxPolicySize-len(head))
	if _, err := ParsePolicy([]byte(body)); err != nil {
		t.Errorf("%d bytes: %v", len(body), err)
	}
	if _, err := ParsePolicy([]byte(body + "a")); !errors.Is(err, ErrTooLarge) {
		t.Errorf("%d bytes: %v, want ErrTooLarge", len(body)+1, err)
	}
}

// Lines keep the policy as fetched, for TLS reports: every non-blank
// line in order, repeated, ignored and unknown ones included, without
// line ends and trailing white space; the mx patterns are not normalised.
func TestPolicyLines(t *testing.T) {
	t.Parallel()
	body := "\nversion: STSv1\r\nmode:\tenforce \r\n\r\n  \nmx: MX.Example.ORG.\nmx: mx.example.org\nx-note: a  b, {c}\t\nmode: none\nmax_age:604800"
	p, err := ParsePolicy([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"version: STSv1", "mode:\tenforce", "mx: MX.Example.ORG.", "mx: mx.example.org", "x-note: a  b, {c}", "mode: none", "max_age:604800"}
	if !slices.Equal(p.Lines, want) || !slices.Equal(p.ReportLines(), want) {
		t.Errorf("Lines = %q, ReportLines = %q; want %q", p.Lines, p.ReportLines(), want)
	}
	// A policy without Lines (built in code, or stored before they
	// existed) is reported as Text writes it.
	p.Lines = nil
	want = []string{"version: STSv1", "mode: enforce", "mx: mx.example.org", "max_age: 604800"}
	if got := p.ReportLines(); !slices.Equal(got, want) {
		t.Errorf("ReportLines without Lines = %q, want %q", got, want)
	}
}

// Text writes what ParsePolicy reads back unchanged.
func TestPolicyTextRoundTrip(t *testing.T) {
	t.Parallel()
	p := Policy{Version: Version, Mode: ModeEnforce, MX: []string{"mx1.example.com", "*.example.net"}, MaxAge: 86400 * time.Second}
	q, err := ParsePolicy(p.Text())
	if err != nil || q.Mode != p.Mode || !slices.Equal(q.MX, p.MX) || q.MaxAge != p.MaxAge || q.Version != p.Version {
		t.Errorf("ParsePolicy(Text()) = %+v, %v; want %+v\n%s", q, err, p, p.Text())
	}
}

func TestMatches(t *testing.T) {
	t.Parallel()
	p := Policy{Mode: ModeEnforce, MX: []string{"mail.example.com", "*.example.net", "*.Upper.example.org"}}
	tests := []struct {
		host string
		want bool
	}{
		{"mail.example.com", true},
		{"MAIL.Example.COM", true},
		{"mail.example.com.", true},
		{"mail2.example.com", false},
		{"example.com", false},
		{"x.mail.example.com", false},
		{"mx1.example.net", true},
		{"MX1.EXAMPLE.NET.", true},
		{"example.net", false},      // a wildcard does not match the apex
		{".example.net", false},     // nor an empty label
		{"a.b.example.net", false},  // only one label
		{"mx1.example.net2", false}, // nor a longer name
		{"mx1example.net", false},
		{"mx.upper.example.org", true},
		{"", false},
		{".", false},
	}
	for _, tt := range tests {
		if got := p.Matches(tt.host); got != tt.want {
			t.Errorf("Matches(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
	if (Policy{}).Matches("mail.example.com") {
		t.Error("a policy without patterns matches")
	}
}

func TestPostfixMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mx   []string
		want string
	}{
		{[]string{"mx1.example.com"}, "mx1.example.com"},
		{[]string{"mx1.example.com", "*.example.net", "mx2.example.com"}, "mx1.example.com:.example.net:mx2.example.com"},
		{[]string{"*.example.net", "*.EXAMPLE.net"}, ".example.net"},
		{nil, ""},
	}
	for _, tt := range tests {
		if got := (Policy{MX: tt.mx}).PostfixMatch(); got != tt.want {
			t.Errorf("PostfixMatch(%q) = %q, want %q", tt.mx, got, tt.want)
		}
	}
}

func TestModeString(t *testing.T) {
	t.Parallel()
	for m, want := range map[Mode]string{ModeNone: "none", ModeTesting: "testing", ModeEnforce: "enforce", 7: "Mode(7)"} {
		if got := m.String(); got != want {
			t.Errorf("Mode(%d).String() = %q, want %q", m, got, want)
		}
	}
	if !(ModeNone < ModeTesting && ModeTesting < ModeEnforce) {
		t.Error("modes are not ordered by strength")
	}
}

func TestPolicyString(t *testing.T) {
	t.Parallel()
	p := Policy{Mode: ModeEnforce, MX: []string{"a.example", "*.b.example"}, MaxAge: time.Hour, ID: "abc"}
	if got, want := p.String(), "mode=enforce mx=a.example,*.b.example max_age=3600 id=abc"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := p.Expires(); !got.Equal(time.Time{}.Add(time.Hour)) {
		t.Errorf("Expires() = %v", got)
	}
}
