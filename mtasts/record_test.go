package mtasts

import (
	"errors"
	"strings"
	"testing"
)

func TestParseTXT(t *testing.T) {
	t.Parallel()
	tests := []struct {
		txt string
		id  string // "": invalid
	}{
		{"v=STSv1; id=20160831085700Z;", "20160831085700Z"}, // the RFC's example
		{"v=STSv1; id=20160831085700Z", "20160831085700Z"},
		{"v=STSv1;id=abc", "abc"},
		{"v=STSv1;id=abc;", "abc"},
		{"v=STSv1;\tid=abc", "abc"},                // *WSP after ';'
		{"v=STSv1; id=abc ;", "abc"},               // *WSP before a later ';'
		{"v=STSv1;\tid=abc\t;\text=1\t;\t", "abc"}, // tabs around later separators
		{"v=STSv1; id=abc ; ext=1", "abc"},         // a separator inside
		{"v=STSv1;  id=abc;  ", "abc"},             // the final separator's *WSP
		{"v=STSv1; id=abc; \t", "abc"},             // likewise, a tab
		{"v=STSv1; id=abc \t; ", "abc"},            // and before it
		{"v=STSv1; id=" + strings.Repeat("a", 32), strings.Repeat("a", 32)},
		{"v=STSv1; id=1", "1"},
		{"v=STSv1; ext=value; id=abc", "abc"},
		{"v=STSv1; id=abc; x-ext.1_a=!\"#$%&'()*+,-./:<>?@[\\]^_`{|}~", "abc"},
		{"v=STSv1; id=abc; " + strings.Repeat("x", 32) + "=1", "abc"}, // longest name
		{"v=STSv1; id=first; id=second", "first"},                     // repeated field: the first counts
		{"v=STSv1; id=first; id=not-alnum", "first"},                  // a repeat is ignored, a valid sts-extension
		{"v=STSv1; id=abc; v=STSv2", "abc"},                           // "v" again is an extension

		{"", ""},
		{"v=STSv1", ""},        // bare version: not an MTA-STS record (section 3.1)
		{"v=STSv1 ", ""},       // likewise
		{"v=STSv1;", ""},       // no field
		{"v=STSv1; ", ""},      // no field
		{"v=STSv1; ext=1", ""}, // no id
		{"v=STSv1; id=", ""},   // empty id
		{"v=STSv1; id=" + strings.Repeat("a", 33), ""}, // id too long
		{"v=STSv1; id=2016-08-31", ""},                 // bad characters
		{"v=STSv1; id=abc_def", ""},
		{"v=STSv1; id=abc def", ""},
		{"v=STSv1; id=äbc", ""},
		{"v=STSv1; id=not-alnum; id=abc", ""}, // the first id counts, and is invalid
		{"v=STSv1 ; id=abc", ""},              // the ABNF allows it, section 3.1's prose discards it
		{"v=STSv1\t;id=abc", ""},              // likewise
		{"v=STSv1 ; id=abc ;", ""},
		{"v=STSv1; id=abc ", ""},        // trailing space without ';'
		{"v=STSv1; id=abc\t", ""},       // trailing tab without ';'
		{"v=STSv1; id=abc; ext=1 ", ""}, // after an extension too
		{"v=STSv1; id=abc\t \t", ""},
		{"id=abc; v=STSv1", ""},      // v not first
		{"id=abc", ""},               // v missing
		{" v=STSv1; id=abc", ""},     // leading space
		{"v=STSv2; id=abc", ""},      // other version
		{"v=STSv10; id=abc", ""},     // other version
		{"v=stsv1; id=abc", ""},      // case-sensitive
		{"V=STSv1; id=abc", ""},      // case-sensitive
		{"v=STSv1; ID=abc", ""},      // "ID" is an extension; no id
		{"v=STSv1 id=abc", ""},       // no separator
		{"v=STSv1;; id=abc", ""},     // empty field
		{"v=STSv1; id=abc;;", ""},    // empty field at the end
		{"v=STSv1; ;id=abc", ""},     // empty field
		{"v=STSv1; id=abc; ext", ""}, // field without =
		{"v=STSv1; id=abc; ext=", ""},
		{"v=STSv1; id=abc; ext=a=b", ""},
		{"v=STSv1; id=abc; ext=a b", ""},
		{"v=STSv1; id=abc; ext=a\tb", ""},
		{"v=STSv1; id=abc; ext=\x7f", ""},
		{"v=STSv1; id=abc; ext=é", ""}, // US-ASCII only
		{"v=STSv1; id=abc; =x", ""},
		{"v=STSv1; id=abc; _x=y", ""},
		{"v=STSv1; id=abc; " + strings.Repeat("x", 33) + "=1", ""}, // name too long
		{"v=STSv1; id=abc\x00", ""},
		{"v=STSv1; id=abc\n", ""},
		{"v=STSv1; id=abc\r\n", ""},
	}
	for _, tt := range tests {
		id, err := ParseTXT(tt.txt)
		if tt.id == "" {
			if err == nil || !errors.Is(err, ErrInvalidRecord) || id != "" {
				t.Errorf("ParseTXT(%q) = %q, %v; want ErrInvalidRecord", tt.txt, id, err)
			}
			continue
		}
		if err != nil || id != tt.id {
			t.Errorf("ParseTXT(%q) = %q, %v; want %q", tt.txt, id, err, tt.id)
		}
	}
}

// Section 3.1: records that do not begin with "v=STSv1;" are discarded
// before counting.
func TestIsSTSRecord(t *testing.T) {
	t.Parallel()
	for txt, want := range map[string]bool{
		"v=STSv1; id=1":                 true,
		"v=STSv1;id=1":                  true,
		"v=STSv1;":                      true, // counted, then invalid
		"v=STSv1;; id=1":                true, // counted, then invalid
		"v=STSv1; id=1 ":                true, // counted, then invalid
		"v=STSv1":                       false,
		"v=STSv1 ":                      false,
		"v=STSv1 ; id=1":                false,
		"v=STSv1\t; id=1":               false,
		"v=STSv1\tid=1":                 false,
		"v=STSv10; id=1":                false,
		"v=spf1 -all":                   false,
		"google-site-verification=abc":  false,
		" v=STSv1; id=1":                false,
		"":                              false,
		"v=STSv1x":                      false,
		"V=STSv1; id=1":                 false,
		"v=TLSRPTv1; rua=mailto:a@b.ex": false,
	} {
		if got := isSTSRecord(txt); got != want {
			t.Errorf("isSTSRecord(%q) = %v, want %v", txt, got, want)
		}
	}
}
