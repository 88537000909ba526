package rules

import (
	"strings"
	"testing"
)

func mustLoad(t testing.TB, yaml string) *Rules {
	t.Helper()
	rs, err := Load("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return rs
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
		if got := RenderPolicy(tt.level, tt.min, tt.version); got != tt.want {
			t.Errorf("RenderPolicy(%s, %s, %s) = %q, want %q", tt.level, tt.min, tt.version, got, tt.want)
		}
	}
}

func TestLevelOrderAndParse(t *testing.T) {
	t.Parallel()
	order := []string{"none", "may", "encrypt", "verify", "secure", "dane", "dane-only"}
	prev := LevelUnset
	for _, w := range order {
		l, err := ParseLevel(w)
		if err != nil || l.String() != w || !l.AtLeast(prev) || l == prev {
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
	if Higher(LevelMay, LevelVerify) != LevelVerify || Higher(LevelSecure, LevelEncrypt) != LevelSecure ||
		Lower(LevelDane, LevelVerify) != LevelVerify || !LevelDane.AtLeast(LevelSecure) || LevelMay.AtLeast(LevelEncrypt) {
		t.Error("the order of levels is wrong")
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
		if got := Both(tt.a, tt.b); got != tt.want {
			t.Errorf("Both(%s, %s) = %s, want %s", tt.a, tt.b, got, tt.want)
		}
		if !tt.want.Meets(tt.a) || !tt.want.Meets(tt.b) {
			t.Errorf("%s must meet both %s and %s", tt.want, tt.a, tt.b)
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
