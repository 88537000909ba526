// Package acceptance drives the built tlspolicyd binary with the real peers
// a postmaster's mail system uses: Postfix's postmap(1) over
// socketmap_table(5) (inet and unix sockets) and tcp_table(5); private
// Postfix instances whose smtp(8) client delivers through the daemon's
// policy maps (chrooted too, and resolving MX hosts and DANE records in
// the fake DNS) and whose smtpd(8) asks its policy delegation service; and Exim 4.96 (expansion tests, -bh sessions and real
// deliveries) through the daemon's ${readsocket} line protocol. Fake MX
// servers with certificates minted in the test, a fake DNS server and a
// STARTTLS-stripping proxy stand in for the internet; everything listens
// on 127.0.0.0/8. Raw connections check the wire behaviour the real peers
// cannot show (malformed and oversized requests, connection reuse), and
// signals check reload (SIGHUP), shutdown (SIGTERM, SIGINT) and restarts.
// promtool checks and unit-tests the shipped alerting rules, and a scrape of
// the daemon checks that every metric the rules and the Grafana dashboard
// name exists. What a postmaster sees is checked too: the status page, the
// JSON API, the decision history, the report, the logs, the HTTP token, and
// the status page's JavaScript in headless Chromium (driven with chromedp).
//
// The daemon is built with the race detector (go build -race; not for
// benchmarks), and a race report in a daemon's log or a command's output
// fails the test that ran it.
//
// The tests need Postfix, Exim, promtool and Chromium (.ci/install-deps
// installs them); without them they fail, rather than skip, and say what to
// run. The package has no non-test code besides this documentation.
package acceptance
