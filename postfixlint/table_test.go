package postfixlint

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseSource(t *testing.T) {
	t.Parallel()
	src := "# transport table\n" +
		"\n" +
		"notls.test   smtp:[127.0.0.1]:2525\n" +
		"  # a comment inside\n" +
		"long.test\tsmtp:[a.example]:25,\n" +
		"    [b.example]:25\n" +
		"   \n" +
		"bare.test\n"
	got, err := parseSource(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Key: "notls.test", Value: "smtp:[127.0.0.1]:2525", Line: 3},
		{Key: "long.test", Value: "smtp:[a.example]:25, [b.example]:25", Line: 5},
		{Key: "bare.test", Value: "", Line: 8},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseSource:\n got %+v\nwant %+v", got, want)
	}
}

func TestSplitList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"hash:/a, socketmap:inet:127.0.0.1:10028:tlspolicy", []string{"hash:/a", "socketmap:inet:127.0.0.1:10028:tlspolicy"}},
		{"hash:/a,hash:/b\thash:/c", []string{"hash:/a", "hash:/b", "hash:/c"}},
		{"inline:{ a.test = encrypt, b.test = may }, hash:/b", []string{"inline:{ a.test = encrypt, b.test = may }", "hash:/b"}},
		{"[a.example]:587, [b.example]:587", []string{"[a.example]:587", "[b.example]:587"}},
	} {
		if got := splitList(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitList(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseTable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		spec, typ, name string
	}{
		{"hash:/etc/postfix/transport", "hash", "/etc/postfix/transport"},
		{"proxy:hash:/etc/postfix/transport", "hash", "/etc/postfix/transport"},
		{"socketmap:inet:127.0.0.1:10028:tlspolicy", "socketmap", "inet:127.0.0.1:10028:tlspolicy"},
		{"tcp:127.0.0.1:10029", "tcp", "127.0.0.1:10029"},
		{"static", "static", ""},
	} {
		tb := parseTable(tc.spec, "test")
		if tb.Type != tc.typ || tb.Name != tc.name || tb.Spec != tc.spec {
			t.Errorf("parseTable(%q) = type %q name %q spec %q, want %q %q", tc.spec, tb.Type, tb.Name, tb.Spec, tc.typ, tc.name)
		}
	}
}

func TestTransportKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		dest   string
		legacy bool
		want   []string
	}{
		{"a.b.example", false, []string{"a.b.example", ".b.example", ".example", "*"}},
		{"*.b.example", false, []string{".b.example", ".example", "*"}},
		{"a.b.example", true, []string{"a.b.example", "b.example", "example", "*"}},
		{"*.b.example", true, []string{"b.example", "example", "*"}},
		{"*", false, []string{"*"}},
	} {
		l := &linter{pf: &Config{ParentMatchesSubdomains: tc.legacy}}
		if got := l.transportKeys(dest{tc.dest}); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("transportKeys(%q, legacy %v) = %q, want %q", tc.dest, tc.legacy, got, tc.want)
		}
	}
}

func TestMajorMinor(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"3.7.11": "3.7", "3.10-20240926": "3.10", "2.11.0": "2.11"} {
		v, err := majorMinor(in)
		if err != nil || v.String() != want {
			t.Errorf("majorMinor(%q) = %v, %v; want %s", in, v, err, want)
		}
	}
	if _, err := majorMinor("unknown"); err == nil {
		t.Error("majorMinor(\"unknown\"): no error")
	}
}
