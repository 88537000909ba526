// Package rules is tlspolicyd's configuration: the YAML schema and its
// validation (every mistake reported with its FILE:LINE, unknown keys
// included), and the compiled, immutable Rules the daemon answers from:
// destination rules and their matching against the keys Postfix sends,
// TLS security levels and their order, sender classes, and the rendering
// of a level as a Postfix TLS policy.
//
// It does no network I/O and imports nothing of the daemon, so that the
// rules can be read, tested and reasoned about on their own; the only
// files it reads are those the configuration names (match files of
// patterns, trust anchors, the HTTP token), on every load. The keys and
// levels follow Postfix's smtp_tls_policy_maps (postconf(5), TLS_README);
// docs/interface.md lists the configuration keys and the key forms.
package rules
