// Package mtasts discovers, fetches, validates and caches the MTA-STS
// policies that mail domains publish (RFC 8461, SMTP MTA Strict Transport
// Security), so that the policy engine can tell Postfix which MX hosts a
// destination allows and that their certificates must verify.
//
// Discovery reads the TXT record at "_mta-sts.<domain>" (RFC 8461 section
// 3.1; ParseTXT). The policy itself is fetched over HTTPS from
// "https://mta-sts.<domain>/.well-known/mta-sts.txt" (section 3.3; Fetcher)
// and parsed strictly (section 3.2; ParsePolicy). A Cache keeps each
// domain's policy for its max_age, refetches only when the TXT id changes or
// a refresh is due, and keeps applying a cached policy while the domain's DNS
// or web server fails, as section 3.3 requires: that trust-on-first-use
// memory is what protects later deliveries from an attacker who strips the
// record or blocks the fetch.
//
// Everything that touches the network is injected: the DNS (Resolver, which
// dnsclient.Client implements against the configured servers, never the
// system resolver), the dialer and the clock. Addresses that are not public
// are refused unless allowed, with the same test as the prober
// (dnsclient.IsPublic), so a hostile domain cannot steer the daemon into the
// local network.
//
// The package knows nothing of Postfix beyond Policy.PostfixMatch, the
// "match=" list of a "secure" answer; the policy engine decides the answer.
package mtasts
