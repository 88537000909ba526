// Package tlsprobe finds out how well a mail destination does TLS: it
// resolves the destination's MX hosts (RFC 5321 section 5.1, including the
// implicit MX and the RFC 7505 null MX), opens an SMTP session with each,
// asks for STARTTLS (RFC 3207), completes the handshake and then checks the
// certificate chain and the host name itself (RFC 6125), recording a typed
// cause for anything that fell short.
//
// A Cache keeps results for their TTL, shares one probe among concurrent
// requests for a destination, bounds how many probes run at once, and
// refreshes busy destinations in the background before they expire.
//
// The package knows nothing of Postfix: it reports capabilities (none,
// encrypt, verify) and causes; the policy engine turns them into answers.
package tlsprobe
