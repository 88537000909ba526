package policytable_test

import (
	"os"
	"strings"

	"github.com/tlspolicyd/tlspolicyd/policytable"
)

func ExampleWriteYAML() {
	table := `.partner.example   encrypt
partner.example    verify match=hostname
`
	entries, problems, err := policytable.Parse(strings.NewReader(table))
	if err != nil {
		panic(err)
	}
	policytable.WriteYAML(os.Stdout, "tls_policy", policytable.Convert(entries, problems))
	// Output:
	// # Destination rules imported from tls_policy by tlspolicyd import-postfix.
	// # Put them in place of the destinations: list of rules.yaml, then run
	// # tlspolicyd check. They are in the order Postfix looks keys up: exact
	// # names first, then .parent keys from the most specific. Levels from
	// # encrypt up carry protocols=>= from minimum_tls; probes may raise a
	// # destination up to defaults.upgrade (entries at none have upgrade: none).
	// destinations:
	//   # tls_policy:2: partner.example verify match=hostname
	//   # NOT CARRIED OVER: match=hostname: smtp_tls_verify_cert_match or smtp_tls_secure_cert_match applies instead (the daemon sends match= only for MTA-STS policies)
	//   - match: "partner.example"
	//     level: verify
	//   # tls_policy:1: .partner.example encrypt
	//   - match: ".partner.example"
	//     level: encrypt
}
