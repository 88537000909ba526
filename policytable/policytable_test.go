package policytable

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

func TestParse(t *testing.T) {
	t.Parallel()
	const table = "  orphan may\n" +
		"# a comment\n" +
		"example.com   secure\n" +
		"\n" +
		"    match=.example.com\n" +
		"  # a comment inside a logical line\n" +
		"\tprotocols=>=TLSv1.3\n" +
		"lonely.example\n" +
		"[mx.example.net]:587\tencrypt \r\n"
	entries, problems, err := Parse(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Line: 3, Key: "example.com", Value: "secure match=.example.com protocols=>=TLSv1.3"},
		{Line: 9, Key: "[mx.example.net]:587", Value: "encrypt"},
	}
	if !reflect.DeepEqual(entries, want) {
		t.Errorf("entries:\n got %+v\nwant %+v", entries, want)
	}
	if len(problems) != 2 || problems[0].Line != 1 || problems[1].Line != 8 ||
		!strings.Contains(problems[1].Msg, `"lonely.example" has no policy`) {
		t.Errorf("problems: %+v, want line 1 (a continuation with nothing before it) and line 8 (no value)", problems)
	}
}

func TestParsePolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		value string
		level string
		attrs []Attr
		err   string
	}{
		{value: "verify", level: "verify"},
		{value: "secure match=nexthop:dot-nexthop protocols=>=TLSv1.2", level: "secure",
			attrs: []Attr{{"match", "nexthop:dot-nexthop"}, {"protocols", ">=TLSv1.2"}}},
		{value: "secure, tafile=/etc/ta.pem,ciphers=high", level: "secure",
			attrs: []Attr{{"tafile", "/etc/ta.pem"}, {"ciphers", "high"}}},
		{value: "secure { match = a.example b.example } exclude=aNULL", level: "secure",
			attrs: []Attr{{"match", "a.example b.example"}, {"exclude", "aNULL"}}},
		{value: "secure match", err: `"match" is no name=value attribute`},
		{value: "secure { match = a", err: "unbalanced {"},
		{value: "secure } x", err: "unbalanced }"},
	}
	for _, tt := range tests {
		level, attrs, err := parsePolicy(tt.value)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parsePolicy(%q): error %v, want %q", tt.value, err, tt.err)
			}
			continue
		}
		if err != nil || level != tt.level || !reflect.DeepEqual(attrs, tt.attrs) {
			t.Errorf("parsePolicy(%q) = %q, %v, %v; want %q, %v", tt.value, level, attrs, err, tt.level, tt.attrs)
		}
	}
}

func TestProtocolFloor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		value, floor string
		ok           bool
	}{
		{">=TLSv1.2", "TLSv1.2", true},
		{">=tlsv1.3", "TLSv1.3", true},
		{"!SSLv2:!SSLv3:!TLSv1:!TLSv1.1", "TLSv1.2", true},
		{"!SSLv2, !SSLv3", "TLSv1", true},
		{"TLSv1.3:TLSv1.2", "TLSv1.2", true},
		{"TLSv1.2 !TLSv1.3", "", false}, // both kinds: for a person to read
		{">=TLSv9", "", false},
		{"!QUIC", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if floor, ok := protocolFloor(tt.value); floor != tt.floor || ok != tt.ok {
			t.Errorf("protocolFloor(%q) = %q, %v; want %q, %v", tt.value, floor, ok, tt.floor, tt.ok)
		}
	}
}

// realistic is a table like those sites keep: partners by domain and
// subdomain, a relay by next hop, exceptions, and what the daemon cannot
// express.
const realistic = `# TLS policy for partners (postmap hash:/etc/postfix/tls_policy)
.bank.example          encrypt
bank.example           secure match=nexthop:dot-nexthop
.eu.bank.example       verify protocols=>=TLSv1.2
[relay.example.net]:587  verify
legacy.example         may
broken.example         none
BANK.example           encrypt
pinned.example         fingerprint
    match=3D:95:34:51:24:66:33:B9:D2:40:99:C0:C1:17:0B:D1
old.example            MUST
`

func TestConvert(t *testing.T) {
	t.Parallel()
	entries, problems, err := Parse(strings.NewReader(realistic))
	if err != nil {
		t.Fatal(err)
	}
	res := Convert(entries, problems)
	var got []string
	for _, r := range res.Rules {
		got = append(got, r.Destination.Match+" "+r.Destination.Level+" "+r.Destination.Upgrade)
	}
	want := []string{
		"bank.example secure ",
		"[relay.example.net]:587 verify ",
		"legacy.example may ",
		"broken.example none none",
		"pinned.example encrypt ",
		".eu.bank.example verify ", // the nearer parent first
		".bank.example encrypt ",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rules:\n got %q\nwant %q", got, want)
	}
	lost := map[string][]string{}
	for _, r := range res.Rules {
		lost[r.Destination.Match] = r.Lost
	}
	if len(lost["bank.example"]) != 1 || !strings.HasPrefix(lost["bank.example"][0], "match=nexthop:dot-nexthop: ") {
		t.Errorf("bank.example lost %q, want its match=", lost["bank.example"])
	}
	if len(lost["pinned.example"]) != 2 || !strings.HasPrefix(lost["pinned.example"][0], "level fingerprint: ") {
		t.Errorf("pinned.example lost %q, want the fingerprint level and its match=", lost["pinned.example"])
	}
	if r := res.Rules[5]; len(r.Lost) != 0 || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "kept by minimum_tls TLSv1.2") {
		t.Errorf(".eu.bank.example: lost %q, notes %q; want protocols=>=TLSv1.2 kept by minimum_tls", r.Lost, r.Notes)
	}
	var skipped []int
	for _, s := range res.Skipped {
		skipped = append(skipped, s.Line)
	}
	if !reflect.DeepEqual(skipped, []int{8, 11}) || !strings.HasPrefix(res.Skipped[0].Msg, "duplicate key") ||
		!strings.Contains(res.Skipped[1].Msg, `unknown security level "MUST"`) {
		t.Errorf("skipped %+v, want line 8 (a duplicate) and 11 (an unknown level)", res.Skipped)
	}
	if res.Exact() {
		t.Error("Exact() with lines lost and skipped")
	}
	if exact := Convert([]Entry{{Line: 1, Key: "a.example", Value: "encrypt protocols=>=TLSv1.2"}, {Line: 2, Key: "A.example", Value: "may"}}, nil); !exact.Exact() {
		t.Errorf("Exact() false for a table the rules carry over whole (a duplicate aside): %+v", exact)
	}
}

// TestWriteYAMLLoads checks that the output is a configuration the rules
// package accepts, and that the daemon's first-match order answers what
// Postfix's table lookup (the domain, then .parent from the nearest)
// answered.
func TestWriteYAMLLoads(t *testing.T) {
	t.Parallel()
	entries, problems, err := Parse(strings.NewReader(realistic))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := WriteYAML(&out, "tls_policy", Convert(entries, problems)); err != nil {
		t.Fatal(err)
	}
	rs, err := rules.Load("imported.yaml", out.Bytes())
	if err != nil {
		t.Fatalf("the output does not load: %v\n%s", err, out.String())
	}
	for key, want := range map[string]string{
		"bank.example":            "secure",
		"www.bank.example":        "encrypt",
		"mx.eu.bank.example":      "verify",
		"[relay.example.net]:587": "verify",
		"broken.example":          "none",
		"other.example":           "may", // the defaults
	} {
		k, err := rules.ParseKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if got := rs.Match(k).Level.String(); got != want {
			t.Errorf("%s: %s, want %s", key, got, want)
		}
	}
	for _, want := range []string{
		"# tls_policy:3: bank.example secure match=nexthop:dot-nexthop\n  # NOT CARRIED OVER: match=nexthop:dot-nexthop: ",
		"  - match: \"[relay.example.net]:587\"\n    level: verify\n",
		"    level: none\n    upgrade: none\n",
		"# Lines of tls_policy that gave no rule:\n#   line 8: duplicate key",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestWriteYAMLEmpty(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := WriteYAML(&out, "empty", Convert(nil, nil)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "\ndestinations: []\n") {
		t.Errorf("an empty table gives:\n%s", out.String())
	}
	if _, err := rules.Load("empty.yaml", out.Bytes()); err != nil {
		t.Errorf("the output does not load: %v", err)
	}
}
