package dnsclient

import (
	"net"
	"net/netip"
)

// IsPublic reports whether the daemon may connect to a, an address that DNS
// gave for a destination (an MX host, an MTA-STS policy host): not
// loopback, private (RFC 1918, ULA), link-local, multicast, unspecified,
// CGNAT or otherwise reserved. An attacker who controls a domain's records
// must not steer the daemon into the local network.
func IsPublic(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() ||
		a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return false
	}
	for _, p := range reserved {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// reserved are the special-purpose ranges that netip.Addr has no method
// for.
var reserved = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), // CGNAT
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("100::/64"), // discard
}

// AllLoopback reports whether servers is not empty and every server is a
// loopback IP address with a port: the only resolvers whose AD bit can be
// believed, since nobody can tamper with the path to them (Postfix demands
// the same for DANE). A host name is refused: it could resolve anywhere.
func AllLoopback(servers []string) bool {
	if len(servers) == 0 {
		return false
	}
	for _, s := range servers {
		host, _, err := net.SplitHostPort(s)
		if err != nil {
			return false
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}
