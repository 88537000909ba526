// Package postfixlint checks that a Postfix configuration asks tlspolicyd
// what the rules say it should be asked. A rule for a destination only
// protects mail if Postfix looks up that destination's key in the daemon's
// map: a transport_maps entry, a relayhost or a sender-dependent route
// sends the mail to another next hop, and Postfix then asks for that next
// hop's key (postconf(5) default_transport: "In order of decreasing
// precedence, the nexthop destination is taken from
// $sender_dependent_default_transport_maps, $default_transport,
// $sender_dependent_relayhost_maps, $relayhost, or from the recipient
// domain", overruled by transport(5)). The key each next hop produces is
// the one docs/interface.md lists.
//
// Read learns the configuration as `postconf -c DIR` sees it: main.cf
// parameters with $name expanded (postconf -x), master.cf services
// (postconf -M) and their -o overrides (postconf -P). Lookup tables are
// read from their source text (hash:, btree:, lmdb:, cdb:, dbm:, sdbm:,
// texthash:) where it exists, else asked with `postmap -q`; tables that
// point at the daemon itself are not asked.
//
// Lint compares them with the compiled rules and reports findings that
// each name both sides, the rules file's line and the Postfix setting or
// table line, and say what to do:
//
//   - a destination rule whose mail Postfix sends to a next hop that gets a
//     weaker floor (transport_maps, default_transport, relayhost and the
//     sender-dependent maps), with the rule to write for that next hop;
//   - a smtp_tls_policy_maps (main.cf, or a master.cf -o override) that does
//     not point at the daemon's listeners, uses a map name the daemon does
//     not answer there, or lists other tables before the daemon's (they
//     answer first) or after it (never consulted: the daemon answers every
//     next hop);
//   - a sender class without its smtp-CLASS transport, without the class
//     map as that transport's policy map, without the sender.transport map
//     that routes the class's mail to it, or whose mail a transport_maps
//     entry sends through another transport at a weaker floor;
//   - a postfix_version that differs from the installed mail_version, with
//     the policy attributes that the difference adds or removes.
//
// Findings are warnings: the daemon's configuration is valid either way.
package postfixlint
