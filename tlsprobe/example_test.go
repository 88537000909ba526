package tlsprobe_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"strconv"
	"time"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
	"github.com/tlspolicyd/tlspolicyd/tlsprobe"
)

// Probing a domain with two MX hosts: one verifies, the other offers no
// STARTTLS, so the domain as a whole can only be sent to in plaintext.
func ExampleProber_Probe() {
	ca, err := testca.New("example CA")
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.Leaf(testca.LeafOptions{DNSNames: []string{"mx1.example.test"}})
	if err != nil {
		log.Fatal(err)
	}
	servers, err := fakemx.StartGroup(
		fakemx.Host{IP: "127.0.0.2", Options: fakemx.Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}},
		fakemx.Host{IP: "127.0.0.3"},
	)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range servers {
		defer s.Close()
	}
	_, port, _ := net.SplitHostPort(servers[0].Addr())

	dns, err := fakedns.Start("127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer dns.Close()
	dns.AddMX("example.test", 10, "mx1.example.test")
	dns.AddMX("example.test", 20, "mx2.example.test")
	dns.AddA("mx1.example.test", "127.0.0.2")
	dns.AddA("mx2.example.test", "127.0.0.3")

	p := &tlsprobe.Prober{
		Resolver:     &dnsclient.Client{Servers: []string{dns.Addr()}, Timeout: 2 * time.Second},
		Roots:        ca.Pool(),
		AllowPrivate: true, // the fake MX hosts are on loopback addresses
		Helo:         "probe.example.net",
		StepTimeout:  5 * time.Second,
		Timeout:      10 * time.Second,
		MinVersion:   tls.VersionTLS12,
	}
	p.Port, _ = strconv.Atoi(port)

	r := p.Probe(context.Background(), tlsprobe.Target{Name: "example.test"})
	for _, h := range r.Hosts {
		fmt.Printf("%s pref=%d starttls=%v %s chain=%v name=%v: %v (%v)\n",
			h.Host, h.Preference, h.STARTTLS, h.Version(), h.ChainValid, h.NameValid, h.Capability, h.Cause)
	}
	fmt.Printf("%s: %v, %s\n", r.Target.Name, r.Capability, r.Reason(p.MinVersion))
	// Output:
	// mx1.example.test pref=10 starttls=true TLSv1.3 chain=true name=true: verify (none)
	// mx2.example.test pref=20 starttls=false - chain=false name=false: none (no_starttls)
	// example.test: none, no STARTTLS at mx2.example.test
}
