package dane_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/tlspolicyd/tlspolicyd/dane"
	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
)

// A domain with two MX hosts, one of which publishes a DANE-EE record, all
// DNSSEC-validated by the (fake) local resolver.
func Example() {
	s, err := fakedns.Start("127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	s.AddMX("example.test", 10, "mx1.example.test")
	s.AddMX("example.test", 20, "mx2.example.test")
	s.AddA("mx1.example.test", "127.0.0.2")
	s.AddA("mx2.example.test", "127.0.0.3")
	s.AddTLSA("_25._tcp.mx1.example.test", 3, 1, 1, strings.Repeat("ab", 32))
	for _, name := range []string{"example.test", "mx1.example.test", "mx2.example.test", "_25._tcp.mx1.example.test", "_25._tcp.mx2.example.test"} {
		s.SetAD(name, true)
	}

	servers := []string{s.Addr()}
	c := &dane.Checker{Servers: servers, Trusted: dnsclient.AllLoopback(servers)}
	r := c.Check(context.Background(), "example.test")
	fmt.Println(r.Verdict)
	for _, h := range r.Hosts {
		fmt.Println(h.Host, h.Status, len(h.Records))
	}
	// Output:
	// mixed
	// mx1.example.test usable 1
	// mx2.example.test no_tlsa 0
}
