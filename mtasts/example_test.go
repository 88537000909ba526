package mtasts_test

import (
	"fmt"
	"log"

	"github.com/tlspolicyd/tlspolicyd/mtasts"
)

// A policy as a domain serves it, checked against MX hosts and rendered as
// the Postfix answer for mode enforce.
func ExampleParsePolicy() {
	p, err := mtasts.ParsePolicy([]byte("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n"))
	if err != nil {
		log.Fatal(err)
	}
	for _, mx := range []string{"mail.example.com", "mx1.example.net", "a.b.example.net", "mx.attacker.test"} {
		fmt.Println(mx, p.Matches(mx))
	}
	if p.Mode == mtasts.ModeEnforce {
		fmt.Printf("secure match=%s servername=hostname\n", p.PostfixMatch())
	}
	// Output:
	// mail.example.com true
	// mx1.example.net true
	// a.b.example.net false
	// mx.attacker.test false
	// secure match=mail.example.com:.example.net servername=hostname
}

func ExampleParseTXT() {
	id, err := mtasts.ParseTXT("v=STSv1; id=20160831085700Z;")
	fmt.Println(id, err)
	_, err = mtasts.ParseTXT("v=STSv1; id=2016-08-31")
	fmt.Println(err)
	// Output:
	// 20160831085700Z <nil>
	// mtasts: invalid MTA-STS TXT record: expected ';' before "-08-31" in "v=STSv1; id=2016-08-31"
}
