// Package acceptance drives the built tlspolicyd binary with the real
// Postfix postmap(1), as a postmaster's Postfix would: it builds the daemon
// once, starts it on loopback ports with a configuration written by each
// test, and asks it through socketmap_table(5) (inet and unix sockets) and
// tcp_table(5). Raw connections check the wire behaviour Postfix cannot
// show (malformed and oversized requests, connection reuse), and the
// signals check reload (SIGHUP) and shutdown (SIGTERM, SIGINT).
//
// The tests need Postfix's postmap on PATH or in /usr/sbin; without it they
// fail and say to run .ci/install-deps. The package has no non-test code
// besides this documentation.
package acceptance
