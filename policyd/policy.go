package policyd

import (
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
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

	exact    map[string]*Rule // "example.org"
	parent   map[string]*Rule // "example.org" for a ".example.org" rule
	verbatim map[string]*Rule // "[host]:port", "[host]", "host:port"
	senders  senderIndex

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

// maxProbeWait bounds probe.wait: Postfix gives a table lookup 100 s
// before it fails, and a waiting lookup holds up a delivery process.
const maxProbeWait = 60 * time.Second

// compiler collects every problem of one file with its line.
type compiler struct {
	file string
	root *yaml.Node
	errs ConfigErrors
}

func (c *compiler) errorf(path []any, format string, args ...any) {
	c.errs = append(c.errs, ConfigError{File: c.file, Line: lineOf(c.root, path...), Msg: fmt.Sprintf(format, args...)})
}

func (c *compiler) duration(d *time.Duration, s string, allowZero bool, path ...any) {
	v, err := time.ParseDuration(s)
	switch {
	case err != nil:
		c.errorf(path, "%s: invalid duration %q (write e.g. 500ms, 30s, 10m, 6h)", pathString(path), s)
	case v < 0 || (v == 0 && !allowZero):
		c.errorf(path, "%s: duration must be greater than zero, got %q", pathString(path), s)
	default:
		*d = v
	}
}

func pathString(path []any) string {
	var b strings.Builder
	for _, p := range path {
		switch p := p.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(p)
		case int:
			fmt.Fprintf(&b, "[%d]", p)
		}
	}
	return b.String()
}

// Compile validates cfg and builds the Policy. root is the parsed YAML tree
// (nil for an empty file), used only to name lines in errors.
func Compile(file string, cfg Config, root *yaml.Node) (*Policy, error) {
	c := &compiler{file: file, root: root}
	p := &Policy{
		File:     file,
		exact:    make(map[string]*Rule),
		parent:   make(map[string]*Rule),
		verbatim: make(map[string]*Rule),
	}
	c.settings(&p.Settings, cfg)
	c.defaults(p, cfg)
	c.destinations(p, cfg)
	c.classes(p, cfg)
	if len(c.errs) > 0 {
		sortErrors(c.errs)
		return nil, c.errs
	}
	for l := LevelNone; l <= LevelDaneOnly; l++ {
		p.answers[l] = Answer{Status: StatusOK, Text: renderPolicy(l, p.Settings.MinimumTLS, p.Settings.PostfixVersion)}
	}
	return p, nil
}

func (c *compiler) settings(s *Settings, cfg Config) {
	s.Listen = cfg.Listen
	seen := map[string]string{}
	for _, l := range []struct{ key, addr string }{
		{"socketmap", cfg.Listen.Socketmap}, {"tcptable", cfg.Listen.TCPTable},
		{"policy", cfg.Listen.Policy}, {"exim", cfg.Listen.Exim}, {"http", cfg.Listen.HTTP},
	} {
		if l.addr == "" {
			continue
		}
		if err := checkListenAddr(l.addr); err != nil {
			c.errorf([]any{"listen", l.key}, "listen.%s: %v", l.key, err)
		} else if other, dup := seen[l.addr]; dup && !strings.HasSuffix(l.addr, ":0") {
			c.errorf([]any{"listen", l.key}, "listen.%s: %s is already used by listen.%s", l.key, l.addr, other)
		}
		seen[l.addr] = l.key
	}
	if mode, err := strconv.ParseUint(cfg.Listen.SocketMode, 8, 32); err != nil || mode > 0o777 {
		c.errorf([]any{"listen", "socket_mode"}, "listen.socket_mode: %q is not an octal file mode (write e.g. \"0666\" or \"0660\")", cfg.Listen.SocketMode)
	} else {
		s.SocketMode = os.FileMode(mode)
	}

	for i, srv := range cfg.DNS.Servers {
		addr, err := normalizeDNSServer(srv)
		if err != nil {
			c.errorf([]any{"dns", "servers", i}, "dns.servers[%d]: %v", i, err)
			continue
		}
		s.DNSServers = append(s.DNSServers, addr)
	}
	c.duration(&s.DNSTimeout, cfg.DNS.Timeout, false, "dns", "timeout")

	if cfg.Probe.Port < 1 || cfg.Probe.Port > 65535 {
		c.errorf([]any{"probe", "port"}, "probe.port: %d is not a port from 1 to 65535 (SMTP is 25)", cfg.Probe.Port)
	}
	s.ProbePort = cfg.Probe.Port
	if cfg.Probe.Helo != "" {
		if _, err := normalizeName(cfg.Probe.Helo); err != nil || strings.ContainsAny(cfg.Probe.Helo, ":[]") {
			c.errorf([]any{"probe", "helo"}, "probe.helo: %q is not a host name (write the fully qualified name of this machine, or leave it empty)", cfg.Probe.Helo)
		}
	}
	s.ProbeHelo = cfg.Probe.Helo
	c.duration(&s.ProbeTimeout, cfg.Probe.Timeout, false, "probe", "timeout")
	c.duration(&s.ProbeTTL, cfg.Probe.TTL, false, "probe", "ttl")
	c.duration(&s.ProbeNegTTL, cfg.Probe.NegativeTTL, false, "probe", "negative_ttl")
	c.duration(&s.ProbeWait, cfg.Probe.Wait, true, "probe", "wait")
	if s.ProbeWait > maxProbeWait {
		c.errorf([]any{"probe", "wait"}, "probe.wait: %s is too long: a lookup blocks the Postfix process that asked (write at most %s; 5s is typical)", s.ProbeWait, maxProbeWait)
	}
	c.caFile(cfg.Probe.CAFile, "probe", "ca_file")
	s.ProbeCAFile = cfg.Probe.CAFile
	s.AllowPrivate = cfg.Probe.AllowPrivate

	if cfg.State.Path == "" {
		c.errorf([]any{"state", "path"}, "state.path: must name a file (e.g. /var/lib/tlspolicyd/state.db)")
	}
	s.StatePath = cfg.State.Path
	c.duration(&s.PinTTL, cfg.State.PinTTL, false, "state", "pin_ttl")

	s.MTASTSEnabled = cfg.MTASTS.Enabled
	c.caFile(cfg.MTASTS.CAFile, "mtasts", "ca_file")
	s.MTASTSCAFile = cfg.MTASTS.CAFile

	s.DANEEnabled = cfg.DANE.Enabled
	if s.DANEEnabled && !allLoopback(s.DNSServers) {
		c.errorf([]any{"dane", "enabled"}, "dane.enabled: DANE needs a local validating resolver: set dns.servers to loopback addresses only (e.g. [\"127.0.0.1:53\"]), as Postfix requires")
	}

	v, err := parseVersion(cfg.PostfixVersion)
	if err != nil {
		c.errorf([]any{"postfix_version"}, "%v", err)
	}
	s.PostfixVersion = v

	s.MinimumTLS = cfg.MinimumTLS
	if !contains(tlsVersions, cfg.MinimumTLS) {
		c.errorf([]any{"minimum_tls"}, "minimum_tls: %q is not a TLS version (write one of %s)", cfg.MinimumTLS, strings.Join(tlsVersions, ", "))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkListenAddr accepts "host:port" with a numeric port, and "unix:/path".
func checkListenAddr(addr string) error {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if !strings.HasPrefix(path, "/") {
			return fmt.Errorf("%q: a unix socket needs an absolute path (write unix:/run/tlspolicyd/socketmap.sock)", addr)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not an address (write host:port like 127.0.0.1:10028, or unix:/path)", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if host != "" && net.ParseIP(host) == nil {
		if _, err := normalizeName(host); err != nil {
			return fmt.Errorf("%q: %q is neither an IP address nor a host name", addr, host)
		}
	}
	return nil
}

// normalizeDNSServer accepts "ip" or "ip:port" and returns "ip:port".
func normalizeDNSServer(s string) (string, error) {
	if ip := net.ParseIP(strings.Trim(s, "[]")); ip != nil {
		return net.JoinHostPort(ip.String(), "53"), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || net.ParseIP(host) == nil {
		return "", fmt.Errorf("%q is not a resolver address (write an IP address and port, e.g. 127.0.0.1:53)", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
	}
	return s, nil
}

func allLoopback(servers []string) bool {
	if len(servers) == 0 {
		return false
	}
	for _, s := range servers {
		host, _, _ := net.SplitHostPort(s)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// caFile checks that a trust-anchor file, when given, holds at least one
// PEM certificate: a typo here would otherwise surface only as failed
// verifications hours later.
func (c *compiler) caFile(path string, keys ...any) {
	if path == "" {
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		c.errorf(keys, "%s: %v", pathString(keys), err)
		return
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		c.errorf(keys, "%s: %s holds no PEM certificate", pathString(keys), path)
	}
}

func (c *compiler) level(s string, path ...any) Level {
	l, err := ParseLevel(s)
	if err != nil {
		c.errorf(path, "%s: %v", pathString(path), err)
	}
	return l
}

func (c *compiler) upgrade(s string, path ...any) Upgrade {
	u, err := parseUpgrade(s)
	if err != nil {
		c.errorf(path, "%s: %v", pathString(path), err)
	}
	return u
}

func (c *compiler) defaults(p *Policy, cfg Config) {
	p.Defaults = &Rule{
		Index:   -1,
		Line:    lineOf(c.root, "defaults"),
		Level:   c.level(cfg.Defaults.Level, "defaults", "level"),
		Upgrade: c.upgrade(cfg.Defaults.Upgrade, "defaults", "upgrade"),
		MTASTS:  true,
		DANE:    true,
	}
}

func (c *compiler) destinations(p *Policy, cfg Config) {
	for i, d := range cfg.Destinations {
		path := []any{"destinations", i}
		at := func(key string) []any { return append(path[:2:2], key) }
		r := &Rule{
			Index:    i,
			Match:    d.Match,
			Line:     lineOf(c.root, path...),
			Level:    p.Defaults.Level,
			Upgrade:  p.Defaults.Upgrade,
			Fallback: d.Fallback,
			MTASTS:   d.MTASTS == nil || *d.MTASTS,
			DANE:     d.DANE == nil || *d.DANE,
		}
		if d.Level != "" {
			r.Level = c.level(d.Level, at("level")...)
		}
		if d.Upgrade != "" {
			r.Upgrade = c.upgrade(d.Upgrade, at("upgrade")...)
		}
		if d.OnFail != "" {
			r.OnFail = c.onFail(d.OnFail, at("on_fail")...)
		}
		c.fallback(r.OnFail, d.Fallback, path)
		c.index(p, r, at("match"))
		p.Rules = append(p.Rules, r)
	}
}

// index adds a rule to the lookup maps by the form of its pattern.
func (c *compiler) index(p *Policy, r *Rule, path []any) {
	if r.Match == "" {
		c.errorf(path, "%s: every destination rule needs a match (e.g. example.org, .example.org or \"[mx.example.org]:25\")", pathString(path[:2]))
		return
	}
	k, err := ParseKey(r.Match)
	if err != nil {
		c.errorf(path, "%s: %v (write example.org, .example.org, \"[host]\", \"[host]:port\" or host:port)", pathString(path), err)
		return
	}
	m := map[KeyKind]map[string]*Rule{KeyDomain: p.exact, KeyParent: p.parent, KeyVerbatim: p.verbatim}[k.Kind]
	if prev, dup := m[k.Name]; dup {
		c.errorf(path, "%s: %q is already matched by destinations[%d] (line %d); this rule could never apply", pathString(path), r.Match, prev.Index, prev.Line)
		return
	}
	m[k.Name] = r
}

func (c *compiler) onFail(s string, path ...any) OnFail {
	o, err := parseOnFail(s)
	if err != nil {
		c.errorf(path, "%s: %v", pathString(path), err)
	}
	return o
}

var transportRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*:\S+$`)

// fallback checks a "transport:nexthop" route and that on_fail: fallback
// has one.
func (c *compiler) fallback(o OnFail, fb string, path []any) {
	at := append(path[:len(path):len(path)], "fallback")
	switch {
	case fb != "" && !transportRE.MatchString(fb):
		c.errorf(at, "%s: %q is not a transport:nexthop route (write e.g. \"smtp:[gateway.example.org]:2525\")", pathString(at), fb)
	case fb == "" && o == OnFailFallback:
		c.errorf(append(path[:len(path):len(path)], "on_fail"), "%s: on_fail is fallback but no fallback route is set (add fallback: \"smtp:[gateway.example.org]:2525\")", pathString(path))
	}
}

// reservedMaps are socketmap names that a class may not take.
var reservedMaps = map[string]bool{"tlspolicy": true, "transport": true}

var classNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

const defaultClassMessage = "recipient domain cannot receive mail with the required TLS protection"

func (c *compiler) classes(p *Policy, cfg Config) {
	names := map[string]int{}
	p.senders = newSenderIndex()
	for i, cc := range cfg.Classes {
		path := []any{"classes", i}
		at := func(key string) []any { return append(path[:2:2], key) }
		cl := &Class{Name: cc.Name, Line: lineOf(c.root, path...), OnFail: OnFailReject, Fallback: cc.Fallback, Message: cc.Message}
		switch {
		case !classNameRE.MatchString(cc.Name):
			c.errorf(at("name"), "classes[%d].name: %q is not a class name (lower-case letters, digits, - and _; it becomes a socketmap name)", i, cc.Name)
		case reservedMaps[cc.Name]:
			c.errorf(at("name"), "classes[%d].name: %q is reserved for a built-in map; choose another name", i, cc.Name)
		default:
			if prev, dup := names[cc.Name]; dup {
				c.errorf(at("name"), "classes[%d].name: %q is already the name of classes[%d]", i, cc.Name, prev)
			}
			names[cc.Name] = i
		}
		if cc.Level == "" {
			c.errorf(at("level"), "classes[%d]: a class needs a level (e.g. level: verify)", i)
		} else {
			cl.Level = c.level(cc.Level, at("level")...)
		}
		if cc.OnFail != "" {
			cl.OnFail = c.onFail(cc.OnFail, at("on_fail")...)
		}
		c.fallback(cl.OnFail, cc.Fallback, path)
		if cl.Message == "" {
			cl.Message = defaultClassMessage
		} else if strings.ContainsAny(cl.Message, "\r\n") {
			c.errorf(at("message"), "classes[%d].message: must be one line (it becomes an SMTP reply text)", i)
		}
		if len(cc.Senders) == 0 {
			c.errorf(at("senders"), "classes[%d]: a class needs senders (e.g. senders: [\"@clinic.example.org\"])", i)
		}
		for j, s := range cc.Senders {
			sp := append(at("senders"), j)
			if err := p.senders.add(s, cl); err != nil {
				c.errorf(sp, "classes[%d].senders[%d]: %v", i, j, err)
			}
		}
		p.Classes = append(p.Classes, cl)
	}
}
