package policyd

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

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
	Index    int    // position in destinations; -1 for the defaults
	Match    string // the pattern as written
	Line     int    // line in the file, for "which rule decided"
	Level    Level
	Upgrade  Upgrade
	OnFail   OnFail
	Fallback string // "transport:nexthop", or empty
	MTASTS   bool   // published MTA-STS policies apply
	DANE     bool   // published TLSA records apply
}

// Describe says which rule this is, for query output and logs.
func (r *Rule) Describe(file string) string {
	if r.Index < 0 {
		return "defaults (no destination rule matched)"
	}
	return fmt.Sprintf("%s:%d destinations[%d] match %q", file, r.Line, r.Index, r.Match)
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
	Listen         ListenConfig
	SocketMode     os.FileMode
	DNSServers     []string
	DNSTimeout     time.Duration
	ProbePort      int
	ProbeHelo      string
	ProbeTimeout   time.Duration
	ProbeTTL       time.Duration
	ProbeNegTTL    time.Duration
	ProbeWait      time.Duration
	ProbeCAFile    string
	AllowPrivate   bool
	StatePath      string
	PinTTL         time.Duration
	MTASTSEnabled  bool
	MTASTSCAFile   string
	DANEEnabled    bool
	PostfixVersion Version
	MinimumTLS     string
}

// Policy is a validated, compiled configuration: immutable once built, so
// the engine can swap it atomically on reload and readers need no lock.
type Policy struct {
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

	// answers holds the rendered reply for each level, prepared once so
	// that a lookup answers without formatting or allocating.
	answers [LevelDaneOnly + 1]Answer
}

// Answer is the table reply that carries level l.
func (p *Policy) Answer(l Level) Answer { return p.answers[l] }

// Version is a Postfix release, major.minor, compared to decide which
// policy attributes it can parse.
type Version struct{ Major, Minor int }

func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

var versionRE = regexp.MustCompile(`^(\d{1,2})\.(\d{1,2})(?:\.\d{1,3})?$`)

func parseVersion(s string) (Version, error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return Version{}, fmt.Errorf("postfix_version %q is not a version like \"3.7\" (see postconf mail_version)", s)
	}
	maj, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	v := Version{maj, minor}
	if !v.AtLeast(2, 11) {
		return v, fmt.Errorf("postfix_version %s is too old: socketmap policy tables need Postfix 2.11 or later", v)
	}
	return v, nil
}

var tlsVersions = []string{"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}

// renderPolicy writes level l as a Postfix TLS policy. Levels that require
// TLS carry the protocol floor; Postfix before 3.6 cannot parse ">=", so it
// gets the equivalent exclusion list.
func renderPolicy(l Level, minTLS string, v Version) string {
	if !l.Encrypted() && l != LevelDane {
		return l.String()
	}
	if v.AtLeast(3, 6) {
		return l.String() + " protocols=>=" + minTLS
	}
	excluded := []string{"!SSLv2", "!SSLv3"}
	for _, t := range tlsVersions {
		if t == minTLS {
			break
		}
		excluded = append(excluded, "!"+t)
	}
	return l.String() + " protocols=" + strings.Join(excluded, ":")
}
