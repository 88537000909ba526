// Package wire carries the daemon's answers to mail servers: one server
// core (Server, Conn) and one codec per protocol.
//
//   - socketmap.go: Postfix socketmap_table(5), netstrings "NAME KEY" in,
//     "OK value" / "NOTFOUND " / "TEMP why" / "PERM why" out, many lookups
//     per connection;
//   - tcptable.go: Postfix tcp_table(5), "get KEY" lines with %XX encoding,
//     answered from the default map;
//   - delegation.go: the Postfix SMTP access policy delegation protocol
//     (SMTPD_POLICY_README), attribute blocks in, "action=..." out;
//   - exim.go: one request line for Exim's ${readsocket}, one reply line,
//     then close.
//
// The server core bounds connections (a full listener closes an idle one,
// chosen per client in conntable.go, to admit a new one), puts a deadline
// on every read and write, recovers from a panic by closing only that
// connection, and drains gracefully (net/http's Serve, Close, Shutdown). A codec reads one bounded
// request, asks the TableLookup or RcptChecker it was built with (the
// daemon's engine), and writes the reply; bad input gets a reply when one
// can be framed and closes that connection only. The package knows nothing
// of rules or evidence: docs/interface.md describes the formats.
package wire
