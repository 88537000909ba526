// Package policyd is the tlspolicyd daemon: the YAML rules and their
// validation, destination matching, the decision engine that turns rules
// (and, later, probe evidence) into a TLS security level, and the wire
// protocols that carry those decisions to a mail server.
//
// The wire protocols follow Postfix's documentation: socketmap_table(5)
// (netstrings, one connection carrying many lookups) and tcp_table(5)
// (one "get KEY" line per lookup, %XX encoding). Every protocol runs on one
// connection core (Server) that bounds connections, deadlines every read and
// write, recovers from panics per connection and drains gracefully.
//
// Replies never weaken a destination below its configured floor: when the
// engine cannot determine even the floor it answers a temporary failure,
// which makes Postfix defer the mail rather than send it unprotected.
package policyd
