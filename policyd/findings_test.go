package policyd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/mtasts"
	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
	"github.com/tlspolicyd/tlspolicyd/wire"
)

const publishedRules = `
dns: {servers: ["127.0.0.1:53"]}
dane: {enabled: true}
mtasts: {enabled: true}
probe: {wait: 10ms}
defaults: {level: may, upgrade: verify}
destinations:
  - match: optout.test
    mtasts: false
    dane: false
  - match: floor-verify.test
    level: verify
  - match: floor-daneonly.test
    level: dane-only
`

func TestPublishedPolicies(t *testing.T) {
	t.Parallel()
	enforce := &mtasts.Policy{Version: "STSv1", Mode: mtasts.ModeEnforce, MX: []string{"mx1.example.com", "*.example.net"}, MaxAge: time.Hour, ID: "20261129"}
	testing := &mtasts.Policy{Version: "STSv1", Mode: mtasts.ModeTesting, MX: []string{"mx1.example.com"}, MaxAge: time.Hour, ID: "1"}
	verified := tlsprobe.Report{Capability: tlsprobe.CapVerify}
	plain := tlsprobe.Report{Capability: tlsprobe.CapNone, Cause: tlsprobe.CauseNoSTARTTLS}
	ev := &fakeFindings{findings: map[string]Findings{
		"daneonly.test":       {Probe: verified, DANE: dane.DANEOnly},
		"mixed.test":          {Probe: verified, DANE: dane.MixedDANE},
		"broken.test":         {Probe: plain, DANE: dane.EncryptOnly},
		"danetemp.test":       {Probe: verified, DANE: dane.TempFail},
		"sts.test":            {Probe: plain, STS: enforce},
		"ststesting.test":     {Probe: verified, STS: testing},
		"both.test":           {Probe: verified, DANE: dane.DANEOnly, STS: enforce},
		"optout.test":         {Probe: verified, DANE: dane.DANEOnly, STS: enforce},
		"floor-verify.test":   {Probe: verified, DANE: dane.MixedDANE},
		"floor-daneonly.test": {Probe: plain, STS: enforce},
		"[sts.test]":          {Probe: verified, STS: enforce},
	}}
	e := NewEngine(mustLoad(t, publishedRules), ev)
	const stsAnswer = "secure match=mx1.example.com:.example.net servername=hostname protocols=>=TLSv1.2"
	for key, want := range map[string]string{
		"daneonly.test":       "dane-only protocols=>=TLSv1.2",
		"mixed.test":          "dane protocols=>=TLSv1.2",
		"broken.test":         "encrypt protocols=>=TLSv1.2",   // TLSA present, none usable: TLS, unauthenticated
		"danetemp.test":       "verify protocols=>=TLSv1.2",    // a failed DANE lookup gives nothing: probes decide
		"sts.test":            stsAnswer,                       // enforce, whatever the probe saw
		"ststesting.test":     "verify protocols=>=TLSv1.2",    // testing changes nothing
		"both.test":           "dane-only protocols=>=TLSv1.2", // DANE before MTA-STS (RFC 8461 section 2)
		"optout.test":         "verify protocols=>=TLSv1.2",    // the rule opts out of both sources
		"floor-verify.test":   "verify protocols=>=TLSv1.2",    // opportunistic dane never replaces verify
		"floor-daneonly.test": "dane-only protocols=>=TLSv1.2", // nothing lowers the floor
		"[sts.test]":          "verify protocols=>=TLSv1.2",    // MTA-STS is for recipient domains only
	} {
		if got := e.LookupTable(context.Background(), rules.MapTLSPolicy, []byte(key)); got.Text != want {
			t.Errorf("%s = %q, want %q", key, got.Text, want)
		}
	}
	d := e.Decide(context.Background(), "sts.test", "", 0)
	if d.Published == "" || d.Level != rules.LevelSecure {
		t.Errorf("decision %+v does not say MTA-STS decided", d)
	}
}

// With postfix_version 3.10 an enforced MTA-STS policy is answered with
// the TLSRPT attributes, for the recipient domain looked up; DANE answers
// carry none (Postfix reports DANE from its own lookups); a policy too
// long to carry them is answered without, and the decision says why.
func TestPublishedPoliciesTLSRPT(t *testing.T) {
	t.Parallel()
	enforce := &mtasts.Policy{Version: "STSv1", Mode: mtasts.ModeEnforce, MX: []string{"mx1.example.com", "*.example.net"}, MaxAge: time.Hour, ID: "20261129",
		Lines: []string{"version: STSv1", "mode: enforce", "mx: mx1.example.com", "mx: *.example.net", "max_age: 3600"}}
	huge := &mtasts.Policy{Version: "STSv1", Mode: mtasts.ModeEnforce, MaxAge: time.Hour, ID: "2"}
	for i := range 100 {
		huge.MX = append(huge.MX, fmt.Sprintf("mx%d.example.com", i))
	}
	verified := tlsprobe.Report{Capability: tlsprobe.CapVerify}
	ev := &fakeFindings{findings: map[string]Findings{
		"sts.test":      {Probe: verified, STS: enforce},
		"sub.sts.test":  {Probe: verified, STS: enforce},
		"daneonly.test": {Probe: verified, DANE: dane.DANEOnly, STS: enforce},
		"mixed.test":    {Probe: verified, DANE: dane.MixedDANE},
		"huge.test":     {Probe: verified, STS: huge},
	}}
	e := NewEngine(mustLoad(t, publishedRules+"postfix_version: \"3.10\"\n"), ev)
	const stsAnswer = "secure match=mx1.example.com:.example.net servername=hostname protocols=>=TLSv1.2" +
		" policy_type=sts policy_domain=%s mx_host_pattern=mx1.example.com mx_host_pattern=*.example.net" +
		" { policy_string = version: STSv1 } { policy_string = mode: enforce } { policy_string = mx: mx1.example.com }" +
		" { policy_string = mx: *.example.net } { policy_string = max_age: 3600 }"
	for key, want := range map[string]string{
		"sts.test":      fmt.Sprintf(stsAnswer, "sts.test"),
		"Sub.STS.test":  fmt.Sprintf(stsAnswer, "sub.sts.test"), // the domain as normalised
		"daneonly.test": "dane-only protocols=>=TLSv1.2",
		"mixed.test":    "dane protocols=>=TLSv1.2",
		"huge.test":     "secure match=" + huge.PostfixMatch() + " servername=hostname protocols=>=TLSv1.2",
	} {
		if got := e.LookupTable(context.Background(), rules.MapTLSPolicy, []byte(key)); got.Text != want {
			t.Errorf("%s = %q\nwant %q", key, got.Text, want)
		}
	}
	if d := e.Decide(context.Background(), "huge.test", "", 0); !strings.Contains(d.Published, "TLSRPT attributes left out") {
		t.Errorf("huge.test: decision %q does not say the TLSRPT attributes were left out", d.Published)
	}
}

// The answer for an enforced MTA-STS policy carries what the configured
// Postfix can parse: no servername= before 3.4, the protocols exclusion
// list before 3.6, and the TLSRPT attributes from 3.10 on, never before
// (Postfix 3.9 and earlier defer the mail on "invalid attribute name").
func TestRenderSTSPerPostfixVersion(t *testing.T) {
	t.Parallel()
	// RFC 8461 section 3.2's example, the one TLSRPT_README uses.
	pol := mustParsePolicy(t, "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n")
	const (
		base   = "secure match=mail.example.com:.example.net:backupmx.example.com servername=hostname protocols=>=TLSv1.2"
		tlsrpt = " policy_type=sts policy_domain=example.com" +
			" mx_host_pattern=mail.example.com mx_host_pattern=*.example.net mx_host_pattern=backupmx.example.com" +
			" { policy_string = version: STSv1 } { policy_string = mode: enforce }" +
			" { policy_string = mx: mail.example.com } { policy_string = mx: *.example.net }" +
			" { policy_string = mx: backupmx.example.com } { policy_string = max_age: 604800 }"
	)
	for _, tt := range []struct {
		v    rules.Version
		want string
	}{
		{rules.Version{Major: 3, Minor: 11}, base + tlsrpt},
		{rules.Version{Major: 3, Minor: 10}, base + tlsrpt},
		{rules.Version{Major: 4, Minor: 0}, base + tlsrpt},
		{rules.Version{Major: 3, Minor: 9}, base},
		{rules.Version{Major: 3, Minor: 7}, base},
		{rules.Version{Major: 3, Minor: 5}, "secure match=mail.example.com:.example.net:backupmx.example.com servername=hostname protocols=!SSLv2:!SSLv3:!TLSv1:!TLSv1.1"},
		{rules.Version{Major: 3, Minor: 3}, "secure match=mail.example.com:.example.net:backupmx.example.com protocols=!SSLv2:!SSLv3:!TLSv1:!TLSv1.1"}, // no servername= before 3.4
	} {
		got, note := renderSTS(pol, "example.com", "TLSv1.2", tt.v)
		if got != tt.want || note != "" {
			t.Errorf("Postfix %s: %q (note %q)\nwant %q", tt.v, got, note, tt.want)
		}
		if _, _, err := postfixPolicy(got); err != nil {
			t.Errorf("Postfix %s: %v", tt.v, err)
		}
	}
}

// The policy_string lines are the policy as fetched, each read back by
// Postfix's parser as it was sent: "{ name = value }" when the value holds
// white space or a comma, name=value otherwise. The mx_host_pattern values
// are the normalised patterns, the ones Postfix 3.10.5 and later match MX
// host names against.
func TestRenderSTSQuoting(t *testing.T) {
	t.Parallel()
	pol := mustParsePolicy(t, "version: STSv1\r\nmode:\tenforce  \r\nmx: MX1.Example.COM.\r\n"+
		"mx: mx1.example.com\r\nx-note: a, b  c\r\nx-braces: {x}\r\nmax_age:86400\r\n")
	got, note := renderSTS(pol, "example.com", "TLSv1.3", rules.Version{Major: 3, Minor: 10})
	const want = "secure match=mx1.example.com servername=hostname protocols=>=TLSv1.3" +
		" policy_type=sts policy_domain=example.com mx_host_pattern=mx1.example.com" +
		" { policy_string = version: STSv1 } { policy_string = mode:\tenforce }" +
		" { policy_string = mx: MX1.Example.COM. } { policy_string = mx: mx1.example.com }" +
		" { policy_string = x-note: a, b  c } policy_string=max_age:86400"
	if got != want || note != "" {
		t.Errorf("got  %q (note %q)\nwant %q", got, note, want)
	}
	level, attrs, err := postfixPolicy(got)
	if err != nil || level != "secure" {
		t.Fatalf("Postfix would read %q, %v", level, err)
	}
	var lines, patterns []string
	for _, a := range attrs {
		switch a[0] {
		case "policy_string":
			lines = append(lines, a[1])
		case "mx_host_pattern":
			patterns = append(patterns, a[1])
		}
	}
	// Postfix turns the tab into a space (EXTPAR_FLAG_NORMAL_WS); the line
	// with braces, which it could not read, is not sent.
	wantLines := []string{"version: STSv1", "mode: enforce", "mx: MX1.Example.COM.", "mx: mx1.example.com", "x-note: a, b  c", "max_age:86400"}
	if !slices.Equal(lines, wantLines) || !slices.Equal(patterns, []string{"mx1.example.com"}) {
		t.Errorf("Postfix reads policy_string %q, mx_host_pattern %q", lines, patterns)
	}

	// A policy stored before Lines existed is quoted as Text writes it.
	pol.Lines = nil
	if got, _ := renderSTS(pol, "example.com", "TLSv1.2", rules.Version{Major: 3, Minor: 10}); !strings.HasSuffix(got,
		" { policy_string = version: STSv1 } { policy_string = mode: enforce } { policy_string = mx: mx1.example.com } { policy_string = max_age: 86400 }") {
		t.Errorf("without Lines: %q", got)
	}
}

// A policy with many mx lines keeps its answer within every table's reply
// limit: the TLSRPT attributes are all sent while the answer with them
// fits (wire.FitsEveryTable: the 4096 bytes Postfix reads from tcp_table),
// and none beyond, never some of them (a missing mx_host_pattern would
// make Postfix refuse an MX host). The secure answer itself is never
// dropped, and never grows past the socketmap limit, which Postfix would
// answer with a deferral.
func TestRenderSTSManyMXLines(t *testing.T) {
	t.Parallel()
	v310 := rules.Version{Major: 3, Minor: 10}
	body := func(n int) string {
		var b strings.Builder
		b.WriteString("version: STSv1\nmode: enforce\n")
		for i := range n {
			fmt.Fprintf(&b, "mx: mx%d.mail.example-provider.net\n", i)
		}
		b.WriteString("max_age: 604800\n")
		return b.String()
	}
	last := 0 // the most mx lines that still get the attributes
	for n := 1; n <= 200; n++ {
		pol := mustParsePolicy(t, body(n))
		got, note := renderSTS(pol, "example.com", "TLSv1.2", v310)
		plain, _ := renderSTS(pol, "example.com", "TLSv1.2", rules.Version{Major: 3, Minor: 9})
		switch {
		case got == plain:
			if !strings.Contains(note, "TLSRPT attributes left out") {
				t.Fatalf("%d mx lines: attributes left out, note %q", n, note)
			}
		case wire.FitsEveryTable(got) && note == "":
			if last != n-1 {
				t.Fatalf("%d mx lines get the attributes, %d did not", n, n-1)
			}
			last = n
			if c := strings.Count(got, " mx_host_pattern="); c != n {
				t.Fatalf("%d mx lines, %d mx_host_pattern", n, c)
			}
			if c := strings.Count(got, "{ policy_string = "); c != n+3 {
				t.Fatalf("%d mx lines, %d policy_string", n, c)
			}
		default:
			t.Fatalf("%d mx lines: %d bytes that do not fit, note %q", n, len(got), note)
		}
	}
	// A real policy has a handful of mx lines; 20 long ones still fit.
	if last < 20 || last >= 200 {
		t.Errorf("the attributes are sent up to %d mx lines", last)
	}
	t.Logf("TLSRPT attributes sent up to %d mx lines of %d bytes", last, len("mx: mx10.mail.example-provider.net"))

	// The largest policy there is (64 KiB of mx lines) still gets its
	// secure answer, as a 3.9 would, and a socketmap reply.
	n := (mtasts.MaxPolicySize - 100) / len("mx: mx1000.mail.example-provider.net\n")
	pol := mustParsePolicy(t, body(n))
	got, note := renderSTS(pol, "example.com", "TLSv1.2", v310)
	if !strings.HasPrefix(got, "secure match=mx0.mail.example-provider.net:") || strings.Contains(got, "policy_type") || note == "" {
		t.Errorf("%d mx lines: %.80q..., note %q", n, got, note)
	}
	if len("OK ")+len(got) > wire.MaxNetstringLen {
		t.Errorf("%d mx lines: a %d-byte answer, over the socketmap limit", n, len(got))
	}
}

// policy_domain is sent only when Postfix's valid_hostname() would accept
// it; otherwise the answer goes without the attributes.
func TestRenderSTSPolicyDomain(t *testing.T) {
	t.Parallel()
	pol := mustParsePolicy(t, "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 60\n")
	for domain, ok := range map[string]bool{
		"example.com":                     true,
		"xn--bcher-kva.example":           true,
		"_sub.example.com":                true,
		"a-b.example":                     true,
		"a!b.example":                     false,
		"-a.example":                      false,
		"a-.example":                      false,
		"192.0.2.1":                       false, // all numeric
		strings.Repeat("a", 64) + ".test": false,
	} {
		got, note := renderSTS(pol, domain, "TLSv1.2", rules.Version{Major: 3, Minor: 11})
		if has := strings.Contains(got, " policy_domain="+domain+" "); has != ok || (note == "") != ok {
			t.Errorf("%s: %q, note %q", domain, got, note)
		}
	}
}

// mustParsePolicy parses a policy body as the fetcher does.
func mustParsePolicy(t *testing.T, body string) mtasts.Policy {
	t.Helper()
	p, err := mtasts.ParsePolicy([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	p.ID = "20260101"
	return p
}

// postfixPolicy reads a policy as Postfix 3.10's smtp_tls_policy.c does:
// tokens separated by white space or commas outside "{ }" (mystrtokq); a
// token in braces has them and the white space inside them stripped and
// its other white space made spaces (extpar, EXTPAR_FLAG_STRIP |
// EXTPAR_FLAG_NORMAL_WS); then "name = value" with the blanks around both
// trimmed (split_nameval). It returns the level and the attributes in
// order.
func postfixPolicy(policy string) (string, [][2]string, error) {
	var tokens []string
	for rest := policy; ; {
		rest = strings.TrimLeft(rest, ", \t\r\n")
		if rest == "" {
			break
		}
		level, end := 0, len(rest)
	scan:
		for i := 0; i < len(rest); i++ {
			switch c := rest[i]; {
			case c == '{':
				level++
			case c == '}' && level > 0:
				level--
			case level == 0 && strings.IndexByte(", \t\r\n", c) >= 0:
				end = i
				break scan
			}
		}
		tokens, rest = append(tokens, rest[:end]), rest[end:]
	}
	if len(tokens) == 0 {
		return "", nil, fmt.Errorf("empty policy")
	}
	var attrs [][2]string
	for _, tok := range tokens[1:] {
		if tok[0] == '{' {
			if tok[len(tok)-1] != '}' || strings.Count(tok, "{") != strings.Count(tok, "}") {
				return "", nil, fmt.Errorf("malformed attribute %q", tok)
			}
			tok = strings.Map(func(r rune) rune {
				if r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f' {
					return ' '
				}
				return r
			}, strings.TrimSpace(tok[1:len(tok)-1]))
		}
		name, value, ok := strings.Cut(tok, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " {}") {
			return "", nil, fmt.Errorf("malformed attribute %q", tok)
		}
		attrs = append(attrs, [2]string{name, strings.TrimSpace(value)})
	}
	return tokens[0], attrs, nil
}

func TestFindingsFailed(t *testing.T) {
	t.Parallel()
	failed := tlsprobe.Report{Cause: tlsprobe.CauseDNS}
	for _, tt := range []struct {
		f    Findings
		want bool
	}{
		{Findings{Probe: failed}, true},
		{Findings{Probe: failed, DANE: dane.TempFail}, true},
		{Findings{Probe: failed, DANE: dane.DANEOnly}, false},
		{Findings{Probe: failed, STS: &mtasts.Policy{Mode: mtasts.ModeEnforce}}, false},
		{Findings{Probe: tlsprobe.Report{Capability: tlsprobe.CapNone}}, false},
	} {
		if got := tt.f.Failed(); got != tt.want {
			t.Errorf("%+v.Failed() = %v, want %v", tt.f, got, tt.want)
		}
	}
}
