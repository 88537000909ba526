// Package dnsclient is the daemon's one DNS client: the prober's MX and
// address lookups, MTA-STS discovery and DANE's validated lookups all go
// through a Client, which asks the configured recursive resolvers directly
// (github.com/miekg/dns), never the system resolver, so that the servers an
// operator configures are the only ones asked.
//
// It follows RFC 1035 for messages, with an EDNS0 buffer (RFC 6891) and a
// retry over TCP when a UDP answer is truncated. An answer whose question
// is not the one asked is refused, as a spoofed or misdirected answer would
// be. CNAME chains are followed within an answer and, when a resolver
// stops at a CNAME, with a new query for its target, at most 8 links in
// all, so that a hostile zone cannot make a lookup loop. The rcode of an
// answer that follows a chain speaks of its last name (RFC 6604), so
// NXDOMAIN there means that the chain's target does not exist.
//
// With Client.DNSSEC set, queries set the DO bit (RFC 4035 section 3.2.1)
// and the AD bit (RFC 6840 section 5.7), so that a validating resolver
// validates and says so in the AD bit of its answer; a lookup is secure
// only if every answer on its CNAME chain had the AD bit. The client does
// not validate DNSSEC itself: the AD bit means something only from a
// resolver on a path nobody can tamper with, which AllLoopback checks.
//
// Lookup is the general lookup (records, owner name after CNAMEs, secure,
// NXDOMAIN); LookupMX (with the null MX of RFC 7505 kept as host "."),
// LookupAddrs and LookupTXT are what the prober and MTA-STS need, and
// report a name that does not exist as an error wrapping ErrNXDomain.
// IsPublic says which addresses the daemon may connect to at all.
package dnsclient
