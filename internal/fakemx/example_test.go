package fakemx_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net/smtp"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// A fake MX with a certificate from a test CA, and a client that verifies it.
func Example() {
	ca, err := testca.New("example CA")
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.Leaf(testca.LeafOptions{DNSNames: []string{"mx.example.test"}})
	if err != nil {
		log.Fatal(err)
	}
	s, err := fakemx.Start("127.0.0.2:0", fakemx.Options{
		Hostname: "mx.example.test",
		TLS:      &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	c, err := smtp.Dial(s.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.test"); err != nil {
		log.Fatal(err)
	}
	if err := c.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test"}); err != nil {
		log.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sessions, err := s.WaitSessions(ctx, 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sessions[0].Commands, tls.VersionName(sessions[0].TLSVersion), sessions[0].ServerName)
	// Output: [EHLO STARTTLS EHLO QUIT] TLS 1.3 mx.example.test
}
