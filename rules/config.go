package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"gopkg.in/yaml.v3"
)

// Config is the YAML configuration file as written (the README's
// "Configuration reference" and docs/interface.md list every key). Values
// stay in their written form here; Compile validates them and turns them
// into the typed Rules the engine uses, so that every mistake in a file can
// be reported at once, each with its line.
type Config struct {
	Listen         ListenConfig      `yaml:"listen"`
	HTTP           HTTPConfig        `yaml:"http"`
	Log            LogConfig         `yaml:"log"`
	DNS            DNSConfig         `yaml:"dns"`
	Probe          ProbeConfig       `yaml:"probe"`
	State          StateConfig       `yaml:"state"`
	MTASTS         MTASTSConfig      `yaml:"mtasts"`
	DANE           DANEConfig        `yaml:"dane"`
	PostfixVersion string            `yaml:"postfix_version"`
	MinimumTLS     string            `yaml:"minimum_tls"`
	Defaults       DefaultsConfig    `yaml:"defaults"`
	Destinations   []DestinationRule `yaml:"destinations"`
	Classes        []ClassConfig     `yaml:"classes"`
}

// ListenConfig names the listeners; an empty address is not started.
type ListenConfig struct {
	Socketmap string `yaml:"socketmap"`
	TCPTable  string `yaml:"tcptable"`
	Policy    string `yaml:"policy"`
	Exim      string `yaml:"exim"`
	HTTP      string `yaml:"http"`
	// SocketMode is the octal file mode of unix sockets ("0666" by
	// default, so that Postfix's unprivileged processes can connect).
	SocketMode string `yaml:"socket_mode"`
	// MaxConnections caps each protocol listener's connections; when one
	// is full, a new connection is admitted by closing an idle one.
	MaxConnections int `yaml:"max_connections"`
	// IdleTimeout closes a connection with no request for this long,
	// counted from its last request or from accept.
	IdleTimeout string `yaml:"idle_timeout"`
}

// HTTPConfig protects listen.http: the status page and the API list the
// daemon's partners, and the admin endpoints change what it enforces.
type HTTPConfig struct {
	// AuthFile holds a bearer token (surrounding whitespace ignored);
	// required when listen.http is not a loopback address.
	AuthFile string `yaml:"auth_file"`
}

// LogConfig sets up the daemon's log (log/slog, to stderr).
type LogConfig struct {
	Level     string `yaml:"level"`     // debug | info | warn | error
	Format    string `yaml:"format"`    // text | json
	Decisions string `yaml:"decisions"` // none | changes | all
}

// DNSConfig selects the resolver used for MX, MTA-STS and TLSA lookups.
type DNSConfig struct {
	Servers []string `yaml:"servers"`
	Timeout string   `yaml:"timeout"`
	// MinTTL bounds below how soon a published record (the MTA-STS TXT
	// record, TLSA records) is read again when its TTL runs out.
	MinTTL string `yaml:"min_ttl"`
}

// ProbeConfig controls the live STARTTLS probes of destinations' MX hosts.
type ProbeConfig struct {
	Port         int    `yaml:"port"`
	Helo         string `yaml:"helo"`
	Timeout      string `yaml:"timeout"`
	TTL          string `yaml:"ttl"`
	NegativeTTL  string `yaml:"negative_ttl"`
	Wait         string `yaml:"wait"`
	CAFile       string `yaml:"ca_file"`
	AllowPrivate bool   `yaml:"allow_private"`
	PerAddress   int    `yaml:"per_address"`
}

// StateConfig locates the persistent store of pins and probe results.
type StateConfig struct {
	Path    string      `yaml:"path"`
	PinTTL  string      `yaml:"pin_ttl"`
	History string      `yaml:"history"`
	Redis   RedisConfig `yaml:"redis"`
}

// RedisConfig names the Redis (or Valkey) that a fleet of daemons shares
// pins, findings and history through; no addrs: no fleet.
type RedisConfig struct {
	// Addrs are "host:port": one is a server, several a cluster, and with
	// MasterName they are Sentinels.
	Addrs      []string `yaml:"addrs"`
	MasterName string   `yaml:"master_name"`
	Username   string   `yaml:"username"`
	// PasswordFile holds the password (surrounding whitespace ignored),
	// so that it stays out of the configuration file.
	PasswordFile string `yaml:"password_file"`
	TLS          bool   `yaml:"tls"`
	// KeyPrefix starts every key and channel name, so that an ACL can
	// confine the daemons to them.
	KeyPrefix string `yaml:"key_prefix"`
}

// MTASTSConfig controls RFC 8461 policies as a source.
type MTASTSConfig struct {
	Enabled bool   `yaml:"enabled"`
	CAFile  string `yaml:"ca_file"`
}

// DANEConfig controls RFC 7672 TLSA records as a source.
type DANEConfig struct {
	Enabled bool `yaml:"enabled"`
}

// DefaultsConfig applies to destinations that no rule names.
type DefaultsConfig struct {
	Level   string `yaml:"level"`
	Upgrade string `yaml:"upgrade"`
}

// DestinationRule is one entry of "destinations"; the first that matches a
// destination decides its floor.
type DestinationRule struct {
	Match Patterns `yaml:"match"`
	// MatchFile names a file of patterns, one per line, instead of Match;
	// a relative path is taken from the configuration file's folder.
	MatchFile string `yaml:"match_file"`
	Level     string `yaml:"level"`
	Upgrade   string `yaml:"upgrade"`
	OnFail    string `yaml:"on_fail"`
	Fallback  string `yaml:"fallback"`
	MTASTS    *bool  `yaml:"mtasts"`
	DANE      *bool  `yaml:"dane"`
}

// Patterns is the match of a destination rule: one pattern, or a list of
// them of which any matches. YAML gives either a string or a list of
// strings.
type Patterns []string

// UnmarshalYAML takes a string or a list of strings, so that Config
// decodes with yaml.v3 directly too (Load walks the tree itself).
func (p *Patterns) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.ScalarNode:
		*p = Patterns{n.Value}
		return nil
	case yaml.SequenceNode:
		var list []string
		if err := n.Decode(&list); err != nil {
			return fmt.Errorf("line %d: match: write one pattern per item of the list: %w", n.Line, err)
		}
		*p = list
		return nil
	}
	return fmt.Errorf("line %d: match: write a pattern or a list of patterns in square brackets ([a.example, b.example])", n.Line)
}

// ClassConfig is a sender class: mail from these senders needs this level.
type ClassConfig struct {
	Name     string   `yaml:"name"`
	Senders  []string `yaml:"senders"`
	Level    string   `yaml:"level"`
	OnFail   string   `yaml:"on_fail"`
	Fallback string   `yaml:"fallback"`
	Message  string   `yaml:"message"`
}

// DefaultConfig returns the configuration that an empty file means. Load
// decodes a file over it, so keys left out keep these values.
func DefaultConfig() Config {
	return Config{
		Listen: ListenConfig{SocketMode: "0666", MaxConnections: 1000, IdleTimeout: "60s"},
		Log:    LogConfig{Level: "info", Format: "text", Decisions: "changes"},
		DNS:    DNSConfig{Timeout: "5s", MinTTL: "1m"},
		Probe: ProbeConfig{
			Port: 25, Timeout: "30s", TTL: "6h", NegativeTTL: "10m", Wait: "5s", PerAddress: 2,
		},
		State: StateConfig{Path: "/var/lib/tlspolicyd/state.db", PinTTL: "720h", History: "2160h",
			Redis: RedisConfig{KeyPrefix: "tlspolicyd:"}},
		MTASTS:         MTASTSConfig{Enabled: true},
		PostfixVersion: "3.7",
		MinimumTLS:     "TLSv1.2",
		Defaults:       DefaultsConfig{Level: "may", Upgrade: "encrypt"},
	}
}

// ConfigError is one problem in a configuration file, at a line.
type ConfigError struct {
	File string
	Line int // 0 when the problem has no single line
	Msg  string

	// at is, for a problem in a match file, the line of the configuration
	// that names the file: the problem is listed there, after those of the
	// configuration's own line, so that "in line order" reads top down.
	at int
}

func (e ConfigError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// ConfigErrors is every problem found in one file, in line order. Its
// Error text is one "FILE:LINE: message" line per problem.
type ConfigErrors []ConfigError

func (es ConfigErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// maxConfigSize bounds the configuration file: a policy for every domain on
// earth is still far smaller, and a runaway file must not exhaust memory.
const maxConfigSize = 64 << 20

// LoadFile reads, validates and compiles a configuration file. The error,
// if any, is a ConfigErrors naming the file as given. A relative
// state.path is resolved here, once, for everything that uses the rules:
// see ResolveStatePath ($STATE_DIRECTORY is read from the environment).
func LoadFile(path string) (*Rules, error) {
	return loadFile(path, os.Getenv(StateDirectoryEnv))
}

// loadFile is LoadFile with the value of $STATE_DIRECTORY given.
func loadFile(path, stateDirectory string) (*Rules, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, ConfigErrors{{File: path, Msg: readErrorMsg(err)}}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, ConfigErrors{{File: path, Msg: readErrorMsg(err)}}
	}
	if len(data) > maxConfigSize {
		return nil, ConfigErrors{{File: path, Msg: fmt.Sprintf("file is larger than %d bytes", maxConfigSize)}}
	}
	rs, err := Load(path, data)
	if err != nil {
		return nil, err
	}
	rs.resolveStatePath(path, stateDirectory)
	return rs, nil
}

// readErrorMsg says why the configuration file could not be read and what
// to do. The file's name already starts the error line, so the cause is
// given without it.
func readErrorMsg(err error) string {
	cause := err
	var pe *fs.PathError
	if errors.As(err, &pe) {
		cause = pe.Err
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("cannot read the configuration: %v (write it there, or name it with -config FILE)", cause)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Sprintf("cannot read the configuration: %v (make it readable by the user running tlspolicyd)", cause)
	case errors.Is(err, syscall.EISDIR):
		return fmt.Sprintf("cannot read the configuration: %v (name the YAML file itself with -config FILE)", cause)
	}
	return fmt.Sprintf("cannot read the configuration: %v", cause)
}

// Load parses and compiles configuration data; name is used in errors,
// and a relative match_file is taken from name's folder.
func Load(name string, data []byte) (*Rules, error) {
	return load(name, data, readMatchFile)
}

// load is Load with the reader of match files given, so that tests can
// serve them from memory.
func load(name string, data []byte, read func(path string) ([]byte, error)) (*Rules, error) {
	cfg, root, d := parse(name, data)
	if root == nil && len(d.errs) > 0 || d.exhausted() { // nothing (complete) to check further
		return nil, d.errs
	}
	c := &compiler{file: name, root: root, refused: d.refused, read: read}
	p := c.compile(cfg)
	errs := append(d.errs, c.errs...)
	if len(errs) > 0 {
		sortErrors(errs)
		return nil, errs
	}
	return p, nil
}

// parse decodes data over the defaults. It reports YAML syntax errors, and
// every unknown key and value of the wrong type, each with its line; the
// decoder it returns holds those errors and the paths of refused values.
// The tree is nil when there is none to check further (an empty file, a
// syntax error, a document that is not a mapping).
func parse(name string, data []byte) (Config, *yaml.Node, *decoder) {
	cfg := DefaultConfig()
	d := &decoder{file: name, refused: map[string]bool{}, budget: len(data) + 64}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		d.errs = yamlErrors(name, data, err)
		return cfg, nil, d
	}
	if doc.Kind == 0 { // empty file: all defaults
		return cfg, nil, d
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		d.errs = ConfigErrors{{File: name, Line: root.Line,
			Msg: "the configuration must be a mapping of keys (listen:, defaults:, destinations: ...)"}}
		return cfg, nil, d
	}
	d.decode(root, &cfg)
	return cfg, root, d
}

var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlErrors turns a yaml.v3 error into ConfigErrors with line numbers.
func yamlErrors(name string, data []byte, err error) ConfigErrors {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var errs ConfigErrors
	for _, m := range msgs {
		e := ConfigError{File: name, Msg: strings.TrimPrefix(m, "yaml: ")}
		if sub := yamlLineRE.FindStringSubmatch(m); sub != nil {
			e.Line, _ = strconv.Atoi(sub[1])
			e.Msg = sub[2]
		}
		if aliasRE.Match(lineText(data, e.Line)) {
			// An unquoted "*.example.com" reads as an alias to an anchor.
			e.Msg += ` (an unquoted value that starts with "*" is an alias in YAML; "*" is no wildcard ` +
				`either: for any subdomain of example.com write .example.com)`
		}
		errs = append(errs, e)
	}
	return errs
}

// aliasRE finds an alias where a match pattern would be: after "key:",
// "- " or "[".
var aliasRE = regexp.MustCompile(`(?:^|:|-|\[|,)\s*\*[^\s\w]`)

// lineText is line n (from 1) of data, or nil.
func lineText(data []byte, n int) []byte {
	for i := 1; n > 0 && len(data) > 0; i++ {
		line, rest, _ := bytes.Cut(data, []byte{'\n'})
		if i == n {
			return line
		}
		data = rest
	}
	return nil
}

// sortErrors puts errors in line order, those of a match file at the line
// that names it.
func sortErrors(errs ConfigErrors) {
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].less(errs[j]) })
}

func (e ConfigError) less(o ConfigError) bool {
	a, b := e.sortKey(), o.sortKey()
	return a[0] < b[0] || a[0] == b[0] && a[1] < b[1]
}

func (e ConfigError) sortKey() [2]int {
	if e.at > 0 {
		return [2]int{e.at, e.Line}
	}
	return [2]int{e.Line, 0}
}

// writtenLine is the line of the value at path if the file writes it
// there, else 0: unlike lineOf, it never points at a parent instead.
func writtenLine(root *yaml.Node, path ...any) int {
	if root == nil {
		return 0
	}
	n := root
	for _, p := range path {
		var next *yaml.Node
		switch p := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == p {
						next = n.Content[i+1]
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
			}
		}
		if next == nil {
			return 0
		}
		n = next
	}
	return n.Line
}

// lineOf finds the line of the value at path (mapping keys as strings,
// sequence indexes as ints) in the YAML tree. It returns the line of the
// deepest node it could reach, so a key left out points at its parent.
func lineOf(root *yaml.Node, path ...any) int {
	if root == nil {
		return 0
	}
	return nodeAt(root, path...).Line
}

// nodeAt is the node at path, or the deepest one on the way to it. Aliases
// are followed, and of a key written twice the first counts, as when the
// file is decoded.
func nodeAt(n *yaml.Node, path ...any) *yaml.Node {
	for _, p := range path {
		var next *yaml.Node
		switch p := p.(type) {
		case string:
			for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content) && next == nil; i += 2 {
				if n.Content[i].Value == p {
					next = n.Content[i+1]
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
			}
		}
		if next == nil {
			return n
		}
		if n = next; n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
	}
	return n
}
