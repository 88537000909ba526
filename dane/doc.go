// Package dane finds out whether a mail destination is protected by DANE
// (RFC 7672, SMTP security via opportunistic DANE TLS; TLSA records as in
// RFC 6698 and RFC 7671): whether its DNSSEC-validated MX, address and TLSA
// records oblige an SMTP client to authenticate its servers, or at least to
// use TLS with them.
//
// Checker.Check looks up a domain's MX records, then for each MX host its
// address records and its TLSA records at "_25._tcp.HOST", and gives one
// Verdict for the domain, with what it found per host:
//
//	Verdict      when                                              Postfix level
//	DANEOnly     every MX host has a usable, validated TLSA RRset   dane-only
//	MixedDANE    some hosts have one, others none                   dane
//	EncryptOnly  TLSA records published, none usable                encrypt
//	NoDANE       no validated TLSA records apply                    (no change)
//	TempFail     a lookup failed (SERVFAIL, timeout)                (defer / floor)
//
// Checker.CheckHost does the same for a single host, as for Postfix's
// "[host]" next hops. Record.Usable says whether one TLSA record can serve
// SMTP (RFC 7672 section 3.1: DANE-TA and DANE-EE only, well-formed data).
//
// # Trust in DNSSEC
//
// The package does not validate DNSSEC itself. It asks a validating
// resolver through a dnsclient.Client with DNSSEC on, which sets the DO bit
// (RFC 4035 section 3.2.1) and the AD bit (RFC 6840 section 5.7), and
// believes the AD bit of its answers, which is only sound when the path to
// the resolver cannot be tampered with: a resolver on the same machine, as
// Postfix also requires of smtp_dns_support_level = dnssec. So a Checker
// trusts AD only when its Trusted field is set and all its servers are
// loopback addresses (dnsclient.AllLoopback); otherwise every check gives
// NoDANE with ErrUntrusted, and no query is made.
//
// A validating resolver reports a bogus answer (failed validation) as
// SERVFAIL (dnsclient.ErrServFail). Such failures, like timeouts
// (dnsclient.ErrTimeout), give TempFail, never NoDANE: an attacker who can
// break lookups must not be able to turn DANE off (RFC 7672 section 2.1.1).
//
// The package knows nothing else of Postfix: the policy engine turns
// verdicts into answers and decides how they combine with its rules.
package dane
