package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/fakedns"
	"github.com/tlspolicyd/tlspolicyd/internal/fakemx"
	"github.com/tlspolicyd/tlspolicyd/internal/testca"
)

// world is what the daemon probes when lookups go through the probe cache
// (-upgrade encrypt): a fake DNS server that gives every domain of the key
// mix one MX host on 127.0.0.1, and a fake MX there that offers STARTTLS
// with a certificate from a CA of its own. The daemon probes each
// destination once (MTA-STS finds no record) and then answers from its
// cache, as a daemon with the shipped rules.yaml answers the destinations
// it knows.
type world struct {
	dns    *fakedns.Server
	mx     *fakemx.Server
	caFile string
	port   string // the MX's port: the daemon's probe.port
}

// mxHost is the one MX host of the world.
const mxHost = "mx.loadgen.test"

func startWorld(dir string) (*world, error) {
	ca, err := testca.New("loadgen CA")
	if err != nil {
		return nil, err
	}
	caFile, err := ca.WritePEM(dir)
	if err != nil {
		return nil, err
	}
	cert, err := ca.Leaf(testca.LeafOptions{DNSNames: []string{mxHost}})
	if err != nil {
		return nil, err
	}
	mx, err := fakemx.Start("127.0.0.1:0", fakemx.Options{Hostname: mxHost,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Timeout: time.Minute})
	if err != nil {
		return nil, err
	}
	dns, err := fakedns.Start("127.0.0.1:0")
	if err != nil {
		mx.Close()
		return nil, err
	}
	dns.AddA(mxHost, "127.0.0.1")
	for _, k := range keys {
		if strings.HasPrefix(k, "[") {
			continue // a next hop of its own: no MX lookup
		}
		dns.AddMX(strings.ToLower(k), 10, mxHost)
	}
	_, port, _ := net.SplitHostPort(mx.Addr())
	return &world{dns: dns, mx: mx, caFile: caFile, port: port}, nil
}

func (w *world) close() {
	w.dns.Close()
	w.mx.Close()
}

// probed makes the daemon at addr probe every domain of the key mix and
// waits until it has: the MX has seen a session per domain and a key with
// no rule answers what the probe showed.
func (w *world) probed(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := answers(ctx, addr); err != nil { // the first lookups start the probes
		return err
	}
	domains := map[string]bool{}
	for _, k := range keys {
		if !strings.HasPrefix(k, "[") {
			domains[strings.ToLower(k)] = true
		}
	}
	if _, err := w.mx.WaitSessions(ctx, len(domains)); err != nil {
		return fmt.Errorf("waiting for the daemon to probe %d domains: %w", len(domains), err)
	}
	for {
		got, err := answers(ctx, addr)
		if err != nil {
			return err
		}
		if strings.HasPrefix(got[noRule], "OK encrypt ") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s answers %q, not encrypt, after its probe: %w", keys[noRule], got[noRule], ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
