package fakedns_test

import (
	"context"
	"fmt"
	"log"

	"github.com/miekg/dns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
)

// A zone with two MX hosts, one of which fails, read with Go's resolver.
func Example() {
	s, err := fakedns.Start("127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	s.AddMX("example.test", 10, "mx1.example.test")
	s.AddMX("example.test", 20, "mx2.example.test")
	s.AddA("mx1.example.test", "127.0.0.2")
	s.SetRcode("mx2.example.test", dns.RcodeServerFailure)

	r := s.Resolver()
	ctx := context.Background()
	mxs, err := r.LookupMX(ctx, "example.test.")
	if err != nil {
		log.Fatal(err)
	}
	for _, mx := range mxs {
		addrs, err := r.LookupHost(ctx, mx.Host)
		fmt.Println(mx.Pref, mx.Host, addrs, err != nil)
	}
	fmt.Println(s.Count("example.test", dns.TypeMX), "MX query")
	// Output:
	// 10 mx1.example.test. [127.0.0.2] false
	// 20 mx2.example.test. [] true
	// 1 MX query
}
