// Package policyd is the tlspolicyd daemon: the decision engine that turns
// the rules (package rules) and the evidence gathered in the background
// (probes of the destination's MX hosts by tlsprobe, MTA-STS policies,
// DANE TLSA records, and pins against STARTTLS stripping) into the TLS
// policy of a destination; the RCPT-time decisions for sender classes;
// and the assembly of the daemon: the state store, the wire listeners
// (package wire: socketmap, tcp_table, policy delegation, Exim), metrics
// and the admin HTTP endpoints.
//
// The data path: a wire codec reads one request and calls the Engine's
// LookupTable (or RcptAction); the engine matches the key against the
// rules in force, and only a destination whose answer evidence could
// raise goes on to the pins and the findings cache, which a miss makes
// probe (deduplicated, bounded), waiting at most probe.wait.
//
// Answers never weaken a destination below its configured floor: evidence
// only raises, and when the engine cannot determine even the floor it
// answers a temporary failure, which makes Postfix defer the mail rather
// than send it unprotected.
package policyd
