package rules

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// maxProbeWait bounds probe.wait: Postfix gives a table lookup 100 s
// before it fails, and a waiting lookup holds up a delivery process.
const maxProbeWait = 60 * time.Second

// maxPerAddress bounds probe.per_address: more at once to one server is
// what a scanner does.
const maxPerAddress = 16

// compiler collects every problem of one file with its line.
type compiler struct {
	file     string
	root     *yaml.Node
	errs     ConfigErrors
	warnings ConfigErrors
	// refused holds the paths of values the decoder refused for their
	// type: they kept their defaults, and what follows from that is not
	// reported again.
	refused map[string]bool
	// read reads a match file (readMatchFile, or a test's).
	read func(path string) ([]byte, error)
	// duplicates counts the patterns matched already by earlier ones;
	// unlisted is the index in warnings of the one that stands for those
	// past maxDuplicateWarnings.
	duplicates int
	unlisted   int
}

// fallbackNexthop is the next hop of a "transport:nexthop" route.
func fallbackNexthop(route string) string {
	_, nexthop, _ := strings.Cut(route, ":")
	return nexthop
}

func (c *compiler) errorf(path []any, format string, args ...any) {
	if c.wasRefused(path) {
		return
	}
	c.errs = append(c.errs, ConfigError{File: c.file, Line: lineOf(c.root, path...), Msg: fmt.Sprintf(format, args...)})
}

// wasRefused reports whether the value at path, or one it is part of, was
// refused for its type (and so already reported).
func (c *compiler) wasRefused(path []any) bool {
	for i := len(path); i > 0 && len(c.refused) > 0; i-- {
		if c.refused[pathString(path[:i])] {
			return true
		}
	}
	return false
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

// Compile validates cfg and builds the Rules, naming the line of every
// problem it finds (not only the first). root is the parsed YAML tree (nil
// for an empty file), used to name lines in errors; a relative match_file
// is taken from file's folder.
func Compile(file string, cfg Config, root *yaml.Node) (*Rules, error) {
	c := &compiler{file: file, root: root, read: readMatchFile}
	p := c.compile(cfg)
	if len(c.errs) > 0 {
		sortErrors(c.errs)
		return nil, c.errs
	}
	return p, nil
}

// compile builds the Rules; they are valid if c.errs is empty after.
func (c *compiler) compile(cfg Config) *Rules {
	file, root := c.file, c.root
	p := &Rules{
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
		return nil
	}
	for l := LevelNone; l <= LevelDaneOnly; l++ {
		p.policies[l] = RenderPolicy(l, p.Settings.MinimumTLS, p.Settings.PostfixVersion)
	}
	sortErrors(c.warnings)
	p.Warnings = c.warnings
	p.serve = serveFacts{empty: root == nil, listenLine: lineOf(root, "listen"), statePathLine: lineOf(root, "state", "path")}
	return p
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
	c.connectionLimits(s, cfg.Listen)

	for i, srv := range cfg.DNS.Servers {
		addr, err := normalizeDNSServer(srv)
		if err != nil {
			c.errorf([]any{"dns", "servers", i}, "dns.servers[%d]: %v", i, err)
			continue
		}
		s.DNSServers = append(s.DNSServers, addr)
	}
	c.duration(&s.DNSTimeout, cfg.DNS.Timeout, false, "dns", "timeout")
	c.duration(&s.DNSMinTTL, cfg.DNS.MinTTL, false, "dns", "min_ttl")

	if cfg.Probe.Port < 1 || cfg.Probe.Port > 65535 {
		c.errorf([]any{"probe", "port"}, "probe.port: %d is not a port from 1 to 65535 (SMTP is 25)", cfg.Probe.Port)
	}
	s.ProbePort = cfg.Probe.Port
	if cfg.Probe.PerAddress < 1 || cfg.Probe.PerAddress > maxPerAddress {
		c.errorf([]any{"probe", "per_address"}, "probe.per_address: %d is not from 1 to %d (the probes talking to one mail server address at once; 2 is polite)", cfg.Probe.PerAddress, maxPerAddress)
	}
	s.ProbePerAddress = cfg.Probe.PerAddress
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
	c.duration(&s.HistoryTTL, cfg.State.History, false, "state", "history")
	c.redis(s, cfg.State.Redis)
	c.logSettings(s, cfg.Log)
	c.httpAuth(s, cfg)

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
	if s.MinTLSVersion = tlsVersion(cfg.MinimumTLS); s.MinTLSVersion == 0 {
		c.errorf([]any{"minimum_tls"}, "minimum_tls: %q is not a TLS version (write one of %s)", cfg.MinimumTLS, tlsVersionNames())
	}
}

// Bounds of the connection settings. More connections than maxConnections
// per listener is a typo more likely than a need (Postfix holds one per
// smtp process); an idle timeout under minIdleTimeout would close
// connections between the lookups of one delivery.
const (
	maxConnections = 100000
	minIdleTimeout = time.Second
)

// connectionLimits checks listen.max_connections and listen.idle_timeout.
func (c *compiler) connectionLimits(s *Settings, l ListenConfig) {
	if l.MaxConnections < 1 || l.MaxConnections > maxConnections {
		c.errorf([]any{"listen", "max_connections"}, "listen.max_connections: %d is not a number of connections from 1 to %d (write e.g. 1000, the default; each connection holds a file descriptor)", l.MaxConnections, maxConnections)
	}
	s.MaxConnections = l.MaxConnections
	c.duration(&s.IdleTimeout, l.IdleTimeout, false, "listen", "idle_timeout")
	if s.IdleTimeout > 0 && s.IdleTimeout < minIdleTimeout {
		c.errorf([]any{"listen", "idle_timeout"}, "listen.idle_timeout: %s is too short (write at least %s; 60s is the default, and Postfix closes its own idle connections after 10s)", s.IdleTimeout, minIdleTimeout)
	}
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

// allLoopback reports whether every resolver is a loopback address: the
// only resolvers whose DNSSEC verdict (the AD bit) can be believed, since
// nothing between them and the daemon can forge it.
func allLoopback(servers []string) bool {
	for _, s := range servers {
		ap, err := netip.ParseAddrPort(s)
		if err != nil || !ap.Addr().IsLoopback() {
			return false
		}
	}
	return len(servers) > 0
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

func (c *compiler) defaults(p *Rules, cfg Config) {
	p.Defaults = &Rule{
		Index:       -1,
		File:        c.file,
		Line:        lineOf(c.root, "defaults"),
		Level:       c.level(cfg.Defaults.Level, "defaults", "level"),
		Upgrade:     c.upgrade(cfg.Defaults.Upgrade, "defaults", "upgrade"),
		UpgradeLine: writtenLine(c.root, "defaults", "upgrade"),
		MTASTS:      true,
		DANE:        true,
	}
}

func (c *compiler) destinations(p *Rules, cfg Config) {
	for i, d := range cfg.Destinations {
		path := []any{"destinations", i}
		at := func(key string) []any { return append(path[:2:2], key) }
		r := &Rule{
			Index:       i,
			MatchFile:   d.MatchFile,
			File:        c.file,
			Line:        lineOf(c.root, path...),
			Level:       p.Defaults.Level,
			Upgrade:     p.Defaults.Upgrade,
			UpgradeLine: p.Defaults.UpgradeLine,
			Fallback:    d.Fallback,
			MTASTS:      d.MTASTS == nil || *d.MTASTS,
			DANE:        d.DANE == nil || *d.DANE,
		}
		if d.Level != "" {
			r.Level = c.level(d.Level, at("level")...)
		}
		if d.Upgrade != "" {
			r.Upgrade = c.upgrade(d.Upgrade, at("upgrade")...)
			r.UpgradeLine = writtenLine(c.root, at("upgrade")...)
		}
		if d.OnFail != "" {
			r.OnFail = c.onFail(d.OnFail, at("on_fail")...)
		}
		c.fallback(r.OnFail, d.Fallback, path)
		c.patterns(p, r, d, path)
		p.Rules = append(p.Rules, r)
	}
	c.unlistedDuplicates()
}

// patterns compiles a rule's match or match_file into the entries that
// lookups find, once the rule's other settings are known.
func (c *compiler) patterns(p *Rules, r *Rule, d DestinationRule, path []any) {
	match, file := append(path[:2:2], "match"), append(path[:2:2], "match_file")
	switch {
	case c.wasRefused(file):
		// Reported as a value of the wrong type already.
	case len(d.Match) > 0 && d.MatchFile != "":
		c.errorf(file, "%s: match and match_file exclude each other "+
			"(write the patterns of match into %s, or give them a rule of their own)", pathString(path), d.MatchFile)
	case d.MatchFile != "":
		c.matchFile(p, r, file)
	case len(d.Match) == 0 || len(d.Match) == 1 && d.Match[0] == "" && !c.isList(match):
		c.errorf(match, "%s: every destination rule needs a match (e.g. match: example.org, "+
			"match: [a.example, b.example] or match_file: partners.txt)", pathString(path))
	case len(d.Match) == 1 && !c.isList(match):
		// One pattern as a string: the rule is its own entry.
		r.Match = d.Match[0]
		c.index(p, r, match)
	default:
		r.Match = "[" + strings.Join(d.Match, ", ") + "]"
		for j, m := range d.Match {
			at := append(match[:3:3], j)
			c.index(p, r.entry(m, c.file, lineOf(c.root, at...)), at)
		}
	}
}

// index adds one pattern of a rule to the lookup maps by its form. path
// is where the pattern is in the configuration; nil for a match file's.
func (c *compiler) index(p *Rules, e *Rule, path []any) {
	if msg := wildcardMsg(e.Match); msg != "" {
		c.patternError(e, path, "%s", msg)
		return
	}
	k, err := ParseKey(e.Match)
	if err != nil {
		c.patternError(e, path, "%v (write example.org, .example.org, \"[host]\", \"[host]:port\" or host:port)", err)
		return
	}
	m := map[KeyKind]map[string]*Rule{KeyDomain: p.exact, KeyParent: p.parent, KeyVerbatim: p.verbatim}[k.Kind]
	if prev, dup := m[k.Name]; dup {
		c.duplicate(e, prev, path)
		return
	}
	owner := e.head()
	owner.patterns = append(owner.patterns, e)
	m[k.Name] = e
	if k.Kind == KeyParent {
		p.parentLabels |= labelBit(strings.Count(k.Name, ".") + 1)
	}
}

// patternError reports a bad pattern where it is written: at its path in
// the configuration, or at its line in a match file.
func (c *compiler) patternError(e *Rule, path []any, format string, args ...any) {
	if path != nil {
		c.errorf(path, "%s: "+format, append([]any{pathString(path)}, args...)...)
		return
	}
	c.errs = append(c.errs, c.fileError(e, fmt.Sprintf(format, args...)))
}

// fileError is a problem with pattern e of a match file, at its line in
// that file, listed after the line of the configuration that names it.
func (c *compiler) fileError(e *Rule, msg string) ConfigError {
	return ConfigError{File: e.File, Line: e.Line, Msg: msg, at: lineOf(c.root, "destinations", e.Index, "match_file")}
}

// isList reports whether the value at path is written as a YAML list.
func (c *compiler) isList(path []any) bool {
	return c.root != nil && nodeAt(c.root, path...).Kind == yaml.SequenceNode
}

// maxDuplicateWarnings bounds the warnings about patterns matched by an
// earlier one: a match file named twice would otherwise log one line per
// pattern on every reload.
const maxDuplicateWarnings = 20

// duplicate warns that pattern e is matched by prev already. It is no
// error: a partner list may well repeat a domain that an earlier rule
// names, and the first match wins as always.
func (c *compiler) duplicate(e, prev *Rule, path []any) {
	var w ConfigError
	var where string
	if path != nil {
		w, where = ConfigError{File: c.file, Line: lineOf(c.root, path...)}, pathString(path)
	} else {
		w, where = c.fileError(e, ""), fmt.Sprintf("destinations[%d]", e.Index)
	}
	switch c.duplicates++; {
	case c.duplicates <= maxDuplicateWarnings:
		w.Msg = fmt.Sprintf("%s: %q is matched already by %s (destinations[%d]), which comes first and wins; "+
			"this entry never applies (remove one of the two)", where, e.Match, prev.Ref(), prev.Index)
		c.warnings = append(c.warnings, w)
	case c.duplicates == maxDuplicateWarnings+1:
		w.Msg = where + ": " // completed by unlistedDuplicates
		c.unlisted = len(c.warnings)
		c.warnings = append(c.warnings, w)
	}
}

// unlistedDuplicates completes the warning that stands for the duplicates
// past maxDuplicateWarnings, once they are all counted.
func (c *compiler) unlistedDuplicates() {
	if c.duplicates > maxDuplicateWarnings {
		c.warnings[c.unlisted].Msg += fmt.Sprintf("this pattern and %d more after it are matched already by earlier ones, "+
			"and not listed one by one (remove the duplicates; the first match wins)", c.duplicates-maxDuplicateWarnings-1)
	}
}

// wildcardMsg says why a pattern with "*" is refused and what to write, or
// returns "". Postfix's tables have no wildcards, and "*.example.com"
// would otherwise be taken as a domain no key can ever be.
func wildcardMsg(pattern string) string {
	i := strings.LastIndexByte(pattern, '*')
	switch {
	case i < 0:
		return ""
	case strings.TrimSpace(pattern) == "*":
		return fmt.Sprintf("%q: there are no wildcards; to set the floor of every destination that no rule names, set defaults.level", pattern)
	}
	if k, err := ParseKey(pattern[1:]); i == 0 && strings.HasPrefix(pattern, "*.") && err == nil && k.Kind == KeyParent {
		return fmt.Sprintf("%q: \"*\" is no wildcard here; write %q for any subdomain of %s (and list %s as well if the domain itself is meant)",
			pattern, k.String(), k.Name, k.Name)
	}
	return fmt.Sprintf("%q: \"*\" is no wildcard here; write each domain exactly (example.org), or .example.org for any subdomain of example.org", pattern)
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
var reservedMaps = map[string]bool{MapTLSPolicy: true, MapTransport: true}

var classNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

const defaultClassMessage = "recipient domain cannot receive mail with the required TLS protection"

func (c *compiler) classes(p *Rules, cfg Config) {
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
		if cl.OnFail == OnFailFallback && cl.Level.AtLeast(LevelVerify) && !strings.HasPrefix(cc.Fallback, ClassTransport(cc.Name)+":") {
			// FILTER sends the message through the named transport, whose
			// smtp_tls_policy_maps is normally the default map: the
			// fallback hop then gets that map's answer, not the class level.
			c.warnings = append(c.warnings, ConfigError{File: c.file, Line: lineOf(c.root, "classes", i, "fallback"),
				Msg: fmt.Sprintf("classes[%d].fallback: %q is delivered with the default policy map, not at the class level %s; use the class transport (%q) or add a destination rule for its next hop",
					i, cc.Fallback, cl.Level, ClassTransport(cc.Name)+":"+fallbackNexthop(cc.Fallback))})
		}
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
