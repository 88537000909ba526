package policyd

import (
	"context"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/rules"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
	"github.com/tlspolicyd/tlspolicyd/wire"
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

func mustLoad(t testing.TB, yaml string) *rules.Rules {
	t.Helper()
	p, err := rules.Load("test.yaml", []byte(yaml))
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
		status       wire.Status
		text         string
	}{
		{"tlspolicy", "example.org", wire.StatusOK, verify},
		{"tlspolicy", "EXAMPLE.Org", wire.StatusOK, verify},
		{"tlspolicy", "example.org.", wire.StatusOK, verify},
		{"tlspolicy", "mx.example.org", wire.StatusOK, encrypt},
		{"tlspolicy", "a.b.c.example.org", wire.StatusOK, encrypt},
		{"tlspolicy", ".example.org", wire.StatusOK, encrypt},      // a rule written for the parent form
		{"tlspolicy", ".b.example.org", wire.StatusOK, encrypt},    // inside .example.org's reach
		{"tlspolicy", "x.sub.example.org", wire.StatusOK, encrypt}, // .example.org comes first in the file
		{"tlspolicy", ".unmatched.test", wire.StatusNotFound, ""},  // no rule for the parent form
		{"tlspolicy", ".org", wire.StatusNotFound, ""},
		{"tlspolicy", "unmatched.test", wire.StatusOK, may}, // explicit, so Postfix asks once
		{"tlspolicy", "example.org.evil.test", wire.StatusOK, may},
		{"tlspolicy", "notexample.org", wire.StatusOK, may},
		{"tlspolicy", "[relay.example.net]:587", wire.StatusOK, secure},
		{"tlspolicy", "[RELAY.Example.NET.]:587", wire.StatusOK, secure},
		{"tlspolicy", "[relay.example.net]", wire.StatusOK, encrypt},
		{"tlspolicy", "[relay.example.net]:25", wire.StatusOK, may}, // another next hop
		{"tlspolicy", "relay.example.net", wire.StatusOK, may},      // a domain, not the bracketed host
		{"tlspolicy", "MX.example.net:2525", wire.StatusOK, "dane-only protocols=>=TLSv1.2"},
		{"tlspolicy", "[192.0.2.1]:2525", wire.StatusOK, may},
		{"tlspolicy", "[ipv6:2001:DB8::1]", wire.StatusOK, may},
		{"tlspolicy", "bücher.example", wire.StatusOK, encrypt},
		{"tlspolicy", "BÜCHER.example", wire.StatusOK, encrypt},
		{"tlspolicy", "xn--bcher-kva.example", wire.StatusOK, encrypt},
		{"tlspolicy", "first.example.com", wire.StatusOK, "none"},
		{"tlspolicy", "second.example.com", wire.StatusOK, verify},
		{"phi", "unmatched.test", wire.StatusOK, verify},
		{"phi", "example.org", wire.StatusOK, verify},
		{"phi", "[relay.example.net]:587", wire.StatusOK, secure}, // the stronger of the two
		{"phi", ".unmatched.test", wire.StatusNotFound, ""},
		{"bulk", "mx.example.org", wire.StatusOK, encrypt}, // a class never lowers
		{"transport", "example.org", wire.StatusNotFound, ""},
		{"nosuch", "example.org", wire.StatusPerm, "unknown map nosuch"},
		{"tlspolicy", "exa mple.org", wire.StatusPerm, ""},
		{"tlspolicy", "[relay.example.net", wire.StatusPerm, ""},
		{"tlspolicy", "[relay.example.net]:0", wire.StatusPerm, ""},
		{"tlspolicy", "a..b", wire.StatusPerm, ""},
		{"tlspolicy", ".", wire.StatusPerm, ""},
	}
	for _, tt := range tests {
		got := e.LookupTable(context.Background(), tt.mapName, []byte(tt.key))
		if got.Status != tt.status || (tt.text != "" && got.Text != tt.text) || (tt.status == wire.StatusNotFound && got.Text != "") {
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

func TestReloadSwapsWholePolicy(t *testing.T) {
	t.Parallel()
	e := NewEngine(mustLoad(t, testRules), nil)
	e.SetRules(mustLoad(t, "destinations:\n  - {match: other.test, level: secure}\n"))
	if got := e.LookupTable(context.Background(), "tlspolicy", []byte("example.org")); got.Text != "may" {
		t.Errorf("after swap example.org = %q, want may (old rules gone)", got.Text)
	}
	if got := e.LookupTable(context.Background(), "phi", []byte("example.org")); got.Status != wire.StatusPerm {
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
		"with evidence": NewEngine(mustLoad(t, "mtasts: {enabled: false}\n"+testRules), &fakeFindings{results: map[string]tlsprobe.Report{}}),
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
