package policytable

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// FuzzImport checks that whatever the table holds, the output is a
// configuration the rules package loads, with a rule for every line that
// gave one: an import never produces a file that check would refuse.
func FuzzImport(f *testing.F) {
	for _, seed := range []string{
		realistic,
		"example.com secure match=.example.com\n.example.com encrypt\n",
		"[mx.example.net]:587 verify, { match = a b }\n  protocols=>=TLSv1.3\n",
		"bücher.example dane-only\nxn--bcher-kva.example may\n",
		"a.example\n  \t\n# x\nb.example fingerprint\n",
		"\"quoted\" may\nkey: encrypt\n- none\n",
		"example.com encrypt {\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, table string) {
		entries, problems, err := Parse(strings.NewReader(table))
		if err != nil {
			return // unreadable input: nothing is printed
		}
		res := Convert(entries, problems)
		var out bytes.Buffer
		if err := WriteYAML(&out, "fuzz", res); err != nil {
			t.Fatal(err)
		}
		rs, err := rules.Load("imported.yaml", out.Bytes())
		if err != nil {
			t.Fatalf("the output does not load: %v\n%s", err, out.String())
		}
		if len(rs.Rules) != len(res.Rules) {
			t.Fatalf("%d rules loaded, %d imported", len(rs.Rules), len(res.Rules))
		}
	})
}
