package policyd

import (
	"context"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

const testRules = `
defaults:
  level: may
  upgrade: none
destinations:
  - match: example.org
    level: verify
  - match: .example.org
    level: encrypt
  - match: "[relay.example.net]:587"
    level: secure
  - match: "[relay.example.net]"
    level: encrypt
  - match: mx.example.net:2525
    level: dane-only
  - match: bücher.example
    level: encrypt
  - match: .sub.example.org
    level: secure
  - match: first.example.com
    level: none
  - match: .example.com
    level: verify
classes:
  - name: phi
    senders: ["@clinic.example.org", "@.clinic.example.org", "Records@Billing.example.org", "<>"]
    level: verify
  - name: bulk
    senders: ["@news.example.org"]
    level: may
`

func mustLoad(t testing.TB, yaml string) *Policy {
	t.Helper()
	p, err := Load("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return p
}

func TestLookupTable(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, testRules), nil)
	const (
		may     = "may"
		encrypt = "encrypt protocols=>=TLSv1.2"
		verify  = "verify protocols=>=TLSv1.2"
		secure  = "secure protocols=>=TLSv1.2"
	)
	tests := []struct {
		mapName, key string
		status       Status
		text         string
	}{
		{"tlspolicy", "example.org", StatusOK, verify},
		{"tlspolicy", "EXAMPLE.Org", StatusOK, verify},
		{"tlspolicy", "example.org.", StatusOK, verify},
		{"tlspolicy", "mx.example.org", StatusOK, encrypt},
		{"tlspolicy", "a.b.c.example.org", StatusOK, encrypt},
		{"tlspolicy", ".example.org", StatusOK, encrypt},      // a rule written for the parent form
		{"tlspolicy", ".b.example.org", StatusOK, encrypt},    // inside .example.org's reach
		{"tlspolicy", "x.sub.example.org", StatusOK, encrypt}, // .example.org comes first in the file
		{"tlspolicy", ".unmatched.test", StatusNotFound, ""},  // no rule for the parent form
		{"tlspolicy", ".org", StatusNotFound, ""},
		{"tlspolicy", "unmatched.test", StatusOK, may}, // explicit, so Postfix asks once
		{"tlspolicy", "example.org.evil.test", StatusOK, may},
		{"tlspolicy", "notexample.org", StatusOK, may},
		{"tlspolicy", "[relay.example.net]:587", StatusOK, secure},
		{"tlspolicy", "[RELAY.Example.NET.]:587", StatusOK, secure},
		{"tlspolicy", "[relay.example.net]", StatusOK, encrypt},
		{"tlspolicy", "[relay.example.net]:25", StatusOK, may}, // another next hop
		{"tlspolicy", "relay.example.net", StatusOK, may},      // a domain, not the bracketed host
		{"tlspolicy", "MX.example.net:2525", StatusOK, "dane-only protocols=>=TLSv1.2"},
		{"tlspolicy", "[192.0.2.1]:2525", StatusOK, may},
		{"tlspolicy", "[ipv6:2001:DB8::1]", StatusOK, may},
		{"tlspolicy", "bücher.example", StatusOK, encrypt},
		{"tlspolicy", "BÜCHER.example", StatusOK, encrypt},
		{"tlspolicy", "xn--bcher-kva.example", StatusOK, encrypt},
		{"tlspolicy", "first.example.com", StatusOK, "none"},
		{"tlspolicy", "second.example.com", StatusOK, verify},
		{"phi", "unmatched.test", StatusOK, verify},
		{"phi", "example.org", StatusOK, verify},
		{"phi", "[relay.example.net]:587", StatusOK, secure}, // the stronger of the two
		{"phi", ".unmatched.test", StatusNotFound, ""},
		{"bulk", "mx.example.org", StatusOK, encrypt}, // a class never lowers
		{"transport", "example.org", StatusNotFound, ""},
		{"nosuch", "example.org", StatusPerm, "unknown map nosuch"},
		{"tlspolicy", "exa mple.org", StatusPerm, ""},
		{"tlspolicy", "[relay.example.net", StatusPerm, ""},
		{"tlspolicy", "[relay.example.net]:0", StatusPerm, ""},
		{"tlspolicy", "a..b", StatusPerm, ""},
		{"tlspolicy", ".", StatusPerm, ""},
	}
	for _, tt := range tests {
		got := e.LookupTable(context.Background(), tt.mapName, []byte(tt.key))
		if got.Status != tt.status || (tt.text != "" && got.Text != tt.text) || (tt.status == StatusNotFound && got.Text != "") {
			t.Errorf("LookupTable(%q, %q) = %v %q, want %v %q", tt.mapName, tt.key, got.Status, got.Text, tt.status, tt.text)
		}
	}
}

func TestDecideSenderClass(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, testRules), nil)
	tests := []struct {
		sender, class string
	}{
		{"doctor@clinic.example.org", "phi"},
		{"Doctor@CLINIC.example.org", "phi"},
		{"x@lab.clinic.example.org", "phi"}, // @.clinic.example.org
		{"records@billing.example.org", "phi"},
		{"RECORDS@billing.example.org", "phi"},
		{"other@billing.example.org", ""},
		{"<>", "phi"}, // the null sender, listed as "<>"
		{"a@news.example.org", "bulk"},
		{"a@sub.news.example.org", ""}, // @news.example.org is that domain only
		{"someone@example.org", ""},
		{"not-an-address", ""},
	}
	for _, tt := range tests {
		d := e.Decide(context.Background(), "unmatched.test", tt.sender, 0)
		got := ""
		if d.Class != nil {
			got = d.Class.Name
		}
		if got != tt.class {
			t.Errorf("class of %q = %q, want %q", tt.sender, got, tt.class)
		}
	}
	if d := e.Decide(context.Background(), "unmatched.test", "", 0); d.Class != nil {
		t.Errorf("no -sender must use the default class, got %q", d.Class.Name)
	}
}

func TestRenderPolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		level   Level
		min     string
		version Version
		want    string
	}{
		{LevelNone, "TLSv1.2", Version{3, 7}, "none"},
		{LevelMay, "TLSv1.2", Version{3, 7}, "may"},
		{LevelEncrypt, "TLSv1.2", Version{3, 7}, "encrypt protocols=>=TLSv1.2"},
		{LevelVerify, "TLSv1.3", Version{3, 6}, "verify protocols=>=TLSv1.3"},
		{LevelSecure, "TLSv1.2", Version{3, 10}, "secure protocols=>=TLSv1.2"},
		{LevelDane, "TLSv1.2", Version{3, 7}, "dane protocols=>=TLSv1.2"},
		{LevelDaneOnly, "TLSv1.2", Version{3, 7}, "dane-only protocols=>=TLSv1.2"},
		// Postfix before 3.6 cannot parse ">=": the same floor as exclusions.
		{LevelEncrypt, "TLSv1.2", Version{3, 5}, "encrypt protocols=!SSLv2:!SSLv3:!TLSv1:!TLSv1.1"},
		{LevelVerify, "TLSv1", Version{2, 11}, "verify protocols=!SSLv2:!SSLv3"},
		{LevelSecure, "TLSv1.3", Version{3, 4}, "secure protocols=!SSLv2:!SSLv3:!TLSv1:!TLSv1.1:!TLSv1.2"},
	}
	for _, tt := range tests {
		if got := renderPolicy(tt.level, tt.min, tt.version); got != tt.want {
			t.Errorf("renderPolicy(%s, %s, %s) = %q, want %q", tt.level, tt.min, tt.version, got, tt.want)
		}
	}
}

func TestLevelOrderAndParse(t *testing.T) {
	t.Parallel()
	order := []string{"none", "may", "encrypt", "verify", "secure", "dane", "dane-only"}
	prev := LevelUnset
	for _, w := range order {
		l, err := ParseLevel(w)
		if err != nil || l.String() != w || l <= prev {
			t.Errorf("ParseLevel(%q) = %v, %v; want a level above %v", w, l, err, prev)
		}
		prev = l
	}
	if l, err := ParseLevel("Verify"); err != nil || l != LevelVerify {
		t.Errorf("ParseLevel is case-insensitive: got %v, %v", l, err)
	}
	if _, err := ParseLevel("fingerprint"); err == nil {
		t.Error("fingerprint is not supported and must be refused")
	}
	if Max(LevelMay, LevelVerify) != LevelVerify || Max(LevelSecure, LevelEncrypt) != LevelSecure {
		t.Error("Max is wrong")
	}
	// Opportunistic dane can fall back to may: against a level that
	// forbids plaintext, that level wins.
	for _, tt := range []struct{ a, b, want Level }{
		{LevelDane, LevelVerify, LevelVerify},
		{LevelEncrypt, LevelDane, LevelEncrypt},
		{LevelDane, LevelMay, LevelDane},
		{LevelDaneOnly, LevelVerify, LevelDaneOnly},
		{LevelSecure, LevelVerify, LevelSecure},
	} {
		if got := Stronger(tt.a, tt.b); got != tt.want {
			t.Errorf("Stronger(%s, %s) = %s, want %s", tt.a, tt.b, got, tt.want)
		}
	}
	if LevelDane.Encrypted() || !LevelDaneOnly.Encrypted() || LevelMay.Encrypted() || !LevelEncrypt.Encrypted() {
		t.Error("Encrypted: dane is opportunistic, dane-only is not")
	}
}

func TestParseKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raw  string
		kind KeyKind
		name string
		host string
		port int
	}{
		{"Example.ORG.", KeyDomain, "example.org", "example.org", 0},
		{".Example.org", KeyParent, "example.org", "", 0},
		{"[MX.example.org]", KeyVerbatim, "[mx.example.org]", "mx.example.org", 0},
		{"[mx.example.org.]:2525", KeyVerbatim, "[mx.example.org]:2525", "mx.example.org", 2525},
		{"mx.example.org:25", KeyVerbatim, "mx.example.org:25", "mx.example.org", 25},
		{"[192.0.2.1]:25", KeyVerbatim, "[192.0.2.1]:25", "192.0.2.1", 25},
		{"пример.рф", KeyDomain, "xn--e1afmkfd.xn--p1ai", "xn--e1afmkfd.xn--p1ai", 0},
		{"MX.Example.org:0587", KeyVerbatim, "mx.example.org:587", "mx.example.org", 587},
		{"[Relay.Example.NET]:00025", KeyVerbatim, "[relay.example.net]:25", "relay.example.net", 25},
		{"[IPv6:2001:DB8::1]", KeyVerbatim, "[ipv6:2001:db8::1]", "ipv6:2001:db8::1", 0},
		{"[IPv6:2001:DB8::1]:465", KeyVerbatim, "[ipv6:2001:db8::1]:465", "ipv6:2001:db8::1", 465},
	}
	for _, tt := range tests {
		k, err := ParseKey(tt.raw)
		if err != nil || k.Kind != tt.kind || k.Name != tt.name || k.Host != tt.host || k.Port != tt.port {
			t.Errorf("ParseKey(%q) = %+v, %v", tt.raw, k, err)
		}
	}
	for _, bad := range []string{"", "a b", "[x", "[x]y", "x:", "x:abc", "x:+25", "..", "a..", "a..b", "\x00", "[]",
		"x:0", "x:65536", "x:-1", "[x]:", "[x]:99999999999999999999", ".", ".a..b"} {
		if k, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) = %+v, want an error", bad, k)
		}
	}
}

// FuzzParseKey checks the key parser on arbitrary input: no panic, and a
// parsed key is canonical: lower case, and parsing its own spelling gives
// it back.
func FuzzParseKey(f *testing.F) {
	for _, seed := range []string{"Example.ORG.", ".example.org", "[MX.example.org]:0025", "[IPv6:2001:DB8::1]", "mx.example.org:25", "пример.рф", "a..b", "[x]y"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		k, err := ParseKey(raw)
		if err != nil {
			return
		}
		if k.Name != strings.ToLower(k.Name) {
			t.Fatalf("ParseKey(%q).Name = %q, not lower case", raw, k.Name)
		}
		again, err := ParseKey(k.String())
		if err != nil || again != k {
			t.Fatalf("ParseKey(%q) = %+v, but ParseKey(%q) = %+v, %v", raw, k, k.String(), again, err)
		}
	})
}

func TestReloadSwapsWholePolicy(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, testRules), nil)
	e.SetPolicy(mustLoad(t, "destinations:\n  - {match: other.test, level: secure}\n"))
	if got := e.LookupTable(context.Background(), "tlspolicy", []byte("example.org")); got.Text != "may" {
		t.Errorf("after swap example.org = %q, want may (old rules gone)", got.Text)
	}
	if got := e.LookupTable(context.Background(), "phi", []byte("example.org")); got.Status != StatusPerm {
		t.Errorf("after swap the phi class is gone, got %v", got)
	}
	if got := e.LookupTable(context.Background(), "tlspolicy", []byte("other.test")); got.Text != "secure protocols=>=TLSv1.2" {
		t.Errorf("after swap other.test = %q", got.Text)
	}
}

// TestLookupTableAllocs checks that answering from the rules allocates
// nothing, whatever the key's case or form, with and without a probe cache
// behind the engine (upgrade: none and no published-policy source need no
// evidence).
func TestLookupTableAllocs(t *testing.T) {
	engines := map[string]*Engine{
		"rules only":    NewEngine(mustLoad(t, testRules), nil),
		"with evidence": NewEngine(mustLoad(t, "mtasts: {enabled: false}\n"+testRules), &fakeEvidence{results: map[string]tlsprobe.Result{}}),
	}
	ctx := context.Background()
	for name, e := range engines {
		for _, key := range []string{"example.org", "A.B.Example.ORG.", "[Relay.Example.NET]:0587", "mx.example.net:2525", ".example.org", "unmatched.test", "xn--bcher-kva.example"} {
			k := []byte(key)
			allocs := testing.AllocsPerRun(100, func() { e.LookupTable(ctx, "tlspolicy", k) })
			if allocs != 0 {
				t.Errorf("%s: LookupTable(%q) allocates %v times per call, want 0", name, key, allocs)
			}
		}
	}
}

func BenchmarkLookupTable(b *testing.B) {
	e := NewEngine(mustLoad(b, testRules), nil)
	ctx := context.Background()
	keys := [][]byte{[]byte("example.org"), []byte("a.b.example.org"), []byte("Mixed.Case.Example"), []byte("unmatched.test")}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.LookupTable(ctx, "tlspolicy", keys[i%len(keys)])
	}
}
