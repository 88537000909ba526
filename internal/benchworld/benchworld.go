// Package benchworld is a small fake internet for the measuring tools
// (tools/loadgen, tools/soak): a fake DNS server that gives each domain
// asked for one MX host on 127.0.0.1, and a fake MX there that offers
// STARTTLS with a certificate from a CA of its own, so that a daemon
// configured with Config probes every domain successfully (verify) and
// finds no MTA-STS or DANE record. Names not added do not exist (NXDOMAIN).
package benchworld

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// MXHost is the one MX host of the world.
const MXHost = "mx.benchworld.test"

// World is a running fake internet.
type World struct {
	DNS *fakedns.Server
	MX  *fakemx.Server
	// CAFile is the PEM file of the CA that signed the MX's certificate:
	// the daemon's probe.ca_file.
	CAFile string
	// Port is the MX's port: the daemon's probe.port.
	Port string
}

// Start starts a world whose domains are domains (case is folded), writing
// the CA file into dir.
func Start(dir string, domains []string) (*World, error) {
	ca, err := testca.New("benchworld CA")
	if err != nil {
		return nil, err
	}
	caFile, err := ca.WritePEM(dir)
	if err != nil {
		return nil, err
	}
	cert, err := ca.Leaf(testca.LeafOptions{DNSNames: []string{MXHost}})
	if err != nil {
		return nil, err
	}
	mx, err := fakemx.Start("127.0.0.1:0", fakemx.Options{Hostname: MXHost,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Timeout: time.Minute})
	if err != nil {
		return nil, err
	}
	dns, err := fakedns.Start("127.0.0.1:0")
	if err != nil {
		mx.Close()
		return nil, err
	}
	dns.AddA(MXHost, "127.0.0.1")
	for _, d := range domains {
		dns.AddMX(strings.ToLower(d), 10, MXHost)
	}
	_, port, _ := net.SplitHostPort(mx.Addr())
	return &World{DNS: dns, MX: mx, CAFile: caFile, Port: port}, nil
}

// Config is the part of a daemon configuration that points it at the
// world: dns, and probe (loopback addresses allowed). It ends inside the
// probe mapping, so a caller may append more probe keys, indented by two
// spaces.
func (w *World) Config() string {
	return fmt.Sprintf("dns:\n  servers: [%q]\n  timeout: 1s\nprobe:\n  port: %s\n  ca_file: %q\n  allow_private: true\n",
		w.DNS.Addr(), w.Port, w.CAFile)
}

// Close stops the world.
func (w *World) Close() {
	w.DNS.Close()
	w.MX.Close()
}
