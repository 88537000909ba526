package rules_test

import (
	"fmt"

	"github.com/tlspolicyd/tlspolicyd/rules"
)

// Every mistake of a file is reported at once, in line order, each with
// what to write instead.
func ExampleLoad_errors() {
	_, err := rules.Load("rules.yaml", []byte(`listen:
  socketmap: 127.0.0.1:10028
  max_connections: 1k
destinations:
  - match: "*.example.com"
    levle: verify
`))
	fmt.Println(err)
	// Output:
	// rules.yaml:3: listen.max_connections: "1k" is not a whole number (write digits only, without quotes, e.g. max_connections: 1000)
	// rules.yaml:5: destinations[0].match: "*.example.com": "*" is no wildcard here; write ".example.com" for any subdomain of example.com (and list example.com as well if the domain itself is meant)
	// rules.yaml:6: unknown key "levle" in destinations[0]; did you mean "level"?
}

// A rule with a list matches any of its patterns, and a lookup cites the
// line of the pattern that matched.
func ExampleRules_Match_list() {
	rs, err := rules.Load("rules.yaml", []byte(`destinations:
  - match:
      - partner-a.example
      - .partner-b.example
    level: verify
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, name := range []string{"partner-a.example", "mx.partner-b.example", "other.example"} {
		k, _ := rules.ParseKey(name)
		r := rs.Match(k)
		fmt.Printf("%s: %s from %s\n", name, r.Level, r.Describe())
	}
	// Output:
	// partner-a.example: verify from rules.yaml:3 destinations[0] match "partner-a.example"
	// mx.partner-b.example: verify from rules.yaml:4 destinations[0] match ".partner-b.example"
	// other.example: may from defaults (no destination rule matched)
}
