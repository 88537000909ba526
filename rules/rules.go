package rules

import (
	"fmt"
	"log/slog"
	"os"
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

// Rule is a compiled destination rule (or the defaults, Index -1).
type Rule struct {
	Index   int    // position in destinations; -1 for the defaults
	Match   string // the pattern as written
	Line    int    // line in the file, for "which rule decided"
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

	// matched is set by the first lookup the rule answers, so that the
	// status page can list rules that never matched since the load. Set
	// once and then only read, it costs lookups no contention.
	matched atomic.Bool
}

// MarkMatched records that the rule answered a lookup.
func (r *Rule) MarkMatched() {
	if !r.matched.Load() {
		r.matched.Store(true)
	}
}

// Matched reports whether the rule answered a lookup since it was loaded.
func (r *Rule) Matched() bool { return r.matched.Load() }

// Describe says which rule this is, for query output and logs.
func (r *Rule) Describe(file string) string {
	if r.Index < 0 {
		return "defaults (no destination rule matched)"
	}
	return fmt.Sprintf("%s:%d destinations[%d] match %q", file, r.Line, r.Index, r.Match)
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
	StatePath    string
	PinTTL       time.Duration
	HistoryTTL   time.Duration // decision history is kept this long
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
