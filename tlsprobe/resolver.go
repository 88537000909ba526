package tlsprobe

import (
	"context"
	"net/netip"

	"github.com/tlspolicyd/tlspolicyd/dnsclient"
)

// Resolver is the DNS the prober needs; *dnsclient.Client implements it.
// Tests give that a fake DNS server's address; the daemon gives it the
// configured servers.
type Resolver interface {
	// LookupMX returns the domain's MX records sorted by preference. An
	// empty list with a nil error means the domain exists but has no MX
	// (the implicit MX applies, RFC 5321 section 5.1); a domain that does
	// not exist is an error wrapping dnsclient.ErrNXDomain.
	LookupMX(ctx context.Context, domain string) ([]dnsclient.MX, error)
	// LookupAddrs returns the host's IPv4 and IPv6 addresses; a host that
	// does not exist is an error wrapping dnsclient.ErrNXDomain.
	LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error)
}
