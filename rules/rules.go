package rules

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Map names with a fixed meaning; every other map name is a sender class
// (or unknown). Class names may not take them, so they live with the rules.
const (
	// MapTLSPolicy answers smtp_tls_policy_maps for the default class.
	MapTLSPolicy = "tlspolicy"
	// MapTransport answers transport_maps: the fallback route of a
	// destination that cannot meet its level.
	MapTransport = "transport"
	// MapSenderTransport answers sender_dependent_default_transport_maps:
	// the class transport ("smtp-CLASS:") of a class's senders. Its name
	// has a dot, which no class name can have, so it never clashes.
	MapSenderTransport = "sender.transport"
)

// ClassTransport is the master.cf transport that carries a class's mail:
// an smtp(8) whose smtp_tls_policy_maps is the class's socketmap.
func ClassTransport(class string) string { return "smtp-" + class }

// Upgrade caps how far the daemon's own evidence (probes, pins) may raise a
// destination above its floor.
type Upgrade uint8

const (
	UpgradeNone Upgrade = iota
	UpgradeEncrypt
	UpgradeVerify
)

func (u Upgrade) String() string {
	return [...]string{"none", "encrypt", "verify"}[u]
}

// Cap is the highest level the upgrade allows evidence to give.
func (u Upgrade) Cap() Level {
	return [...]Level{LevelUnset, LevelEncrypt, LevelVerify}[u]
}

func parseUpgrade(s string) (Upgrade, error) {
	switch strings.ToLower(s) {
	case "none":
		return UpgradeNone, nil
	case "encrypt":
		return UpgradeEncrypt, nil
	case "verify":
		return UpgradeVerify, nil
	}
	return 0, fmt.Errorf("unknown upgrade %q (write none, encrypt or verify)", s)
}

// OnFail is what happens to mail that needs a level its destination cannot
// meet (acted on at RCPT time by the policy delegation server).
type OnFail uint8

const (
	OnFailUnset OnFail = iota
	OnFailReject
	OnFailDefer
	OnFailDiscard
	OnFailHold
	OnFailFallback
)

var onFailNames = [...]string{"", "reject", "defer", "discard", "hold", "fallback"}

func (o OnFail) String() string { return onFailNames[o] }

func parseOnFail(s string) (OnFail, error) {
	for i, n := range onFailNames {
		if i > 0 && n == strings.ToLower(s) {
			return OnFail(i), nil
		}
	}
	return 0, fmt.Errorf("unknown on_fail %q (write reject, defer, discard, hold or fallback)", s)
}

// Rule is a compiled destination rule (or the defaults, Index -1). A rule
// written with one pattern is its own entry in the lookup maps. A rule with
// a list or a match_file has one entry per pattern: a Rule like it, whose
// Match, File and Line are the pattern's, so that whatever cites the rule a
// lookup matched (query, history, logs, the API) cites that pattern's line.
type Rule struct {
	Index int // position in destinations; -1 for the defaults
	// Match is the pattern as written; for a rule with a list, the list
	// as "[a, b]"; empty for a rule with a match_file.
	Match     string
	MatchFile string // the match_file as written, or ""
	// File and Line are where the rule is written, for "which rule
	// decided": the configuration and the line its entry starts on; for
	// an entry of a list, the pattern's line; for an entry of a match
	// file, that file (its path from the working directory) and line.
	File    string
	Line    int
	Level   Level
	Upgrade Upgrade
	// UpgradeLine is the line of the upgrade setting in force for the
	// rule: its own, else the defaults' (which a rule without one
	// inherits); 0 when neither is written and the built-in default
	// holds. It says where to change what caps probes and pins.
	UpgradeLine int
	OnFail      OnFail
	Fallback    string // "transport:nexthop", or empty
	MTASTS      bool   // published MTA-STS policies apply
	DANE        bool   // published TLSA records apply

	rule     *Rule   // for an entry of a list or match file: its rule
	patterns []*Rule // the entries lookups can return for this rule

	// matched is set by the first lookup the rule answers, so that the
	// status page can list rules that never matched since the load. Set
	// once and then only read, it costs lookups no contention.
	matched atomic.Bool
}

// entry makes the entry of one pattern of the rule r, once r's settings
// are complete.
func (r *Rule) entry(pattern, file string, line int) *Rule {
	return &Rule{
		Index: r.Index, Match: pattern, MatchFile: r.MatchFile, File: file, Line: line,
		Level: r.Level, Upgrade: r.Upgrade, UpgradeLine: r.UpgradeLine, OnFail: r.OnFail, Fallback: r.Fallback, MTASTS: r.MTASTS, DANE: r.DANE,
		rule: r,
	}
}

// head is the rule an entry belongs to (the rule itself for a rule of one
// pattern, and for the defaults).
func (r *Rule) head() *Rule {
	if r.rule != nil {
		return r.rule
	}
	return r
}

// Patterns are the entries that lookups can return for the rule, one per
// pattern in file order; a pattern matched already by an earlier one is
// not among them.
func (r *Rule) Patterns() []*Rule { return r.head().patterns }

// MarkMatched records that the rule answered a lookup.
func (r *Rule) MarkMatched() {
	if h := r.head(); !h.matched.Load() {
		h.matched.Store(true)
	}
}

// Matched reports whether the rule answered a lookup since it was loaded.
func (r *Rule) Matched() bool { return r.head().matched.Load() }

// Ref is where the rule is written, "FILE:LINE", or "" for defaults that
// the file does not write.
func (r *Rule) Ref() string {
	if r.Line == 0 {
		return ""
	}
	return r.File + ":" + strconv.Itoa(r.Line)
}

// Describe says which rule this is, for query output and logs.
func (r *Rule) Describe() string {
	switch {
	case r.Index < 0:
		return "defaults (no destination rule matched)"
	case r.MatchFile != "" && r.rule != nil:
		return fmt.Sprintf("%s (match_file of destinations[%d] at %s) match %q", r.Ref(), r.Index, r.rule.Ref(), r.Match)
	case r.MatchFile != "":
		return fmt.Sprintf("%s destinations[%d] match_file %q", r.Ref(), r.Index, r.MatchFile)
	}
	return fmt.Sprintf("%s destinations[%d] match %q", r.Ref(), r.Index, r.Match)
}

// Floor is the level the rule sets for a class's mail (nil: the default
// class): the rule's level, raised to meet the class level too.
func (r *Rule) Floor(c *Class) Level {
	if c != nil {
		return Both(r.Level, c.Level)
	}
	return r.Level
}

// Class is a compiled sender class.
type Class struct {
	Name     string
	Line     int
	Level    Level
	OnFail   OnFail
	Fallback string
	Message  string
}

// Settings are the typed non-rule settings of a configuration.
type Settings struct {
	Listen     ListenConfig
	SocketMode os.FileMode

	// MaxConnections and IdleTimeout bound each protocol listener's
	// connections (listen.max_connections, listen.idle_timeout).
	MaxConnections int
	IdleTimeout    time.Duration

	DNSServers []string
	DNSTimeout time.Duration
	// DNSMinTTL is the shortest time a published record is kept before
	// it is read again, whatever its TTL says; probe.ttl is the longest.
	DNSMinTTL    time.Duration
	ProbePort    int
	ProbeHelo    string
	ProbeTimeout time.Duration
	ProbeTTL     time.Duration
	ProbeNegTTL  time.Duration
	ProbeWait    time.Duration
	ProbeCAFile  string
	AllowPrivate bool
	// ProbePerAddress bounds the probes talking to one MX address at once.
	ProbePerAddress int
	StatePath       string
	PinTTL          time.Duration
	HistoryTTL      time.Duration // decision history is kept this long
	// Redis is the Redis a fleet shares state through (state.redis);
	// Enabled() is false for a daemon on its own.
	Redis RedisSettings
	// HTTPToken is the bearer token listen.http requires (from
	// http.auth_file), or "" for none.
	HTTPToken      string
	LogLevel       slog.Level
	LogFormat      string // "text" or "json"
	LogDecisions   DecisionLog
	MTASTSEnabled  bool
	MTASTSCAFile   string
	DANEEnabled    bool
	PostfixVersion Version
	// MinimumTLS is the least TLS version that counts as good enough, as
	// Postfix names it ("TLSv1.2"); MinTLSVersion is the same as a
	// crypto/tls version number.
	MinimumTLS    string
	MinTLSVersion uint16
}

// RedisSettings are state.redis, validated, with the password read.
type RedisSettings struct {
	Addrs      []string
	MasterName string
	Username   string
	Password   string
	TLS        bool
	KeyPrefix  string
}

// Enabled reports whether the daemon is part of a fleet.
func (r RedisSettings) Enabled() bool { return len(r.Addrs) > 0 }

// DecisionLog says which answers the daemon logs as decision records.
type DecisionLog uint8

const (
	DecisionsNone    DecisionLog = iota // none
	DecisionsChanges                    // the first answer for a destination and map, and every change
	DecisionsAll                        // every lookup
)

var decisionLogNames = [...]string{"none", "changes", "all"}

func (d DecisionLog) String() string { return decisionLogNames[d] }

// Rules is a validated, compiled configuration: immutable once built, so
// the engine can swap it atomically on reload and readers need no lock.
type Rules struct {
	File     string
	Settings Settings
	Defaults *Rule
	Rules    []*Rule
	Classes  []*Class
	// Warnings are valid settings that probably do not do what was meant;
	// `check` prints them and the daemon logs them.
	Warnings ConfigErrors

	exact  map[string]*Rule // "example.org"
	parent map[string]*Rule // "example.org" for a ".example.org" rule
	// parentLabels has bit n set when a .parent rule's domain has n labels
	// (63 or more share bit 63), so that a lookup skips the parents no
	// rule can name.
	parentLabels uint64
	verbatim     map[string]*Rule // "[host]:port", "[host]", "host:port"
	senders      senderIndex

	// policies holds the rendered Postfix policy for each level, prepared
	// once so that a lookup answers without formatting or allocating.
	policies [LevelDaneOnly + 1]string

	serve serveFacts
}

// PolicyText is the Postfix TLS policy that carries level l, e.g.
// "encrypt protocols=>=TLSv1.2".
func (rs *Rules) PolicyText(l Level) string { return rs.policies[l] }

// ClassFor returns the class of an envelope sender (nil: default class).
func (rs *Rules) ClassFor(sender string) *Class { return rs.senders.classFor(sender) }

// Class finds a class by its map name (nil: no such class).
func (rs *Rules) Class(name string) *Class {
	for _, c := range rs.Classes { // a handful of classes: a scan beats a map
		if c.Name == name {
			return c
		}
	}
	return nil
}

// WantsPublished reports whether a published-policy source applies to a
// destination: enabled in the settings and not opted out by its rule.
// MTA-STS applies to recipient domains only, not to verbatim next hops.
func (rs *Rules) WantsPublished(r *Rule, kind KeyKind) bool {
	s := rs.Settings
	return (s.DANEEnabled && r.DANE) || (s.MTASTSEnabled && r.MTASTS && kind == KeyDomain)
}
