package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tlspolicyd/tlspolicyd/internal/benchworld"
)

// startWorld starts the fake internet the daemon probes when lookups go
// through the probe cache (-upgrade encrypt): every domain of the key mix
// has an MX that verifies, so the daemon probes each once (MTA-STS finds
// no record) and then answers from its cache, as a daemon with the shipped
// rules.yaml answers the destinations it knows.
func startWorld(dir string) (*benchworld.World, error) {
	var domains []string
	for _, k := range keys {
		if !strings.HasPrefix(k, "[") { // a next hop of its own: no MX lookup
			domains = append(domains, k)
		}
	}
	return benchworld.Start(dir, domains)
}

// probed makes the daemon at addr probe every domain of the key mix and
// waits until it has: the MX has seen a session (the domains share their
// MX host, whose one result answers them all) and a key with no rule
// answers what the probe showed. The warm-up before each measured window
// lets the other domains' probes, which share that result, finish.
func probed(ctx context.Context, w *benchworld.World, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := answers(ctx, addr); err != nil { // the first lookups start the probes
		return err
	}
	if _, err := w.MX.WaitSessions(ctx, 1); err != nil {
		return fmt.Errorf("waiting for the daemon to probe the MX host of the domains: %w", err)
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
